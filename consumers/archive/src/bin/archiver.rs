//! `foldline-archiver`: writes the products topic into the S3 archive (Avro container files
//! per partition and offset range), lists it, or restores it into a topic.

use foldline_service::position::Offsets;

use clap::{Parser, Subcommand};
use foldline_archive::bucket::{ArchiveBucket, BucketConfig};
use foldline_archive::layout::check_continuity;
use foldline_archive::read::ArchiveReader;
use foldline_archive::restore::restore;
use foldline_archive::sink::{ArchiveSink, Rotation};
use foldline_archive::DEFAULT_GROUP;
use foldline_consumer_runtime::{Consumer, RuntimeConfig};

#[derive(Parser)]
#[command(
    name = "foldline-archiver",
    version,
    about = "Archives the products topic into S3 as Avro files, lists the archive, restores it into a topic"
)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    #[command(flatten)]
    bucket: BucketConfig,
    #[command(flatten)]
    rotation: Rotation,
    /// Consumer group; instances in one group split the partitions.
    #[arg(long, env = "FOLDLINE_ARCHIVER_GROUP", default_value = DEFAULT_GROUP)]
    group: String,
    /// Address of /health, /ready and /metrics.
    #[arg(
        long,
        env = "FOLDLINE_ARCHIVER_LISTEN",
        default_value = "127.0.0.1:9102"
    )]
    listen: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the archive's files per partition and whether they follow each other without
    /// gap or overlap (exit 1 when not).
    List,
    /// Re-publish archived events into a topic (disaster recovery), in offset order per
    /// partition, to the same partition numbers. Shows progress.
    Restore {
        /// The topic to write into (it must exist, with at least the archive's partitions).
        #[arg(long)]
        to_topic: String,
        /// Only offsets from here on, per partition: `0:1200,2:80` (default: everything).
        #[arg(long, default_value = "")]
        from: Offsets,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("info");
    let cli = Cli::parse();
    let bucket = ArchiveBucket::connect(&cli.bucket).await;
    match cli.command {
        Some(Command::List) => {
            let reader = ArchiveReader::open(bucket).await?;
            let mut broken = false;
            for (partition, files) in &reader.files {
                for file in files {
                    println!("{}", file.key(&cli.bucket.prefix));
                }
                if let Err(problem) = check_continuity(files) {
                    eprintln!("partition {partition}: {problem:?}");
                    broken = true;
                }
            }
            for (partition, end) in &reader.ends() {
                eprintln!("partition {partition}: archived up to offset {}", end - 1);
            }
            if broken {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Restore { to_topic, from }) => {
            let reader = ArchiveReader::open(bucket).await?;
            let mut log = cli.runtime.log.clone();
            log.topic = to_topic;
            let report = restore(&reader, &log, &from, true).await?;
            println!(
                "restored {} events from {} files into {} in {:.1} s",
                report.events,
                report.files,
                log.topic,
                report.elapsed.as_secs_f64()
            );
            Ok(())
        }
        None => {
            bucket.ensure_bucket().await?;
            let consumer = Consumer {
                name: "archiver",
                version: env!("CARGO_PKG_VERSION"),
                group_id: cli.group,
                config: cli.runtime,
                sink: ArchiveSink::new(bucket, cli.rotation),
            };
            Ok(foldline_consumer_runtime::run_until_signal(consumer, &cli.listen).await?)
        }
    }
}
