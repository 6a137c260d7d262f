//! `foldline-bench sinks` (`scripts/bench sinks`): the archiver and the recent-events consumer
//! each on a pre-filled topic, timed by their own counters from the first event to the last,
//! beside the floors of the same work measured in the same run: a bare loop doing only the
//! sink's own requests with the same bytes (PUT) or items (BatchWriteItem), and a raw consume
//! that decodes every record. Writes one typed result; `foldline-bench docs` makes its table.
//!
//! Runs against the servers of `start_core_stack` and a DynamoDB API (addresses from the
//! environment) and the binaries in `--bins`; `--pids` holds the servers' pid files.

use std::path::PathBuf;

use foldline_testkit::process::Spawned;

use crate::probe::{self, BatchWritten, Consumed, Filled, Put, Watched};
use crate::record::Provenance;
use crate::sinks_result::{Cpu, SinksResult};

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the release binaries.
    #[arg(long)]
    bins: PathBuf,
    /// The pid files of the stack (`s3.pid`, `dynamodb.pid`).
    #[arg(long)]
    pids: PathBuf,
    #[arg(long, default_value_t = 500_000)]
    archive_events: usize,
    #[arg(long, default_value_t = 20_000)]
    dynamodb_events: usize,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The checkout as the run starts: what was built.
    let provenance = Provenance::now();
    let pid = |name: &str| crate::cpu::read_pid(&args.pids.join(format!("{name}.pid")));
    let (s3, dynamodb) = (pid("s3")?, pid("dynamodb")?);
    let bin = |name: &str| args.bins.join(name).to_string_lossy().into_owned();

    let topic = foldline_testkit::unique("sinks-archive");
    let bucket = foldline_testkit::unique("bench-archive");
    let events = args.archive_events.to_string();
    eprintln!("pre-filling {topic} with {events} events");
    let _: Filled = probe::run(&["fill", "--topic", &topic, "--events", &events], &[]).await?;
    eprintln!("the archiver");
    let mut archiver = Spawned::start(
        &bin("foldline-archiver"),
        "FOLDLINE_ARCHIVER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_ARCHIVE_BUCKET", bucket.clone()),
            ("FOLDLINE_ARCHIVE_FILE_SECONDS", "5".into()),
        ],
    )
    .await;
    let (archived, archiver_cpu) = watch(&archiver, s3, "archive_records_total", &events).await?;
    let archive_bytes = archiver.metric("archive_bytes_total").await as u64;
    anyhow::ensure!(archiver.terminate(), "the archiver did not stop cleanly");
    eprintln!("the floors: a bare PUT loop of the same files, a raw consume + decode");
    let (put, put_s3): (Put, u64) = crate::cpu::during(s3, async {
        probe::run(
            &["raw-put"],
            &[("FOLDLINE_ARCHIVE_BUCKET", bucket.as_str())],
        )
        .await
    })
    .await?;
    let registry = std::env::var("FOLDLINE_REGISTRY_URL")?;
    let consume: Consumed = probe::run(
        &["raw-consume", "--topic", &topic, "--decode-with", &registry],
        &[],
    )
    .await?;

    let topic = foldline_testkit::unique("sinks-dynamodb");
    let (events, products) = (
        args.dynamodb_events.to_string(),
        (args.dynamodb_events / 10).to_string(),
    );
    eprintln!("pre-filling {topic} with {events} events");
    let _: Filled = probe::run(
        &[
            "fill",
            "--topic",
            &topic,
            "--events",
            &events,
            "--products",
            &products,
        ],
        &[],
    )
    .await?;
    eprintln!("the recent-events consumer");
    let mut recent = Spawned::start(
        &bin("foldline-recent-events"),
        "FOLDLINE_RECENT_EVENTS_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            (
                "FOLDLINE_RECENT_EVENTS_TABLE",
                foldline_testkit::unique("bench-recent"),
            ),
        ],
    )
    .await;
    let (recent_events, recent_cpu) =
        watch(&recent, dynamodb, "consumer_events_total", &events).await?;
    anyhow::ensure!(
        recent.terminate(),
        "the recent-events consumer did not stop cleanly"
    );
    eprintln!("the floor: a bare BatchWriteItem loop of the same items");
    let table = foldline_testkit::unique("bench-bare");
    let (batch, batch_dynamodb): (BatchWritten, u64) = crate::cpu::during(dynamodb, async {
        probe::run(
            &["raw-batch-write", "--topic", &topic, "--table", &table],
            &[],
        )
        .await
    })
    .await?;
    let result = SinksResult {
        provenance,
        archived,
        archive_bytes,
        archiver_cpu,
        put,
        put_s3_cpu_us: put_s3,
        consume,
        recent: recent_events,
        recent_cpu,
        batch,
        batch_dynamodb_cpu_us: batch_dynamodb,
    };
    crate::record::write(&args.out, &result)
}

/// Times `consumer` by its counter `metric` from its first move to `target`
/// (`watch-metric`), with the CPU it and its `server` used meanwhile.
async fn watch(
    consumer: &Spawned,
    server: u32,
    metric: &str,
    target: &str,
) -> anyhow::Result<(Watched, Cpu)> {
    let url = format!("{}/metrics", consumer.url);
    let pid = consumer.pid().unwrap_or(0);
    let watching = [
        "watch-metric",
        "--url",
        &url,
        "--metric",
        metric,
        "--target",
        target,
    ];
    let ((watched, process_us), server_us) = crate::cpu::during(server, async {
        crate::cpu::during(pid, probe::run::<Watched>(&watching, &[])).await
    })
    .await?;
    Ok((
        watched,
        Cpu {
            process_us,
            server_us,
        },
    ))
}
