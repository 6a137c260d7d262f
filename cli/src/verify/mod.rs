//! `foldline verify`: checks, without stopping anything, that a projection equals the fold
//! of the log at a cut. For the PostgreSQL read model the cut is its own stored offsets, read
//! in the same snapshot as its rows, so a projector writing meanwhile changes nothing: every
//! product, seller's stats, event count per type and hour and product history must equal
//! what the write side's own fold (`producer::domain::evolve`, not the projection's code)
//! makes of the log's events before the cut. Parked products are reported as parked, not as
//! differences. Prints the first differences, a summary, and exits 1 on any difference.

mod expected;
mod postgres;

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use foldline_consumer_runtime::history::{EventSource, TopicSource};
use foldline_schemas::wire::EventCodec;
use foldline_service::position::Offsets;
use indicatif::{ProgressBar, ProgressStyle};

pub use expected::Expected;

#[derive(Args)]
pub struct VerifyArgs {
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
    /// Differences printed before the summary (all are counted).
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// No progress bar (for scripts).
    #[arg(long)]
    quiet: bool,
}

/// One way the projection differs from the log.
#[derive(Debug)]
pub struct Difference {
    /// What differs: `product <id>`, `seller <id>`, `event count <type> <hour>`, ….
    pub what: String,
    pub model: String,
    pub log: String,
}

pub async fn run(args: VerifyArgs, brokers: &str, registry_url: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let model = postgres::read(&args.database_url, &args.topic, &args.group)
        .await
        .context("reading the read model")?;
    let expected = fold_log(&args, brokers, registry_url, &model.cut, &model.parked_at).await?;
    let report = postgres::compare(&model, &expected, args.low_stock_threshold);
    for difference in report.differences.iter().take(args.show) {
        println!(
            "difference: {}\n  model: {}\n  log:   {}",
            difference.what, difference.model, difference.log
        );
    }
    for product in &model.parked_products {
        println!("parked: product {product} (not compared; see `foldline parked list`)");
    }
    println!(
        "verified the read model against {} events of the log before the cut {}: {} products, {} sellers, {} event counts, {} histories compared; {} differences; {} parked products; {:.1} s",
        expected.events,
        model.cut,
        report.products,
        report.sellers,
        report.counts,
        report.histories,
        report.differences.len(),
        model.parked_products.len(),
        started.elapsed().as_secs_f64(),
    );
    if !report.differences.is_empty() {
        anyhow::bail!(
            "the read model differs from the log in {} places",
            report.differences.len()
        );
    }
    Ok(())
}

/// Reads the topic from its start and folds every event before `cut` that is not parked.
async fn fold_log(
    args: &VerifyArgs,
    brokers: &str,
    registry_url: &str,
    cut: &Offsets,
    parked: &std::collections::BTreeSet<(i32, i64)>,
) -> anyhow::Result<Expected> {
    let codec = Arc::new(EventCodec::new(registry_url, &args.topic)?);
    let total: i64 = cut.iter().map(|(_, o)| o).sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total.max(0) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("verify {bar:40} {pos}/{len} records  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    let mut source = TopicSource {
        brokers: brokers.to_owned(),
        topic: args.topic.clone(),
        codec,
        batch_records: 10_000,
        undecodable: 0,
    };
    let (sender, mut batches) = tokio::sync::mpsc::channel(4);
    let reading = async move { source.read(&Offsets::new(), sender).await };
    let folding = async {
        let mut expected = Expected::default();
        while let Some(batch) = batches.recv().await {
            for record in &batch.records {
                let before_cut = cut.get(record.partition).is_some_and(|c| record.offset < c);
                if before_cut && !parked.contains(&(record.partition, record.offset)) {
                    expected.apply(record);
                }
            }
            let read: u64 = batch
                .next_offsets()
                .iter()
                .map(|(p, next)| {
                    (next.min(cut.get(p).unwrap_or(0)) - batch.read_from.get(p).unwrap_or(0)).max(0)
                        as u64
                })
                .sum();
            bar.inc(read);
        }
        expected
    };
    let (read, expected) = tokio::join!(reading, folding);
    read.context("reading the topic")?;
    bar.finish_and_clear();
    Ok(expected)
}
