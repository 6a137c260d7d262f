//! `foldline-recent-events`: writes every event of the products topic into the DynamoDB
//! `RecentEvents` table, under its product and under its UTC day, expiring through TTL.

use clap::Parser;
use foldline_consumer_runtime::{Consumer, RuntimeConfig};
use foldline_recent_events::sink::RecentEventsSink;
use foldline_recent_events::table::ensure_table;
use foldline_recent_events::{DynamoDb, DEFAULT_GROUP};
use foldline_service::retry::{self, Retryable, Transient};

#[derive(Parser)]
#[command(
    name = "foldline-recent-events",
    version,
    about = "Writes the products topic into the DynamoDB RecentEvents table"
)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
    #[command(flatten)]
    dynamodb: DynamoDb,
    /// The table (created with TTL on `ttl` if missing).
    #[arg(
        long,
        env = "FOLDLINE_RECENT_EVENTS_TABLE",
        default_value = "RecentEvents"
    )]
    table: String,
    /// Items expire this many days after their event.
    #[arg(long, env = "FOLDLINE_RECENT_EVENTS_TTL_DAYS", default_value_t = 30)]
    ttl_days: i64,
    /// BatchWriteItem requests in flight at once.
    #[arg(long, env = "FOLDLINE_RECENT_EVENTS_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Consumer group; instances in one group split the partitions.
    #[arg(long, env = "FOLDLINE_RECENT_EVENTS_GROUP", default_value = DEFAULT_GROUP)]
    group: String,
    /// Address of /health, /ready and /metrics.
    #[arg(
        long,
        env = "FOLDLINE_RECENT_EVENTS_LISTEN",
        default_value = "127.0.0.1:9103"
    )]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("info");
    let cli = Cli::parse();
    let client = cli.dynamodb.client().await;
    // Waits for DynamoDB at start: the local stack may still be starting it.
    (|| ensure_table(&client, &cli.table))
        .retry(retry::forever(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
        ))
        .when(|error| error.is_transient())
        .notify(|error, _| tracing::warn!(%error, "DynamoDB not available yet; retrying"))
        .await?;
    let sink = RecentEventsSink::new(
        client,
        cli.table,
        chrono::Duration::days(cli.ttl_days),
        cli.concurrency,
    );
    let consumer = Consumer {
        name: "recent-events",
        version: env!("CARGO_PKG_VERSION"),
        group_id: cli.group,
        config: cli.runtime,
        sink,
    };
    Ok(foldline_consumer_runtime::run_until_signal(consumer, &cli.listen).await?)
}
