//! `foldline-projector`: folds the products topic into the Postgres read model, or with
//! `replay`, rebuilds that model from the log without taking reads down.

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use foldline_archive::bucket::{ArchiveBucket, BucketConfig};
use foldline_archive::history::ArchiveThenTopic;
use foldline_archive::read::ArchiveReader;
use foldline_consumer_runtime::history::TopicSource;
use foldline_consumer_runtime::{Consumer, RuntimeConfig};
use foldline_postgres::compare::Comparison;
use foldline_postgres::model::ReadModel;
use foldline_postgres::rebuild::{rebuild, BulkTimings, RebuildConfig, Refused};
use foldline_postgres::sink::PostgresSink;
use foldline_postgres::DEFAULT_GROUP;
use foldline_schemas::wire::EventCodec;

#[derive(Parser)]
#[command(
    name = "foldline-projector",
    version,
    about = "Folds the products topic into the Postgres read model"
)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    /// PostgreSQL holding the read model.
    #[arg(
        long,
        env = "FOLDLINE_DATABASE_URL",
        default_value = "postgres://foldline@127.0.0.1:5432/foldline"
    )]
    database_url: String,
    /// Consumer group; instances in one group split the partitions.
    #[arg(long, env = "FOLDLINE_PROJECTOR_GROUP", default_value = DEFAULT_GROUP)]
    group: String,
    /// Address of /health, /ready and /metrics.
    #[arg(
        long,
        env = "FOLDLINE_PROJECTOR_LISTEN",
        default_value = "127.0.0.1:9101"
    )]
    listen: String,
    /// Products below this stock count as low in seller stats.
    #[arg(long, env = "LOW_STOCK_THRESHOLD", default_value_t = 5)]
    low_stock_threshold: i64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild the read model from offset 0 into a new schema while the live one keeps
    /// answering, swap it in atomically and drop the old one. Shows progress.
    Replay {
        /// Keep the old schema this long after the swap, for reads already under way (ms).
        #[arg(long, default_value_t = 2000)]
        drop_grace_ms: u64,
        /// Records per write transaction.
        #[arg(long, default_value_t = 20_000)]
        batch_records: usize,
        /// Read the S3 archive first, then the topic from where the archive ends: for
        /// history the topic no longer holds.
        #[arg(long)]
        from_archive: bool,
        /// Write the bulk batch by batch, as the live projector writes, instead of folding
        /// the log in memory and loading it with COPY (the bulk load falls back to this by
        /// itself when the log needs it, and says why).
        #[arg(long)]
        batches: bool,
        /// Swap the new model in even when it differs from the live one at the live model's
        /// offsets (the differences are printed either way).
        #[arg(long)]
        force: bool,
        /// Print the report as one JSON object (a `ReplayReport`) instead of sentences.
        #[arg(long)]
        json: bool,
        /// The archive (with --from-archive).
        #[command(flatten)]
        archive: BucketConfig,
    },
}

