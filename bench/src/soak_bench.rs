//! `foldline-bench soak` (`scripts/bench soak`): every service on a grown log. A topic
//! pre-filled with `--events` events written as small transactions; the notifier, the
//! producer and every consumer started on it (their start and catch-up timed); then writes at
//! `--rate` for `--minutes` while every consumer runs, reported once a minute (write →
//! visible in the query API and on an SSE stream, each consumer's lag, each stage's
//! histograms); optionally a sweep of rates; last, the producer's restart after a SIGKILL
//! (snapshot plus tail) and a rebuild of the read model. Writes one typed result;
//! `foldline-bench docs` makes its table.
//!
//! Runs against the servers `scripts/bench` started (broker, registry, S3, PostgreSQL,
//! DynamoDB: addresses from the environment) and the binaries in `--bins`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use foldline_testkit::process::{free_port, Spawned};
use serde::{Deserialize, Serialize};

use crate::probe::{self, Filled, Watched};
use crate::project_result::Rebuilt;
use crate::record::Provenance;
use crate::soak::{LoadEnd, MinuteReport};

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the release binaries.
    #[arg(long)]
    bins: PathBuf,
    #[arg(long, alias = "soak-events", default_value_t = 1_000_000)]
    events: usize,
    /// Writes per second: half the producer's peak for single commands.
    #[arg(long, alias = "soak-rate", default_value_t = 1150)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// After the soak, write → visible at each of these rates for `--sweep-minutes` each.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<u64>,
    #[arg(long, default_value_t = 3)]
    sweep_minutes: u64,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// Write → visible p99 in every minute (issue 17).
