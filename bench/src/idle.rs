//! The idle stack's cost: CPU of every process `scripts/up` started, with all its descendants
//! (PostgreSQL's backends and background workers count with their postmaster), over a window
//! with no writes, from /proc. The goal (issue 37): at most 5 % of one core in all. Then, on
//! the same stack, write → visible at a trickle, with each process's CPU over it: the long
//! fetch waits that make the stack idle must not make it slower to show a write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::record::Provenance;
use crate::soak::{self, LoadEnd, MinuteReport};

#[derive(clap::Args)]
pub struct Args {
    /// The folder of pid files `scripts/up` wrote (`.foldline/pids`).
    #[arg(long, default_value = ".foldline/pids")]
    pids: PathBuf,
    /// How long to measure the stack with no writes.
    #[arg(long, alias = "idle-seconds", default_value_t = 30)]
    seconds: u64,
    /// The goal, in percent of one core, for every process together.
    #[arg(long, default_value_t = 5.0)]
    goal_percent: f64,
    /// Then write at `--trickle-rate` for this many minutes (0: no trickle).
    #[arg(long, default_value_t = 2)]
    trickle_minutes: u64,
    /// Writes per second of the trickle.
    #[arg(long, default_value_t = 50)]
    trickle_rate: u64,
    /// The trickle's goal for write → visible through the query API, p99 in every minute: the
    /// old stack's figure (issue 37: unpatched broker, 20 ms fetch waits).
    #[arg(long, default_value_t = 61.0)]
    goal_query_p99_ms: f64,
    /// The trickle's goal for write → received over SSE, p99 in every minute.
    #[arg(long, default_value_t = 38.0)]
    goal_sse_p99_ms: f64,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    producer_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    query_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8083")]
    notifier_url: String,
    /// The projector's metrics, for its lag.
    #[arg(long, default_value = "http://127.0.0.1:9101")]
    projector_url: String,
    /// Bearer token for the producer's writes (`.foldline/admin.token` of `scripts/up`).
    #[arg(
        long,
        env = "FOLDLINE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The result of record of `scripts/bench idle` (`bench/results/idle.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdleResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    /// The broker binary the stack ran (its folder names nisshi's version and patch id).
    pub broker: String,
    pub seconds: f64,
    /// Percent of one core, per process started by `scripts/up` (with its descendants).
    pub processes: BTreeMap<String, f64>,
    pub total_percent: f64,
    pub goal_percent: f64,
    pub met: bool,
    pub trickle: Option<Trickle>,
}

/// Write → visible at a trickle on the same stack.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Trickle {
    pub rate: u64,
    pub minutes: Vec<MinuteReport>,
    pub end: LoadEnd,
    /// Percent of one core per process over the whole trickle.
    pub processes: BTreeMap<String, f64>,
    pub goal_query_p99_ms: f64,
    pub goal_sse_p99_ms: f64,
    /// Every minute's p99 within both goals, no write failed, every event delivered.
    pub met: bool,
}

/// The processes `scripts/up` started: name → pid, from its pid files.
fn started(pids: &Path) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut started = BTreeMap::new();
    for entry in std::fs::read_dir(pids)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let pid: u32 = std::fs::read_to_string(&path)?.trim().parse()?;
        anyhow::ensure!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) is not running: start the stack with scripts/up"
        );
        started.insert(name, pid);
    }
    anyhow::ensure!(!started.is_empty(), "no pid files in {}", pids.display());
    Ok(started)
}

