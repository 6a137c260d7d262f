//! CPU time of processes, from /proc: what every bench prints beside its figures.

use std::collections::BTreeMap;
use std::path::Path;

/// CPU time (user + system) of `pid` so far, in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    stat_cpu_us(pid, &[11, 12])
}

/// CPU time of `pid` and of its children that have exited (and were waited for), µs: a
/// PostgreSQL backend that ends during a measurement moves its time into the postmaster's.
fn cpu_with_exited_children_us(pid: u32) -> u64 {
    stat_cpu_us(pid, &[11, 12, 13, 14])
}

/// The sum of the given fields of /proc/PID/stat (utime, stime, cutime, cstime), µs.
fn stat_cpu_us(pid: u32, fields_wanted: &[usize]) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields_wanted
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // The kernel's USER_HZ is 100 on Linux.
    ticks * 10_000
}

/// Every live process: pid → (parent pid, CPU time so far in µs, its exited children's
/// included, so a tree's sum never drops when one of its processes ends).
pub fn processes() -> BTreeMap<u32, (u32, u64)> {
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
            all.insert(pid, (parent, cpu_with_exited_children_us(pid)));
        }
    }
    all
}

/// CPU time (µs) of `root` and every live descendant (PostgreSQL's postmaster and its
/// backends and background workers, which run in sessions of their own).
pub fn tree_cpu_us(all: &BTreeMap<u32, (u32, u64)>, root: u32) -> u64 {
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

/// CPU time (µs) so far of `root` and every live descendant, now.
pub fn tree_now(root: u32) -> u64 {
    tree_cpu_us(&processes(), root)
}

/// Runs `work`; its output with the CPU `pid` (and its descendants) used meanwhile.
pub async fn during<T>(
    pid: u32,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, u64)> {
    let before = crate::cpu::tree_now(pid);
    let out = work.await?;
    Ok((out, tree_settled(pid).await.saturating_sub(before)))
}

/// [`tree_now`] once processes that were ending have ended. A client that just closed leaves
/// a PostgreSQL backend ending: read mid-exit, its time is in neither its own /proc entry
/// (read after it left) nor yet in the postmaster's (read before it was reaped); a run's
/// COPY floor came out near zero that way (2026-12-08).
pub async fn tree_settled(root: u32) -> u64 {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tree_now(root)
}

/// The pid in a pid file (`scripts/lib/run.sh` writes one per process it starts).
pub fn read_pid(path: &Path) -> anyhow::Result<u32> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(text.split_whitespace().next().unwrap_or_default().parse()?)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); 0 when the process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
