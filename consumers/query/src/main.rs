//! `foldline-query`: the query API over the Postgres read model (CONTRACT.md, :8082).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use foldline_postgres::model::ReadModel;
use foldline_query::{routes, QueryState};
use foldline_service::ops::Ops;

#[derive(Parser)]
#[command(
    name = "foldline-query",
    version,
    about = "Query API over the Postgres read model"
)]
struct Cli {
    /// PostgreSQL holding the read model.
    #[arg(
        long,
        env = "FOLDLINE_DATABASE_URL",
        default_value = "postgres://foldline@127.0.0.1:5432/foldline"
    )]
    database_url: String,
    /// The topic whose positions `?after=P:O` names.
    #[arg(long, env = "FOLDLINE_TOPIC", default_value = "products")]
    topic: String,
    /// Address to listen on.
    #[arg(long, env = "FOLDLINE_QUERY_LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
    /// How long `?after=` waits by default (ms); `timeout_ms` changes it per request.
    #[arg(long, env = "FOLDLINE_QUERY_WAIT_MS", default_value_t = 5000)]
    default_wait_ms: u64,
    /// Requests waiting on `?after=` at once; past it a request is answered 503 with
    /// `Retry-After` instead of waiting.
    #[arg(long, env = "FOLDLINE_QUERY_MAX_WAITERS", default_value_t = 4096)]
    max_waiters: usize,
    /// Database connections.
    #[arg(long, env = "FOLDLINE_QUERY_CONNECTIONS", default_value_t = 16)]
    connections: u32,
    /// Pages allowed to read from a browser (CORS), comma-separated; the notifier's live page
    /// by default.
    #[arg(
        long,
        env = "FOLDLINE_QUERY_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8083,http://localhost:8083"
    )]
    cors_origins: Vec<String>,
    /// The DynamoDB recent-events table (`GET /products/{id}/events`).
    #[command(flatten)]
    dynamodb: foldline_recent_events::DynamoDb,
    /// The recent-events table the recent-events consumer writes.
    #[arg(
        long,
        env = "FOLDLINE_RECENT_EVENTS_TABLE",
        default_value = "RecentEvents"
    )]
    recent_events_table: String,
    /// Whether reads need a token.
    #[command(flatten)]
    reads: foldline_service::auth::ReadAccess,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("info");
    let cli = Cli::parse();
    let readers = cli.reads.authenticator()?;
    let model = ReadModel::connect_lazy(&cli.database_url, cli.connections)?;
    model.bootstrap().await?;
    let readiness = {
        let pool = model.pool.clone();
        foldline_service::ops::readiness(move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("database: {e}"))
            }
        })
    };
    let ops = Ops::new("query", env!("CARGO_PKG_VERSION"), readiness);
    let progress = foldline_query::progress::watch_progress(model.clone(), cli.topic);
    let after_wait = prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(
            "query_after_wait_seconds",
            "How long a read with ?after= waited for the read model to apply the position",
        )
        .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
    )?;
    ops.registry.register(Box::new(after_wait.clone()))?;
    let state = Arc::new(QueryState {
        model,
        progress,
        default_timeout: Duration::from_millis(cli.default_wait_ms),
        max_timeout: Duration::from_secs(60),
        waiters: Arc::new(tokio::sync::Semaphore::new(cli.max_waiters.max(1))),
        recent_events: foldline_recent_events::read::RecentEventsTable {
            client: cli.dynamodb.client().await,
            table: cli.recent_events_table,
        },
        after_wait,
    });
    let app = ops
        .instrument(foldline_service::auth::guard_reads(routes(state), readers).merge(ops.routes()))
        .layer(foldline_service::serve::read_cors(&cli.cors_origins)?)
        .layer(tower_http::catch_panic::CatchPanicLayer::new());
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    foldline_service::serve::serve(listener, app, foldline_service::shutdown::signal()).await?;
    Ok(())
}
