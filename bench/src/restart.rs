//! `foldline-bench restart` (`scripts/bench restart`): how long a producer takes from its start
//! to `/ready` on a grown log, each start after a SIGKILL of the previous instance — once with
//! no snapshot (it reads the whole log), then from the snapshot in S3 plus the tail — beside the
//! floor of the same work measured in the same run: a bare `read_committed` consume of the whole
//! topic. Writes one typed result; `foldline-bench docs` makes its table.
//!
//! Runs against the servers of `start_core_stack` (broker, registry, S3), whose addresses it
//! takes from the environment, and the producer binary in `--bins`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use foldline_service::position::Offsets;
use foldline_testkit::process::{free_port, Spawned};
use serde::{Deserialize, Serialize};

use crate::record::Provenance;

/// Start → ready with the whole log to read (issue 13).
pub const WHOLE_LOG_GOAL_MS: f64 = 10_000.0;
/// Start → ready from a snapshot plus the tail (issue 17).
pub const FROM_SNAPSHOT_GOAL_MS: f64 = 5_000.0;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the release binaries (the producer).
    #[arg(long)]
    bins: PathBuf,
    /// Events written to the topic before the first start.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Starts from the snapshot after the first.
    #[arg(long, default_value_t = 2)]
    snapshot_starts: usize,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub events: usize,
    /// The floor: a bare read_committed consume of the whole topic, no decoding, ms.
    pub raw_consume_ms: f64,
    /// Start → `/ready` with no snapshot yet (the whole log read), ms.
    pub whole_log_ms: f64,
    /// Start → `/ready` from the snapshot stored by the previous start, plus the tail, ms.
    pub from_snapshot_ms: Vec<f64>,
    /// Both goals: ≤ 10 s reading the whole log, ≤ 5 s from a snapshot.
    pub met: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let topic = foldline_testkit::unique("restart");
    fill(&topic, args.events)?;
    let raw_consume_ms = raw_consume_ms(&topic).await?;
    let transactional_id = foldline_testkit::unique("bench-restart");
    let port = free_port();
    let producer = args.bins.join("foldline-producer");
    let env = [
        ("FOLDLINE_TOPIC", topic.clone()),
        ("FOLDLINE_TRANSACTIONAL_ID", transactional_id),
        ("FOLDLINE_PRODUCER_LISTEN", format!("127.0.0.1:{port}")),
    ];
    let mut starts = Vec::new();
    for _ in 0..=args.snapshot_starts {
        let started = Instant::now();
        let mut running = Spawned::spawn(&producer.to_string_lossy(), &[], &env, port);
        running.wait_ready(Duration::from_secs(120)).await;
        starts.push(round(started.elapsed().as_secs_f64() * 1000.0));
        // A start that read the whole log stores a snapshot at once: the next start reads it.
        wait_for_snapshot(&running).await?;
        running.kill();
    }
    let whole_log_ms = starts[0];
    let from_snapshot_ms = starts[1..].to_vec();
    let met = whole_log_ms <= WHOLE_LOG_GOAL_MS
        && from_snapshot_ms
            .iter()
            .all(|ms| *ms <= FROM_SNAPSHOT_GOAL_MS);
    let result = RestartResult {
        provenance: Provenance::now(),
        events: args.events,
        raw_consume_ms,
        whole_log_ms,
        from_snapshot_ms,
        met,
    };
    crate::record::write(&args.out, &result)
}

/// `foldline-bench fill` (this binary) writes the events, as every bench pre-fills a topic.
fn fill(topic: &str, events: usize) -> anyhow::Result<()> {
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["fill", "--topic", topic, "--events", &events.to_string()])
        .args(["--products", &(events / 20 + 1).to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "filling {topic} failed: {status}");
    Ok(())
}

async fn raw_consume_ms(topic: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    foldline_service::kafka::read_to_end(
        &foldline_testkit::brokers(),
        "foldline-bench-restart-floor",
        topic,
        &Offsets::new(),
        |_| async {},
    )
    .await?;
    Ok(round(started.elapsed().as_secs_f64() * 1000.0))
}

async fn wait_for_snapshot(producer: &Spawned) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let stored = producer
            .metrics_text()
            .await
            .lines()
            .any(|l| l.starts_with("producer_snapshots_total{outcome=\"stored\"}"));
        if stored {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no snapshot stored within 60 s")
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}
