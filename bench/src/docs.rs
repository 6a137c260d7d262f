//! The tables of docs/benchmarks.md, generated from the results of record (`bench/results/`).
//!
//! A generated section is the text between `<!-- generated: NAME -->` and
//! `<!-- end generated: NAME -->`; everything else in the file is prose, written by hand, and
//! never carries a figure of its own. `foldline-bench docs` rewrites the sections,
//! `foldline-bench docs --check` (and the unit test below, in `scripts/test`) fails when one
//! differs from what its result file generates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::idle::IdleResult;
use crate::upgrade_drill::DrillResult;

#[derive(clap::Args)]
pub struct Args {
    /// The repository's root.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Change nothing: fail when a section differs from what its results generate.
    #[arg(long)]
    check: bool,
}

const BENCHMARKS: &str = "docs/benchmarks.md";

pub async fn run(args: Args) -> anyhow::Result<()> {
    let path = args.repo.join(BENCHMARKS);
    let current = std::fs::read_to_string(&path)?;
    let generated = generate(&args.repo, &current)?;
    if generated == current {
        println!("{BENCHMARKS}: every generated section matches its results");
        return Ok(());
    }
    anyhow::ensure!(
        !args.check,
        "{BENCHMARKS} differs from what bench/results/ generates: run `cargo run -p foldline-bench -- docs`"
    );
    std::fs::write(&path, generated)?;
    println!("{BENCHMARKS}: generated sections rewritten");
    Ok(())
}

/// `doc` with every generated section rendered again from the results under `repo`.
fn generate(repo: &Path, doc: &str) -> anyhow::Result<String> {
    let idle: IdleResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/idle.json"),
    )?)?;
    let doc = replace_section(doc, "idle", &render_idle(&idle))?;
    let drill: DrillResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/upgrade-drill.json"),
    )?)?;
    replace_section(&doc, "upgrade-drill", &render_drill(&drill))
}

/// `doc` with the body of section `name` replaced by `body`.
fn replace_section(doc: &str, name: &str, body: &str) -> anyhow::Result<String> {
    let (open, close) = (
        format!("<!-- generated: {name} -->\n"),
        format!("<!-- end generated: {name} -->"),
    );
    let start = doc
        .find(&open)
        .ok_or_else(|| anyhow::anyhow!("no `{}` in {BENCHMARKS}", open.trim_end()))?
        + open.len();
    let end = doc[start..]
        .find(&close)
        .ok_or_else(|| anyhow::anyhow!("no `{close}` after `{}`", open.trim_end()))?
        + start;
    Ok(format!("{}{body}{}", &doc[..start], &doc[end..]))
}

fn render_drill(r: &DrillResult) -> String {
    let mut out = String::new();
    let verdict = |met: bool| if met { "met" } else { "**not met**" };
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    let _ = writeln!(
        out,
        "Measured {} on {} (from `{}` to commit `{}`), by `scripts/upgrade-drill` \
         (bench/results/upgrade-drill.json). Targets: {}.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.old_commit,
        r.provenance.commit,
        verdict(r.met)
    );
    out.push_str(
        "| step | seconds | longest time without an acknowledged write, ms | probe writes | write → visible (query) p50 / p99 / max, ms |\n",
    );
    out.push_str("|---|---:|---:|---:|---|\n");
    for step in &r.steps {
        let q = &step.visible_ms;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} / {} / {} |",
            step.name, step.seconds, step.write_gap_ms, q.n, q.p50_ms, q.p99_ms, q.max_ms
        );
    }
    let w = &r.wrong_order;
    let rows = [
        (
            "writes acknowledged (retries; refused for good, 4xx)",
            format!("{} ({}; {})", r.writes_acknowledged, r.retries, r.refused),
        ),
        (
            "longest time without an acknowledged write (target ≤ 2,000 ms)",
            format!("{} ms", r.longest_write_gap_ms),
        ),
        (
            "events in the log; lost / doubled / broken versions (target 0)",
            format!(
                "{}; {} / {} / {}",
                r.events_in_log, r.lost, r.doubled, r.broken_versions
            ),
        ),
        (
            "consumers found stopped after a step (target 0)",
            r.consumers_stopped.to_string(),
        ),
        (
            "wrong order: products / events parked as written by a newer schema",
            format!("{} / {}", w.parked_products, w.parked_events),
        ),
        (
            "wrong order: products retried after the upgrade; still parked; verify",
            format!(
                "{}; {}; {}",
                w.retried_products,
                w.still_parked,
                yes(w.verify_passed)
            ),
        ),
        ("`foldline verify` passes", yes(r.verify_passed).to_owned()),
        (
            "a rebuild across the mixed history compares equal",
            yes(r.rebuild_equal).to_owned(),
        ),
        (
            "archive restored (files of both builds): events; equal to the topic",
            format!("{}; {}", r.restored_events, yes(r.restore_equal)),
        ),
    ];
    out.push_str("\n| check | result |\n|---|---|\n");
    for (check, result) in rows {
        let _ = writeln!(out, "| {check} | {result} |");
    }
    out
}

