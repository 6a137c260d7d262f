//! The tables of docs/benchmarks.md, generated from the results of record (`bench/results/`).
//!
//! A generated section is the text between `<!-- generated: NAME -->` and
//! `<!-- end generated: NAME -->`; everything else in the file is prose, written by hand, and
//! never carries a figure of its own. `foldline-bench docs` rewrites the sections,
//! `foldline-bench docs --check` (and the unit test below, in `scripts/test`) fails when one
//! differs from what its result file generates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::hostile::{HostileResult, FLOOR_PREFIX};
use crate::idle::IdleResult;
use crate::project_result::ProjectResult;
use crate::restart::{RestartResult, FROM_SNAPSHOT_GOAL_MS, WHOLE_LOG_GOAL_MS};
use crate::sse_result::SseResult;
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
    let doc = replace_section(&doc, "upgrade-drill", &render_drill(&drill))?;
    let restart: RestartResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/restart.json"),
    )?)?;
    let doc = replace_section(&doc, "restart", &render_restart(&restart))?;
    let hostile: HostileResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/hostile.json"),
    )?)?;
    let doc = replace_section(&doc, "hostile", &render_hostile(&hostile))?;
    let sse: SseResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/sse.json"),
    )?)?;
    let doc = replace_section(&doc, "sse", &crate::sse_result::render(&sse))?;
    let project: ProjectResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/project.json"),
    )?)?;
    // The result of record issue 39 started from, kept for its before/after.
    let before: ProjectResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/project-before.json"),
    )?)?;
    let mut section = crate::project_result::render(&project);
    if before.provenance.commit != project.provenance.commit {
        section.push('\n');
        section.push_str(&crate::project_result::render_before_after(
            &before, &project,
        ));
    }
    let doc = replace_section(&doc, "project", &section)?;
    let sinks: crate::sinks_result::SinksResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/sinks.json"),
    )?)?;
    let doc = replace_section(&doc, "sinks", &crate::sinks_result::render(&sinks))?;
    let log: crate::log_bench::LogResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/log.json"),
    )?)?;
    let doc = replace_section(&doc, "log", &crate::log_bench::render(&log))?;
    let write: crate::write_result::WriteResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/write.json"),
    )?)?;
    let doc = replace_section(&doc, "write", &crate::write_result::render(&write))?;
    let soak: crate::soak_bench::SoakResult = serde_json::from_str(&std::fs::read_to_string(
        repo.join("bench/results/soak.json"),
    )?)?;
    let doc = replace_section(&doc, "soak", &crate::soak_bench::render(&soak))?;
    let profile: crate::profile_bench::ProfileResult = serde_json::from_str(
        &std::fs::read_to_string(repo.join("bench/results/profile.json"))?,
    )?;
    replace_section(&doc, "profile", &crate::profile_bench::render(&profile))
}

