//! The probes a bench runs as processes of their own (`foldline-bench fill`, `raw-consume`,
//! `raw-copy`, …), so each one's CPU is counted apart from what it measures: each prints one
//! JSON line, one of the types here, and the bench reads it back as that type.

use std::collections::BTreeMap;
use std::process::Stdio;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// `fill`: events written to a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Filled {
    pub events: usize,
    pub seconds: f64,
    pub rate: f64,
    pub transaction_events: usize,
    /// The sum of the partitions' next offsets once written (markers included).
    pub end: i64,
}

/// `raw-consume`: the topic read to its end, with or without decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Consumed {
    pub records: u64,
    pub seconds: f64,
    pub rate: f64,
    pub decoded: bool,
    pub undecodable: u64,
    pub cpu_us: u64,
    pub cpu_us_per_record: f64,
}

/// `raw-archive-read`: every archive file fetched and decoded, several at a time, as a
/// rebuild's reader does, and nothing done with the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveRead {
    pub files: usize,
    pub records: u64,
    pub seconds: f64,
    pub rate: f64,
    pub cpu_us: u64,
    pub cpu_us_per_record: f64,
}

/// `raw-copy`: rows COPYed into a table shaped like the read model's products (or, with
/// `--shape history`, its history, without keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Copied {
    pub rows: usize,
    pub seconds: f64,
    pub rate: f64,
    pub cpu_us: u64,
    pub cpu_us_per_row: f64,
}

/// `watch-projection`: records projected from the first batch to the topic's end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Projected {
    pub records: i64,
    pub seconds: f64,
    pub rate: f64,
}

/// `write-to-visible`: each write's time from its 2xx until the query API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Visible {
    pub writes: u64,
    /// Writes that failed, by why.
    pub failed: BTreeMap<String, u64>,
    pub rate: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `tail-latency`: a bare read_committed consumer at the tail, from each record's timestamp.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tail {
    pub records: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

/// `read-latency`: p50 and p99 of one kind of read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reads {
    pub samples: usize,
    pub failed: u64,
    pub events_per_product_mean: f64,
    pub largest_product_events: Option<i64>,
    /// `product` (the floor: a primary-key read), `history`, `as_of_position`, `as_of_time`.
    pub latency: BTreeMap<String, Latency>,
}

/// `raw-put`: the archive's files PUT again in a bare loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Put {
    pub files: usize,
    pub bytes: usize,
    /// Events in those files.
    pub records: usize,
    pub seconds: f64,
    /// Events per second.
    pub rate: f64,
    pub mib_per_s: f64,
    pub cpu_us: u64,
}

/// `raw-batch-write`: a topic's recent-events items written with a bare BatchWriteItem loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchWritten {
    pub events: usize,
    pub items: usize,
    pub seconds: f64,
    /// Events per second.
    pub rate: f64,
    pub cpu_us: u64,
}

/// `watch-metric`: a consumer's counter from its first move to the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watched {
    pub value: f64,
    pub seconds: f64,
    /// Events per second.
    pub rate: f64,
}

/// `raw-produce`: records sent straight to the broker, one at a time or in transactions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Produced {
    pub records: usize,
    pub failed: usize,
    /// Transactional producers side by side (0: no transactions).
    pub producers: usize,
    pub transactions: u64,
    pub seconds: f64,
    pub rate: f64,
    /// Per record acknowledged, or per whole transaction (begin → commit acknowledged).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Prints a probe's result as its one JSON line.
pub fn print(result: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(result)?);
    Ok(())
}

/// Runs `foldline-bench <args>` (this binary) with `env`, and reads its last line as `T`.
pub async fn run<T: DeserializeOwned>(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<T> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().await?;
    anyhow::ensure!(
        out.status.success(),
        "foldline-bench {args:?}: {}",
        out.status
    );
    let text = String::from_utf8(out.stdout)?;
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .map_err(|e| anyhow::anyhow!("foldline-bench {args:?} printed {last:?}: {e}"))
}
