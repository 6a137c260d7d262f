//! The idle stack's cost: CPU of every process `scripts/up` started, with all its descendants
//! (PostgreSQL's backends and background workers count with their postmaster), over a window
//! with no writes, from /proc. The goal (issue 37): at most 5 % of one core in all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// The folder of pid files `scripts/up` wrote (`.foldline/pids`).
    #[arg(long, default_value = ".foldline/pids")]
    pids: PathBuf,
    /// How long to measure.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The goal, in percent of one core, for every process together.
    #[arg(long, default_value_t = 5.0)]
    goal_percent: f64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize)]
pub struct IdleResult {
    pub date: String,
    pub machine: String,
    pub seconds: f64,
    /// Percent of one core, per process started by `scripts/up` (with its descendants).
    pub processes: BTreeMap<String, f64>,
    pub total_percent: f64,
    pub goal_percent: f64,
    pub met: bool,
}

/// Every live process: pid → (parent pid, CPU time so far in µs).
fn processes() -> BTreeMap<u32, (u32, u64)> {
    let mut all = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the name: state(0) ppid(1) ...
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(parent) = parent {
            all.insert(pid, (parent, crate::sse::cpu_us(pid)));
        }
    }
    all
}

/// CPU time (µs) of `root` and every live descendant (PostgreSQL's postmaster and its
/// backends and background workers, which run in sessions of their own).
fn tree_cpu_us(all: &BTreeMap<u32, (u32, u64)>, root: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some((_, cpu)) = all.get(&pid) {
            total += cpu;
        }
        stack.extend(
            all.iter()
                .filter(|(_, (parent, _))| *parent == pid)
                .map(|(child, _)| *child),
        );
    }
    total
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // name → the pid scripts/up recorded
    let mut started = BTreeMap::new();
    for entry in std::fs::read_dir(&args.pids)? {
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
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) is not running: start the stack with scripts/up"
        );
        started.insert(name, pid);
    }
    anyhow::ensure!(
        !started.is_empty(),
        "no pid files in {}",
        args.pids.display()
    );
    let before = processes();
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let after = processes();
    let seconds = from.elapsed().as_secs_f64();
    // A process that exited during the window takes its time with it; what is counted is
    // what the live tree used.
    let percent = |pid: &u32| {
        let used = tree_cpu_us(&after, *pid).saturating_sub(tree_cpu_us(&before, *pid));
        used as f64 / 1e6 / seconds * 100.0
    };
    let processes: BTreeMap<String, f64> = started
        .iter()
        .map(|(name, pid)| (name.clone(), (percent(pid) * 100.0).round() / 100.0))
        .collect();
    let total: f64 = started.values().map(percent).sum();
    let result = IdleResult {
        date: chrono::Utc::now().to_rfc3339(),
        machine: machine(),
        seconds: (seconds * 10.0).round() / 10.0,
        total_percent: (total * 100.0).round() / 100.0,
        goal_percent: args.goal_percent,
        met: total <= args.goal_percent,
        processes,
    };
    for (name, percent) in &result.processes {
        println!("{name:<16} {percent:>6.2} % of a core");
    }
    println!(
        "idle stack: {:.2} % of a core over {:.0} s with no writes (goal <= {} %: {})",
        result.total_percent,
        result.seconds,
        result.goal_percent,
        if result.met { "met" } else { "NOT met" }
    );
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
}

/// `<cores> cores, <GiB> GiB, <kernel>`: what the figure was measured on.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, {} GiB, Linux {}",
        mem_kib / 1024 / 1024,
        kernel.trim()
    )
}
