//! Where a result of record came from: when, on what machine, at which commit. Every result
//! file under `bench/results/` starts with one, and the tables generated from it say it.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// RFC 3339, UTC.
    pub date: String,
    /// `<cores> cores, <GiB> GiB, Linux <kernel>`.
    pub machine: String,
    /// The checkout the bench ran from: its commit, `-dirty` when it had other changes.
    pub commit: String,
}

impl Provenance {
    pub fn now() -> Provenance {
        Provenance {
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: machine(),
            commit: commit(),
        }
    }

    /// The machine's cores, from [`Provenance::machine`].
    pub fn cores(&self) -> Option<u32> {
        let (count, rest) = self.machine.split_once(' ')?;
        rest.starts_with("cores").then(|| count.parse().ok())?
    }

    /// The day and minute, for prose: `2026-12-07 08:27 UTC`.
    pub fn when(&self) -> String {
        match chrono::DateTime::parse_from_rfc3339(&self.date) {
            Ok(at) => at.format("%Y-%m-%d %H:%M UTC").to_string(),
            Err(_) => self.date.clone(),
        }
    }
}

/// `<cores> cores, <GiB> GiB, Linux <kernel>`: what the figure was measured on.
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

/// The commit the bench was built from (`-dirty` when the checkout had changes other than the
/// results of record and the page generated from them, which a bench run itself writes), or
/// `unknown` outside a git checkout.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)bench/results",
        ":(exclude)docs/benchmarks.md",
    ])
    .is_some_and(|s| !s.trim().is_empty());
    format!("{}{}", head.trim(), if changed { "-dirty" } else { "" })
}

/// Writes a result of record to `out` (pretty JSON, as committed under `bench/results/`) and
/// prints it.
pub fn write(out: &Path, result: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(result)?;
    std::fs::write(out, format!("{json}\n"))?;
    println!("{json}");
    Ok(())
}

/// How a generated table says whether a goal was met.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

/// `1234567.8` as `1,234,568`: figures in the generated tables.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        assert_eq!(super::thousands(1_234_567.8), "1,234,568");
        assert_eq!(super::thousands(999.0), "999");
        assert_eq!(super::thousands(-1000.0), "-1,000");
    }

    #[test]
    fn the_cores_are_read_back_from_the_machine_line() {
        let at = |machine: &str| super::Provenance {
            date: String::new(),
            machine: machine.into(),
            commit: String::new(),
        };
        assert_eq!(at(&super::machine()).cores().map(|c| c > 0), Some(true));
        assert_eq!(at("2 cores, 23 GiB, Linux 6.1").cores(), Some(2));
        assert_eq!(at("a laptop").cores(), None);
    }
}
