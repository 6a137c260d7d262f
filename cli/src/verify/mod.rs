//! `foldline verify`: checks, without stopping anything, that the projections equal the
//! fold of the log at a cut, reading the topic once for all of them.
//! - The PostgreSQL read model ([`postgres`]): the cut is its own stored offsets, read in the
//!   same snapshot as its rows, so a projector writing meanwhile changes nothing; every
//!   product, seller's stats, event count per type and hour and product history must equal
//!   what the write side's own fold (`producer::domain::evolve`, not the projection's code)
//!   makes of the events before the cut.
//! - The DynamoDB recent-events table ([`recent_events`]): the cut is the consumer's committed
//!   offsets; every event before it is there under its product and under its day.
//! - The S3 archive ([`archive`]): the cut is the archiver's committed offsets; every record
//!   before it is in exactly one file, the one named for its offset, with the same event.
//!
//! Parked products are reported as parked, not as differences. Prints the first differences,
//! a summary per projection, and exits 1 on any difference.

mod archive;
mod expected;
mod postgres;
mod recent_events;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use foldline_archive::bucket::ArchiveBucket;
use foldline_archive::history::ArchiveThenTopic;
use foldline_archive::read::ArchiveReader;
use foldline_consumer_runtime::history::{EventSource, TopicSource};
use foldline_schemas::wire::EventCodec;
use foldline_service::position::Offsets;
use indicatif::{ProgressBar, ProgressStyle};

pub use expected::Expected;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Projection {
    Postgres,
    RecentEvents,
    Archive,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The projections to check (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', default_values = ["postgres", "recent-events", "archive"])]
    only: Vec<Projection>,
    /// The events topic.
    #[arg(long, env = "FOLDLINE_TOPIC", default_value = "products")]
    topic: String,
    /// The read model's database.
    #[arg(
        long,
        env = "FOLDLINE_DATABASE_URL",
        default_value = "postgres://foldline@127.0.0.1:5432/foldline"
    )]
    database_url: String,
    /// The projector's consumer group (whose offsets are the cut).
    #[arg(
        long,
        env = "FOLDLINE_PROJECTOR_GROUP",
        default_value = "foldline-postgres-projector"
    )]
    group: String,
    /// Stock below this is low (the projector's setting).
    #[arg(long, env = "LOW_STOCK_THRESHOLD", default_value_t = 5)]
    low_stock_threshold: i64,
    #[command(flatten)]
    recent_events: recent_events::RecentEventsArgs,
    #[command(flatten)]
    archive: archive::ArchiveArgs,
    /// How to sign for DynamoDB and S3 (both local servers take the same keys).
    #[command(flatten)]
    aws: foldline_service::aws::AwsEndpoint,
    /// Differences printed before the summary (all are counted).
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// Read the S3 archive first, then the topic from where the archive ends (as
    /// `foldline-projector replay --from-archive` does): checks the events the topic no longer
    /// holds too. The archive's own check then compares those events with themselves.
    #[arg(long)]
    from_archive: bool,
    /// No progress bar (for scripts).
    #[arg(long)]
    quiet: bool,
    /// Print one JSON object (a `VerifyReport`) instead of sentences; no progress bar.
    #[arg(long)]
    json: bool,
}

/// What `verify --json` prints.
#[derive(serde::Serialize)]
struct VerifyReport<'a> {
    seconds: f64,
    /// Events of the log read (up to the furthest cut).
    events: u64,
    differences: usize,
    /// A line per projection checked, as printed without `--json`.
    summaries: &'a [String],
    /// The first differences (`--show`).
    first: Vec<String>,
    parked: &'a BTreeSet<String>,
}

/// One way a projection differs from the log.
#[derive(Debug)]
pub struct Difference {
    /// What differs: `product <id>`, `seller <id>`, `event count <type> <hour>`, ….
    pub what: String,
    pub model: String,
    pub log: String,
}