fn render_idle(r: &IdleResult) -> String {
    let mut out = String::new();
    let verdict = |met: bool| if met { "met" } else { "**not met**" };
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`, broker `{}`), by `scripts/bench idle` \
         (bench/results/idle.json).\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.broker
    );
    let trickle = r.trickle.as_ref();
    let _ = writeln!(
        out,
        "| process | idle: % of a core over {:.0} s | during the trickle: % of a core |",
        r.seconds
    );
    out.push_str("|---|---:|---:|\n");
    for (name, idle) in &r.processes {
        let busy = trickle
            .and_then(|t| t.processes.get(name))
            .map_or("–".into(), |p| format!("{p:.2}"));
        let _ = writeln!(out, "| {name} | {idle:.2} | {busy} |");
    }
    let _ = writeln!(
        out,
        "| **all** | **{:.2}** (goal ≤ {}: {}) | {} |",
        r.total_percent,
        r.goal_percent,
        verdict(r.met),
        trickle.map_or("–".into(), |t| format!(
            "{:.2}",
            t.processes.values().sum::<f64>()
        ))
    );
    let Some(t) = trickle else {
        return out;
    };
    let _ = writeln!(
        out,
        "\nWrite → visible at {} writes/s, per minute (goal, every minute: p99 ≤ {} ms through \
         the query API and ≤ {} ms over SSE, no write failed, every event delivered: {}; \
         events never received over SSE: {}):\n",
        t.rate,
        t.goal_query_p99_ms,
        t.goal_sse_p99_ms,
        verdict(t.met),
        t.end.sse_never_received
    );
    out.push_str(
        "| minute | writes | query API p50 / p99 / max (ms) | SSE p50 / p99 / max (ms) \
         | producer commit p50 / p99 (ms) | failed | not visible in 10 s |\n",
    );
    out.push_str("|---:|---:|---|---|---|---:|---:|\n");
    for m in &t.minutes {
        let commit = |q: &str| {
            m.stages
                .pointer(&format!("/producer_commit/{q}"))
                .and_then(|v| v.as_f64())
                .map_or("–".into(), |v| format!("{v:.1}"))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {} / {} | {} | {} |",
            m.minute,
            m.write.n,
            m.query_visible.p50_ms,
            m.query_visible.p99_ms,
            m.query_visible.max_ms,
            m.sse_received.p50_ms,
            m.sse_received.p99_ms,
            m.sse_received.max_ms,
            commit("p50_ms"),
            commit("p99_ms"),
            m.failed_writes,
            m.not_visible_in_10s
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarks_md_matches_the_results_of_record() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let current = std::fs::read_to_string(repo.join(BENCHMARKS)).expect("readable");
        let generated = generate(&repo, &current).expect("every section and result present");
        assert!(
            generated == current,
            "{BENCHMARKS} differs from what bench/results/ generates: run `cargo run -p foldline-bench -- docs`"
        );
    }

    #[test]
    fn a_section_is_replaced_between_its_markers_only() {
        let doc = "a\n<!-- generated: x -->\nold\n<!-- end generated: x -->\nb\n";
        let new = replace_section(doc, "x", "new\n").expect("markers present");
        assert_eq!(
            new,
            "a\n<!-- generated: x -->\nnew\n<!-- end generated: x -->\nb\n"
        );
        assert!(replace_section(doc, "y", "new\n").is_err());
        assert!(replace_section("<!-- generated: x -->\nold\n", "x", "").is_err());
    }
}
