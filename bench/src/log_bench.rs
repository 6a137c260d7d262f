//! `foldline-bench log` (`scripts/bench log`): the broker alone, on a stack of its own —
//! transactions of 10 records committed back to back with a `read_committed` reader at the
//! tail, on a fresh broker and again once it holds `--events` more records (on a new topic and
//! on the grown one); a reader catching up from offset 0; three transactional producers at
//! once. Writes one typed result; `foldline-bench docs` makes its table.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::probe::{self, Consumed, Filled, Produced, Tail};
use crate::record::{thousands, Provenance};

#[derive(clap::Args)]
pub struct Args {
    /// Records the log grows by before the second measurement.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// Commits of 10-record transactions, and what a reader at the tail saw meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Committed {
    pub commits: Produced,
    pub tail: Tail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub fresh: Committed,
    /// Three transactional producers (three `transactional.id`s) on one topic at once.
    pub three_at_once: Vec<Produced>,
    pub grown_by: Filled,
    /// A reader from offset 0 of the grown topic to its end.
    pub catch_up: Consumed,
    pub after_growth_new_topic: Committed,
    pub after_growth_grown_topic: Committed,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let provenance = Provenance::now();
    eprintln!("a fresh broker: commits and the tail");
    let fresh = commit_and_tail(&foldline_testkit::unique("log-fresh")).await?;
    eprintln!("three transactional producers at once");
    let three = foldline_testkit::unique("log-three");
    let one = [
        "raw-produce",
        "--topic",
        &three,
        "--transaction-records",
        "10",
        "--records",
        "10000",
    ];
    let runs = futures::future::join_all((0..3).map(|_| probe::run::<Produced>(&one, &[]))).await;
    let three_at_once = runs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let big = foldline_testkit::unique("log-big");
    let events = args.events.to_string();
    eprintln!("growing the log by {events} records");
    let grown_by: Filled = probe::run(&["fill", "--topic", &big, "--events", &events], &[]).await?;
    let catch_up: Consumed = probe::run(&["raw-consume", "--topic", &big], &[]).await?;
    eprintln!("after the growth: commits and the tail, on a new topic and on the grown one");
    let after_growth_new_topic = commit_and_tail(&foldline_testkit::unique("log-after")).await?;
    let after_growth_grown_topic = commit_and_tail(&big).await?;
    let result = LogResult {
        provenance,
        fresh,
        three_at_once,
        grown_by,
        catch_up,
        after_growth_new_topic,
        after_growth_grown_topic,
    };
    crate::record::write(&args.out, &result)
}

/// 20,000 records in transactions of 10, back to back, with a reader at the tail.
async fn commit_and_tail(topic: &str) -> anyhow::Result<Committed> {
    let produce = |records: &'static str| {
        [
            "raw-produce",
            "--topic",
            topic,
            "--transaction-records",
            "10",
            "--records",
            records,
        ]
    };
    // The topic exists and the producer's first InitProducerId is paid before measuring.
    let _: Produced = probe::run(&produce("1"), &[]).await?;
    let tail_args = ["tail-latency", "--topic", topic, "--seconds", "25"];
    let tail = probe::run::<Tail>(&tail_args, &[]);
    let commits = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        probe::run::<Produced>(&produce("20000"), &[]).await
    };
    let (tail, commits) = tokio::join!(tail, commits);
    Ok(Committed {
        commits: commits?,
        tail: tail?,
    })
}

/// The section `log` of docs/benchmarks.md.
pub fn render(r: &LogResult) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench log --events {}` \
         (bench/results/log.json): transactions of 10 records of 200 bytes, back to back.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.grown_by.events,
    );
    out.push_str("| the log | commit p50 / p99 ms | records/s | tail p50 / p99 ms (record timestamp → read_committed reader) |\n|---|---:|---:|---:|\n");
    let grown = thousands(r.grown_by.events as f64);
    for (name, c) in [
        ("fresh broker".to_owned(), &r.fresh),
        (
            format!("after {grown} more records, a new topic"),
            &r.after_growth_new_topic,
        ),
        (
            format!("after {grown} more records, on that topic"),
            &r.after_growth_grown_topic,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.2} / {:.2} | {} | {} / {} ({} records seen) |",
            c.commits.p50_ms,
            c.commits.p99_ms,
            thousands(c.commits.rate),
            c.tail.p50_ms,
            c.tail.p99_ms,
            thousands(c.tail.records as f64),
        );
    }
    let together: f64 = r.three_at_once.iter().map(|p| p.rate).sum();
    let p50s: Vec<String> = r
        .three_at_once
        .iter()
        .map(|p| format!("{:.1}", p.p50_ms))
        .collect();
    let _ = writeln!(
        out,
        "\nCatch-up: {} records read from offset 0 at {} records/s (the log grown at {} records/s). \
         Three transactional producers at once: {} records/s together, commit p50 {} ms each.",
        thousands(r.catch_up.records as f64),
        thousands(r.catch_up.rate),
        thousands(r.grown_by.rate),
        thousands(together),
        p50s.join(" / "),
    );
    out
}