pub const VISIBLE_P99_GOAL_MS: f64 = 100.0;
/// The producer's start → ready after a SIGKILL, from its snapshot plus the tail (issue 17).
pub const RESTART_GOAL_MS: f64 = 5_000.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshots {
    pub count: f64,
    pub mean_seconds: f64,
    pub last_bytes: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepStep {
    pub rate: u64,
    pub minutes: Vec<MinuteReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub fill: Filled,
    pub rate: u64,
    /// Start → `/ready` on the grown log, before any snapshot existed.
    pub producer_first_ready_ms: f64,
    pub notifier_ready_ms: f64,
    /// Each consumer's catch-up on the pre-filled events (`None`: not within 15 minutes).
    pub catch_up: BTreeMap<String, Option<Watched>>,
    pub minutes: Vec<MinuteReport>,
    pub end: LoadEnd,
    pub sweep: Vec<SweepStep>,
    pub snapshots: Snapshots,
    /// Start → `/ready` after a SIGKILL, from the snapshot plus the tail.
    pub restart_ms: f64,
    pub rebuild: Rebuilt,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let provenance = Provenance::now();
    let topic = foldline_testkit::unique("soak");
    let bin = |name: &str| args.bins.join(name).to_string_lossy().into_owned();
    let token = foldline_testkit::auth::token("bench-soak", "admin", None, 24 * 3600);
    let events = args.events.to_string();
    eprintln!("pre-filling {topic} with {events} events in transactions of 64");
    let fill: Filled = probe::run(
        &[
            "fill",
            "--topic",
            &topic,
            "--events",
            &events,
            "--products",
            "50000",
            "--transaction-events",
            "64",
        ],
        &[],
    )
    .await?;
    let on_topic = |more: &[(&'static str, String)]| {
        let mut env = vec![("FOLDLINE_TOPIC", topic.clone())];
        env.extend_from_slice(more);
        env
    };
    eprintln!("starting the notifier, then the producer, then the consumers on the grown log");
    let started = Instant::now();
    let notifier = Spawned::start(
        &bin("foldline-notifier"),
        "FOLDLINE_NOTIFIER_LISTEN",
        &on_topic(&[]),
    )
    .await;
    let notifier_ready_ms = ms(started.elapsed());
    let transactional_id = foldline_testkit::unique("soak");
    let producer_port = free_port();
    let producer_env = on_topic(&[
        ("FOLDLINE_TRANSACTIONAL_ID", transactional_id),
        (
            "FOLDLINE_PRODUCER_LISTEN",
            format!("127.0.0.1:{producer_port}"),
        ),
    ]);
    let started = Instant::now();
    let mut producer = Spawned::spawn(&bin("foldline-producer"), &[], &producer_env, producer_port);
    let consumers = [
        (
            "projector",
            "foldline-projector",
            "FOLDLINE_PROJECTOR_LISTEN",
            vec![],
        ),
        (
            "archiver",
            "foldline-archiver",
            "FOLDLINE_ARCHIVER_LISTEN",
            vec![(
                "FOLDLINE_ARCHIVE_BUCKET",
                foldline_testkit::unique("soak-archive"),
            )],
        ),
        (
            "recent-events",
            "foldline-recent-events",
            "FOLDLINE_RECENT_EVENTS_LISTEN",
            vec![(
                "FOLDLINE_RECENT_EVENTS_TABLE",
                foldline_testkit::unique("soak"),
            )],
        ),
    ];
    let mut running = BTreeMap::new();
    for (name, binary, listen, env) in consumers {
        let port = free_port();
        let mut env = on_topic(&env);
        env.push((listen, format!("127.0.0.1:{port}")));
        running.insert(name, Spawned::spawn(&bin(binary), &[], &env, port));
    }
    let query = Spawned::start(
        &bin("foldline-query"),
        "FOLDLINE_QUERY_LISTEN",
        &on_topic(&[]),
    )
    .await;
    producer.wait_ready(Duration::from_secs(600)).await;
    let producer_first_ready_ms = ms(started.elapsed());
    eprintln!("producer ready after {producer_first_ready_ms} ms; timing each consumer's catch-up");
    let catch_up = futures::future::join_all(running.iter().map(|(name, consumer)| {
        let url = format!("{}/metrics", consumer.url);
        let events = events.clone();
        async move {
            let watched = probe::run::<Watched>(
                &[
                    "watch-metric",
                    "--url",
                    &url,
                    "--metric",
                    "consumer_events_total",
                    "--target",
                    &events,
                    "--limit-secs",
                    "900",
                ],
                &[],
            )
            .await;
            (name.to_string(), watched.ok())
        }
    }))
    .await
    .into_iter()
    .collect();

    let load = |rate: u64, minutes: u64, consumers: bool| crate::soak::Args {
        producer_url: producer.url.clone(),
        query_url: query.url.clone(),
        notifier_url: notifier.url.clone(),
        consumers: if consumers {
            running
                .iter()
                .map(|(n, c)| format!("{n}={}", c.url))
                .collect()
        } else {
            vec![format!("projector={}", running["projector"].url)]
        },
        rate,
        minutes,
        token: token.clone(),
    };
    eprintln!("{} minutes at {} writes/s", args.minutes, args.rate);
    let (minutes, end) = crate::soak::load(&load(args.rate, args.minutes, true), |m| {
        eprintln!("{}", serde_json::to_string(m).unwrap_or_default());
    })
    .await?;
    let mut sweep = Vec::new();
    for rate in &args.sweep {
        eprintln!("sweep: {} minutes at {rate} writes/s", args.sweep_minutes);
        let (minutes, _) =
            crate::soak::load(&load(*rate, args.sweep_minutes, false), |_| {}).await?;
        sweep.push(SweepStep {
            rate: *rate,
            minutes,
        });
    }
    let metric = |name: &'static str| {
        let producer = &producer;
        async move { producer.metric(name).await }
    };
    let count = metric("producer_snapshot_seconds_count").await;
    let snapshots = Snapshots {
        count,
        mean_seconds: metric("producer_snapshot_seconds_sum").await / count.max(1.0),
        last_bytes: metric("producer_snapshot_bytes").await,
    };
    eprintln!("the producer's restart after a SIGKILL (snapshot plus tail)");
    producer.kill();
    let started = Instant::now();
    let restarted = Spawned::spawn(&bin("foldline-producer"), &[], &producer_env, producer_port);
    restarted.wait_ready(Duration::from_secs(120)).await;
    let restart_ms = ms(started.elapsed());
    eprintln!("the rebuild of the read model");
    if let Some(mut projector) = running.remove("projector") {
        anyhow::ensure!(projector.terminate(), "the projector did not stop cleanly");
    }
    // The model the projector kept, as `scripts/bench soak` set it for every service.
    let database_url = std::env::var("FOLDLINE_DATABASE_URL")?;
    let rebuild =
        crate::project_bench::replay(&bin("foldline-projector"), &topic, &database_url).await?;
    let result = SoakResult {
        provenance,
        fill,
        rate: args.rate,
        producer_first_ready_ms,
        notifier_ready_ms,
        catch_up,
        minutes,
        end,
        sweep,
        snapshots,
        restart_ms,
        rebuild,
    };
    crate::record::write(&args.out, &result)
}

fn ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The section `soak` of docs/benchmarks.md.
pub fn render(r: &SoakResult) -> String {
    use crate::record::{thousands, verdict};
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench soak --soak-events {} --soak-rate {} \
         --minutes {}` (bench/results/soak.json): {} events pre-filled in transactions of {} \
         ({} events/s), then every service on the grown log.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.fill.events,
        r.rate,
        r.minutes.len(),
        thousands(r.fill.events as f64),
        r.fill.transaction_events,
        thousands(r.fill.rate),
    );
    out.push_str("| start on the grown log | figure | goal |\n|---|---:|---|\n");
    let _ = writeln!(
        out,
        "| producer start → ready, no snapshot yet | {:.1} s | |",
        r.producer_first_ready_ms / 1000.0
    );
    let _ = writeln!(
        out,
        "| notifier start → ready | {:.1} s | |",
        r.notifier_ready_ms / 1000.0
    );
    for (name, watched) in &r.catch_up {
        let figure = watched
            .as_ref()
            .map_or("not caught up in 15 min".to_owned(), |w| {
                format!("{:.1} s ({} events/s)", w.seconds, thousands(w.rate))
            });
        let _ = writeln!(
            out,
            "| {name}: catch-up on the pre-filled events | {figure} | |"
        );
    }
    let _ = writeln!(
        out,
        "| producer restart after a SIGKILL (snapshot plus tail; {:.0} snapshots in the run, {:.2} s each, the last {:.1} MiB) | {:.2} s | ≤ {} s ({}) |",
        r.snapshots.count,
        r.snapshots.mean_seconds,
        r.snapshots.last_bytes / 1_048_576.0,
        r.restart_ms / 1000.0,
        RESTART_GOAL_MS / 1000.0,
        verdict(r.restart_ms <= RESTART_GOAL_MS)
    );
    let _ = writeln!(
        out,
        "| rebuild of the read model at the end ({} events, swap lock {:.2} s) | {:.1} s ({} events/s) | |",
        thousands(r.rebuild.events as f64),
        r.rebuild.swap_lock_seconds,
        r.rebuild.seconds,
        thousands(r.rebuild.events_per_s)
    );
    let _ = writeln!(
        out,
        "\nEach minute at {} writes/s (write → visible from sending the write; lag in records, summed over partitions):\n",
        r.rate
    );
    out.push_str("| minute | write p50 / p99 ms | query visible p50 / p99 ms | SSE p50 / p99 ms | failed | not visible in 10 s | lag: projector, archiver, recent-events |\n|---:|---:|---:|---:|---:|---:|---|\n");
    let q = |x: &crate::soak::Quantiles| format!("{:.1} / {:.1}", x.p50_ms, x.p99_ms);
    for m in &r.minutes {
        let lag = |name: &str| {
            m.lag_records
                .get(name)
                .map_or("–".to_owned(), |l| l.to_string())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}, {}, {} |",
            m.minute,
            q(&m.write),
            q(&m.query_visible),
            q(&m.sse_received),
            m.failed_writes,
            m.not_visible_in_10s,
            lag("projector"),
            lag("archiver"),
            lag("recent-events")
        );
    }
    let worst = |f: fn(&MinuteReport) -> f64| r.minutes.iter().map(f).fold(0.0, f64::max);
    let (query, sse) = (
        worst(|m| m.query_visible.p99_ms),
        worst(|m| m.sse_received.p99_ms),
    );
    let _ = writeln!(
        out,
        "\nWrite → visible p99 in every minute ≤ {VISIBLE_P99_GOAL_MS} ms: {} (worst minute: query {query:.1} ms, SSE {sse:.1} ms). \
         Acknowledged writes never received on the SSE stream: {} ({} connections).",
        verdict(query <= VISIBLE_P99_GOAL_MS && sse <= VISIBLE_P99_GOAL_MS),
        r.end.sse_never_received,
        r.end.sse_connections
    );
    if !r.sweep.is_empty() {
        out.push_str("\nThe rate sweep (worst minute's write → visible p99, ms):\n\n| writes/s | query | SSE |\n|---:|---:|---:|\n");
        for step in &r.sweep {
            let worst =
                |f: fn(&MinuteReport) -> f64| step.minutes.iter().map(f).fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} |",
                step.rate,
                worst(|m| m.query_visible.p99_ms),
                worst(|m| m.sse_received.p99_ms)
            );
        }
    }
    out
}