fn render_hostile(r: &HostileResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench hostile` (bench/results/hostile.json); \
         header-read timeout {} ms. Target (every Foldline listener holds none after its timeout \
         and still answers): {}.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.header_timeout_ms,
        if r.met { "met" } else { "**not met**" }
    );
    out.push_str("| listener | opened | held at 1 s | held after the timeout | still answers |\n");
    out.push_str("|---|---:|---:|---:|---|\n");
    for held in &r.connections {
        let name = match held.service.strip_prefix(FLOOR_PREFIX) {
            Some(floor) => format!("the floor: {floor} (`axum::serve`, no timeout, no cap)"),
            None => held.service.clone(),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            held.opened,
            held.held_after_1s,
            held.held_after_timeout,
            if held.healthy { "yes" } else { "**no**" }
        );
    }
    let s = &r.sse;
    let c = &r.refused_commands;
    let _ = writeln!(
        out,
        "\n| also measured | result |\n|---|---|\n\
         | SSE streams tried; served; refused past the cap | {}; {}; {} |\n\
         | notifier RSS with them, KiB | {} |\n\
         | streams resuming from memory: served; refused | {}; {} |\n\
         | refused commands; producer RSS before → after, KiB | {}; {} → {} |",
        s.tried,
        s.served,
        s.refused,
        s.notifier_rss_with_streams_kib,
        s.resumed_served,
        s.resumed_refused,
        c.count,
        c.producer_rss_before_kib,
        c.producer_rss_after_kib
    );
    for m in &r.rss {
        let _ = writeln!(
            out,
            "| {}: RSS before → after, KiB; descriptors open after | {} → {}; {} |",
            m.service, m.rss_before_kib, m.rss_after_kib, m.fds_after
        );
    }
    out
}

fn render_restart(r: &RestartResult) -> String {
    let mut out = String::new();
    let verdict = |ms: f64, goal: f64| crate::record::verdict(ms <= goal);
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench restart --events {}` \
         (bench/results/restart.json): each start follows a SIGKILL of the previous instance.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.events
    );
    out.push_str("| start → `/ready` | ms | goal | the floor: a bare read_committed consume of the whole topic, ms | ratio to the floor |\n");
    out.push_str("|---|---:|---|---:|---:|\n");
    let ratio = |ms: f64| ms / r.raw_consume_ms.max(0.1);
    let _ = writeln!(
        out,
        "| no snapshot yet: the whole log read | {} | ≤ {} ({}) | {} | {:.2}× |",
        r.whole_log_ms,
        WHOLE_LOG_GOAL_MS,
        verdict(r.whole_log_ms, WHOLE_LOG_GOAL_MS),
        r.raw_consume_ms,
        ratio(r.whole_log_ms)
    );
    for (n, ms) in r.from_snapshot_ms.iter().enumerate() {
        let _ = writeln!(
            out,
            "| from the snapshot plus the tail ({}) | {} | ≤ {} ({}) | {} | {:.2}× |",
            n + 1,
            ms,
            FROM_SNAPSHOT_GOAL_MS,
            verdict(*ms, FROM_SNAPSHOT_GOAL_MS),
            r.raw_consume_ms,
            ratio(*ms)
        );
    }
    out
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
    let verdict = crate::record::verdict;
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    let _ = writeln!(
        out,
        "Measured {} on {} (from `{}` to commit `{}`), by `scripts/upgrade-drill` \
         (bench/results/upgrade-drill.json). Targets (0 lost, doubled or stopped; verify, rebuild \
         and restore equal; the wrong order recovered; no gap over 2 s; no attempt refused by a \
         current-release producer while a producer is replaced): {}.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.old_commit,
        r.provenance.commit,
        verdict(r.met)
    );
    out.push_str(
        "| step | seconds | longest time without an acknowledged write, ms | attempts answered 429/5xx (of them by the previous release); unanswered | probe writes | write → visible (query) p50 / p99 / max, ms |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    let counted = |n: Option<usize>| n.map_or("not counted".to_owned(), |n| n.to_string());
    for step in &r.steps {
        let q = &step.visible_ms;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} ({}); {} | {} | {} / {} / {} |",
            step.name,
            step.seconds,
            step.write_gap_ms,
            counted(step.unavailable_answers),
            counted(step.unavailable_from_previous_release),
            counted(step.unanswered_attempts),
            q.n,
            q.p50_ms,
            q.p99_ms,
            q.max_ms
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
    let verdict = crate::record::verdict;
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

    /// Figures live in docs/benchmarks.md, generated from results; the README links there. A
    /// number with a unit of measure (`51 s`, `0.90×`, `3.4 ms`, `18,962 events/s`, `70 %`) in
    /// the README is a figure typed by hand, and it drifts.
    #[test]
    fn the_readme_is_short_and_carries_no_figures() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let readme = std::fs::read_to_string(repo.join("README.md")).expect("readable");
        let lines = readme.lines().count();
        assert!(lines <= 150, "README.md has {lines} lines (at most 150)");
        let figures: Vec<&str> = readme.lines().filter(|line| has_figure(line)).collect();
        assert!(
            figures.is_empty(),
            "figures typed into README.md: {figures:?}"
        );
    }

    fn has_figure(line: &str) -> bool {
        const UNITS: [&str; 9] = ["ms", "µs", "s", "×", "%", "events/s", "/s", "min", "KiB"];
        let words: Vec<&str> = line.split_whitespace().collect();
        words.windows(2).any(|pair| {
            let number = pair[0].trim_start_matches(['(', '~']);
            let is_number = !number.is_empty()
                && number.chars().any(|c| c.is_ascii_digit())
                && number
                    .chars()
                    .all(|c| c.is_ascii_digit() || ",.–-".contains(c));
            let unit = pair[1].trim_end_matches([')', ',', ';', '.']);
            is_number && UNITS.contains(&unit)
        }) || words.iter().any(|w| {
            let w = w.trim_matches(['(', ')', ',', ';', '*']);
            w.ends_with('×') && w[..w.len() - '×'.len_utf8()].parse::<f64>().is_ok()
        })
    }

    #[test]
    fn a_figure_is_a_number_with_a_unit() {
        assert!(has_figure("rebuild of 1M events 51 s, goal 30 s"));
        assert!(has_figure("(0.90× raw consume)"));
        assert!(has_figure("p99 102–155 ms"));
        assert!(has_figure("up to 984,456 deliveries/s, 1.00× the floor"));
        assert!(!has_figure("| Kafka API | 127.0.0.1:9092 | nisshi 0.7.0 |"));
        assert!(!has_figure(
            "curl -s 'http://127.0.0.1:8082/products/<id>?after=<position>&timeout_ms=2000'"
        ));
    }
}