/// Percent of one core each started process (with its descendants) used while `work` ran,
/// and in all. A process that exited meanwhile takes its time with it: what is counted is
/// what the live trees used.
async fn cpu_during<T>(
    started: &BTreeMap<String, u32>,
    work: impl std::future::Future<Output = T>,
) -> (BTreeMap<String, f64>, f64, f64, T) {
    let before = crate::cpu::processes();
    let from = Instant::now();
    let out = work.await;
    let after = crate::cpu::processes();
    let seconds = from.elapsed().as_secs_f64();
    let percent = |pid: &u32| {
        let used = crate::cpu::tree_cpu_us(&after, *pid)
            .saturating_sub(crate::cpu::tree_cpu_us(&before, *pid));
        used as f64 / 1e6 / seconds * 100.0
    };
    let each = started
        .iter()
        .map(|(name, pid)| (name.clone(), round2(percent(pid))))
        .collect();
    let total = round2(started.values().map(percent).sum());
    (each, total, seconds, out)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The broker's binary, by the folder it was installed in (`nisshi-<version>-<patch id>`).
fn broker(started: &BTreeMap<String, u32>) -> String {
    let Some(pid) = started.get("broker") else {
        return "unknown".into();
    };
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| {
            let folder = exe.parent()?.parent()?.file_name()?.to_str()?.to_owned();
            Some(folder)
        })
        .unwrap_or_else(|| "unknown".into())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = started(&args.pids)?;
    let (processes, total, seconds, ()) = cpu_during(
        &started,
        tokio::time::sleep(Duration::from_secs(args.seconds)),
    )
    .await;
    for (name, percent) in &processes {
        println!("{name:<16} {percent:>6.2} % of a core");
    }
    let met = total <= args.goal_percent;
    println!(
        "idle stack: {total:.2} % of a core over {seconds:.0} s with no writes (goal <= {} %: {})",
        args.goal_percent,
        if met { "met" } else { "NOT met" }
    );
    let trickle = if args.trickle_minutes > 0 {
        Some(trickle(&args, &started).await?)
    } else {
        None
    };
    let result = IdleResult {
        provenance: Provenance::now(),
        broker: broker(&started),
        seconds: (seconds * 10.0).round() / 10.0,
        processes,
        total_percent: total,
        goal_percent: args.goal_percent,
        met,
        trickle,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&result)? + "\n")?;
    }
    Ok(())
}

async fn trickle(args: &Args, started: &BTreeMap<String, u32>) -> anyhow::Result<Trickle> {
    anyhow::ensure!(
        !args.token.is_empty(),
        "the trickle writes: give a token (--token or FOLDLINE_TOKEN)"
    );
    println!(
        "write -> visible at {} writes/s for {} min on the same stack",
        args.trickle_rate, args.trickle_minutes
    );
    let load = soak::Args {
        producer_url: args.producer_url.clone(),
        query_url: args.query_url.clone(),
        notifier_url: args.notifier_url.clone(),
        consumers: vec![format!("projector={}", args.projector_url)],
        rate: args.trickle_rate,
        minutes: args.trickle_minutes,
        token: args.token.clone(),
    };
    let (processes, total, _, outcome) = cpu_during(
        started,
        soak::load(&load, |m| {
            println!(
                "minute {}: query p50 {:.1} / p99 {:.1} ms, SSE p50 {:.1} / p99 {:.1} ms, {} failed",
                m.minute,
                m.query_visible.p50_ms,
                m.query_visible.p99_ms,
                m.sse_received.p50_ms,
                m.sse_received.p99_ms,
                m.failed_writes
            )
        }),
    )
    .await;
    let (minutes, end) = outcome?;
    println!(
        "during the trickle: {total:.2} % of a core in all (broker {:.2})",
        processes.get("broker").copied().unwrap_or_default()
    );
    let met = end.sse_never_received == 0
        && minutes.iter().all(|m| {
            m.failed_writes == 0
                && m.not_visible_in_10s == 0
                && m.query_visible.p99_ms <= args.goal_query_p99_ms
                && m.sse_received.p99_ms <= args.goal_sse_p99_ms
        });
    println!(
        "trickle: p99 goals {} ms (query) / {} ms (SSE) in every minute: {}",
        args.goal_query_p99_ms,
        args.goal_sse_p99_ms,
        if met { "met" } else { "NOT met" }
    );
    Ok(Trickle {
        rate: args.trickle_rate,
        minutes,
        end,
        processes,
        goal_query_p99_ms: args.goal_query_p99_ms,
        goal_sse_p99_ms: args.goal_sse_p99_ms,
        met,
    })
}