/// What `replay --json` prints: the rebuild's figures, for scripts and benches.
#[derive(serde::Serialize)]
struct ReplayReport<'a> {
    events: u64,
    undecodable: u64,
    parked_products: usize,
    seconds: f64,
    events_per_s: f64,
    /// The live projector's pause: the tail, the comparison's second step, the swap.
    swap_lock_seconds: f64,
    /// The comparison with the live model: at a snapshot (outside the lock), then under it.
    compared: bool,
    compare_snapshot_seconds: f64,
    compare_locked_seconds: f64,
    differences: i64,
    old_schema: &'a str,
    new_schema: &'a str,
    /// Where the bulk load's time went (absent: batch by batch).
    bulk: Option<BulkTimings>,
    /// Why the bulk load gave way to the batch-by-batch rebuild, when it did.
    fell_back: Option<&'a str>,
    /// Whether the archive was read before the topic.
    from_archive: bool,
    /// Model schemas killed rebuilds had left, dropped before this one began.
    left_over_dropped: &'a [String],
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("info");
    let cli = Cli::parse();
    let model = ReadModel::connect_lazy(&cli.database_url, 4)?;
    match cli.command {
        Some(Command::Replay {
            drop_grace_ms,
            batch_records,
            from_archive,
            batches,
            force,
            json,
            archive,
        }) => {
            let config = RebuildConfig {
                log: cli.runtime.log.clone(),
                group: cli.group.clone(),
                low_stock_threshold: cli.low_stock_threshold,
                batch_records,
                drop_grace: Duration::from_millis(drop_grace_ms),
                show_progress: !json,
                force,
                bulk: !batches,
            };
            let source = TopicSource {
                brokers: config.log.brokers.clone(),
                topic: config.log.topic.clone(),
                codec: Arc::new(EventCodec::new(
                    &config.log.registry_url,
                    &config.log.topic,
                )?),
                batch_records,
                undecodable: 0,
            };
            let archive = match from_archive {
                true => Some(ArchiveReader::open(ArchiveBucket::connect(&archive).await).await?),
                false => None,
            };
            let archive = archive.filter(|archive| {
                let empty = archive.files.values().all(|files| files.is_empty());
                if empty {
                    tracing::warn!("rebuild: the archive holds no files: reading the topic alone");
                }
                !empty
            });
            let read_archive = archive.is_some();
            let report = if let Some(archive) = archive {
                tracing::info!(ends = %archive.ends(), "rebuild: reading the archive, then the topic");
                rebuild(
                    &model,
                    &config,
                    ArchiveThenTopic {
                        archive,
                        topic: source,
                    },
                )
                .await
            } else {
                if !from_archive {
                    tracing::info!(
                        "rebuild: reading the topic (--from-archive reads the archive first)"
                    );
                }
                rebuild(&model, &config, source).await
            };
            let report = match report {
                Ok(report) => report,
                Err(error) => match error.downcast::<Refused>() {
                    Ok(refused) => {
                        print_differences(&refused.comparison);
                        println!("refused: the rebuilt model differs from the live one; the live model keeps serving (--force swaps anyway)");
                        std::process::exit(1);
                    }
                    Err(error) => return Err(error),
                },
            };
            let rate = report.events as f64 / report.elapsed.as_secs_f64().max(0.001);
            if json {
                let printed = ReplayReport {
                    events: report.events,
                    undecodable: report.dead,
                    parked_products: report.parked,
                    seconds: report.elapsed.as_secs_f64(),
                    events_per_s: rate,
                    swap_lock_seconds: report.locked.as_secs_f64(),
                    compared: report.comparison.compared,
                    compare_snapshot_seconds: report.comparison.snapshot_seconds,
                    compare_locked_seconds: report.comparison.seconds,
                    differences: report.comparison.differences,
                    old_schema: &report.old_schema,
                    new_schema: &report.new_schema,
                    bulk: report.bulk,
                    fell_back: report.fell_back.as_deref(),
                    from_archive: read_archive,
                    left_over_dropped: &report.left_over,
                };
                println!("{}", serde_json::to_string(&printed)?);
                return Ok(());
            }
            print_differences(&report.comparison);
            println!(
                "replayed {} events ({} undecodable skipped, {} products parked) in {:.1} s ({rate:.0} events/s): {} replaced {}",
                report.events,
                report.dead,
                report.parked,
                report.elapsed.as_secs_f64(),
                report.new_schema,
                report.old_schema
            );
            println!(
                "the swap lock was held {:.2} s (the live projector's pause: the tail, the comparison's second step, the swap)",
                report.locked.as_secs_f64()
            );
            match (&report.bulk, &report.fell_back) {
                (Some(bulk), _) => println!(
                    "bulk load: read and folded {:.1} s, rows {:.1} s, keys and indexes {:.1} s",
                    bulk.read_seconds, bulk.rows_seconds, bulk.index_seconds
                ),
                (None, Some(why)) => println!("written batch by batch: {why}"),
                (None, None) => println!("written batch by batch (--batches)"),
            }
            if !report.left_over.is_empty() {
                println!(
                    "dropped first what killed rebuilds had left: {}",
                    report.left_over.join(", ")
                );
            }
            Ok(())
        }
        None => {
            let active = model.bootstrap().await?;
            tracing::info!(schema = %active, "read model ready");
            let sink = PostgresSink::new(
                model,
                cli.group.clone(),
                cli.runtime.log.topic.clone(),
                cli.low_stock_threshold,
            );
            let consumer = Consumer {
                name: "postgres-projector",
                version: env!("CARGO_PKG_VERSION"),
                group_id: cli.group,
                config: cli.runtime,
                sink,
            };
            Ok(foldline_consumer_runtime::run_until_signal(consumer, &cli.listen).await?)
        }
    }
}

/// The first differences, then the comparison's summary.
fn print_differences(comparison: &Comparison) {
    for difference in &comparison.first {
        println!("differs: {difference}");
    }
    if comparison.first.len() < comparison.differences as usize {
        println!(
            "… and {} more differences",
            comparison.differences as usize - comparison.first.len()
        );
    }
    println!("{}", comparison.summary());
}