pub async fn run(args: VerifyArgs, brokers: &str, registry_url: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let partitions: Vec<i32> =
        (0..foldline_service::kafka::topic_partition_count(brokers, &args.topic).await?).collect();
    let model = match args.only.contains(&Projection::Postgres) {
        true => Some(
            postgres::read(&args.database_url, &args.topic, &args.group)
                .await
                .context("reading the read model")?,
        ),
        false => None,
    };
    let mut recent = match args.only.contains(&Projection::RecentEvents) {
        true => Some(
            recent_events::Check::start(
                &args.recent_events,
                &args.aws,
                brokers,
                &args.topic,
                &partitions,
            )
            .await
            .context("reading the recent-events table's cut")?,
        ),
        false => None,
    };
    let mut archived = match args.only.contains(&Projection::Archive) {
        true => Some(
            archive::Check::start(&args.archive, &args.aws, brokers, &args.topic, &partitions)
                .context("reading the archiver's cut")?,
        ),
        false => None,
    };
    let mut expected = Expected::default();
    let end: i64 = partitions
        .iter()
        .map(|p| {
            let model_cut = model.as_ref().and_then(|m| m.cut.get(*p)).unwrap_or(0);
            let recent_cut = recent.as_ref().and_then(|r| r.cut.get(*p)).unwrap_or(0);
            let archive_cut = archived.as_ref().and_then(|a| a.cut.get(*p)).unwrap_or(0);
            model_cut.max(recent_cut).max(archive_cut)
        })
        .sum();
    let mut expected_events = 0u64;
    read_log(&args, brokers, registry_url, end, |record| {
        expected_events += 1;
        if let Some(model) = &model {
            let before_cut = model
                .cut
                .get(record.partition)
                .is_some_and(|c| record.offset < c);
            if before_cut && !model.parked_at.contains(&(record.partition, record.offset)) {
                expected.apply(record);
            }
        }
        if let Some(recent) = &mut recent {
            recent.apply(record);
        }
        if let Some(archived) = &mut archived {
            archived.apply(record);
        }
    })
    .await?;

    let mut differences = Vec::new();
    let mut summaries = Vec::new();
    let mut parked: BTreeSet<String> = BTreeSet::new();
    if let Some(model) = &model {
        let report = postgres::compare(model, &expected, args.low_stock_threshold);
        summaries.push(format!(
            "read model: {} events before its cut {}; {} products, {} sellers, {} event counts, {} histories compared; {} differences; {} parked products",
            expected.events, model.cut, report.products, report.sellers, report.counts,
            report.histories, report.differences.len(), model.parked_products.len(),
        ));
        parked.extend(
            model
                .parked_products
                .iter()
                .map(|p| format!("{p} (read model)")),
        );
        differences.extend(report.differences);
    }
    if let Some(recent) = recent {
        let (events, cut, parked_products) = (
            recent.events,
            recent.cut.clone(),
            recent.parked_products.clone(),
        );
        let (items, found) = recent
            .compare()
            .await
            .context("scanning the recent-events table")?;
        summaries.push(format!(
            "recent events: {events} events before the consumer's cut {cut}; {items} items compared; {} differences; {} parked products",
            found.len(), parked_products.len(),
        ));
        parked.extend(
            parked_products
                .iter()
                .map(|p| format!("{p} (recent events)")),
        );
        differences.extend(found);
    }
    if let Some(archived) = archived {
        let cut = archived.cut.clone();
        let (records, found) = archived.compare().await.context("reading the archive")?;
        summaries.push(format!(
            "archive: {records} records before the archiver's cut {cut}; {} differences",
            found.len(),
        ));
        differences.extend(found);
    }
    if args.json {
        let report = VerifyReport {
            seconds: started.elapsed().as_secs_f64(),
            events: expected_events,
            differences: differences.len(),
            summaries: &summaries,
            first: differences
                .iter()
                .take(args.show)
                .map(|d| format!("{}: projection {}, log {}", d.what, d.model, d.log))
                .collect(),
            parked: &parked,
        };
        println!("{}", serde_json::to_string(&report)?);
        anyhow::ensure!(
            differences.is_empty(),
            "the projections differ from the log in {} places",
            differences.len()
        );
        return Ok(());
    }
    for difference in differences.iter().take(args.show) {
        println!(
            "difference: {}\n  projection: {}\n  log:        {}",
            difference.what, difference.model, difference.log
        );
    }
    for product in &parked {
        println!("parked: product {product}: not compared (see `foldline parked list`)");
    }
    for summary in &summaries {
        println!("{summary}");
    }
    println!(
        "verified in {:.1} s: {} differences",
        started.elapsed().as_secs_f64(),
        differences.len()
    );
    if !differences.is_empty() {
        anyhow::bail!(
            "the projections differ from the log in {} places",
            differences.len()
        );
    }
    Ok(())
}

/// Reads the topic from its start to its end (as a rebuild does) and hands every decoded
/// record to `each`; a progress bar over the `end` records that matter.
async fn read_log(
    args: &VerifyArgs,
    brokers: &str,
    registry_url: &str,
    end: i64,
    each: impl FnMut(&foldline_consumer_runtime::Record),
) -> anyhow::Result<()> {
    let codec = Arc::new(EventCodec::new(registry_url, &args.topic)?);
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(end.max(0) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("verify {bar:40} {pos}/{len} records  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    let source = TopicSource {
        brokers: brokers.to_owned(),
        topic: args.topic.clone(),
        codec,
        batch_records: 10_000,
        undecodable: 0,
    };
    let newer = match args.from_archive {
        true => {
            let bucket = ArchiveBucket::connect(&args.archive.bucket(&args.aws)).await;
            let archive = ArchiveReader::open(bucket)
                .await
                .context("listing the archive")?;
            let source = ArchiveThenTopic {
                archive,
                topic: source,
            };
            read_source(source, &bar, each).await?
        }
        false => read_source(source, &bar, each).await?,
    };
    bar.finish_and_clear();
    if let Some(first) = newer.first() {
        anyhow::bail!(
            "{} events are written by a newer schema than this build reads (first: {}:{}, {}): \
             upgrade foldline, then verify again",
            newer.len(),
            first.partition,
            first.offset,
            first.reason
        );
    }
    Ok(())
}

/// Reads `source` from its start, handing every decoded record to `each`; returns the records
/// parked as read (written by a newer schema).
async fn read_source<S: EventSource + Send>(
    mut source: S,
    bar: &ProgressBar,
    mut each: impl FnMut(&foldline_consumer_runtime::Record),
) -> anyhow::Result<Vec<foldline_consumer_runtime::Parked>> {
    let (sender, mut batches) = tokio::sync::mpsc::channel(4);
    let start = Offsets::new();
    let reading = source.read(&start, sender);
    let mut newer = Vec::new();
    let folding = async {
        while let Some(batch) = batches.recv().await {
            for record in &batch.records {
                each(record);
            }
            newer.extend(batch.parked);
            bar.inc(batch.records.len() as u64);
        }
    };
    let (read, ()) = tokio::join!(reading, folding);
    read.context("reading the log")?;
    Ok(newer)
}
