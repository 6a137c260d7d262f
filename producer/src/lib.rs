//! # Layout
//! The producer: REST commands in, Avro events appended to the `products` topic.
//! - [`domain`]: the product aggregate, `decide` and `evolve`, pure (given/when/then tests).
//! - [`store`]: per-product state and idempotency answers, folded from the log.
//! - [`catch_up`]: reading the topic from the store's offsets to its end (start-up, and resync
//!   after a failed commit).
//! - [`snapshot`]: the store saved to S3 and loaded at start-up, so a start reads only the tail.
//! - [`writer`]: the transactional Kafka producer with group commit.
//! - [`handler`]: one write request end to end (lock, decide, encode, append, fold).
//! - [`gate`]: the middleware every write passes: rate limits, then authentication.
//! - [`http`]: the routes, headers and problem+json errors.
//! - [`metrics`]: Prometheus metrics of the above.

pub mod catch_up;
pub mod domain;
pub mod gate;
pub mod handler;
pub mod http;
pub mod metrics;
pub mod snapshot;
pub mod store;
pub mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use clap::Parser;
use foldline_schemas::wire::EventCodec;
use foldline_service::ops::Ops;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::handler::CommandHandler;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::writer::{Writer, WriterConfig};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "foldline-producer",
    version,
    about = "Foldline write API: commands in, Avro events out"
)]
pub struct Config {
    /// Brokers, registry and the topic the events are appended to.
    #[command(flatten)]
    pub log: foldline_service::config::EventLog,
    /// Partitions of the topic when the producer has to create it.
    #[arg(long, env = "FOLDLINE_TOPIC_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,
    /// Address to listen on.
    #[arg(
        long,
        env = "FOLDLINE_PRODUCER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: String,
    /// Kafka transactional.id: a second instance with the same id fences the first.
    #[arg(
        long,
        env = "FOLDLINE_TRANSACTIONAL_ID",
        default_value = "foldline-producer"
    )]
    pub transactional_id: String,
    /// A StockAdjusted that takes stock from >= this to below it adds a LowStockWarning.
    #[arg(long, env = "LOW_STOCK_THRESHOLD", default_value_t = 5)]
    pub low_stock_threshold: i64,
    /// Largest request body, in bytes (413 above).
    #[arg(long, env = "FOLDLINE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Requests taking longer are answered 503.
    #[arg(long, env = "FOLDLINE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Most records appended in one group-commit transaction.
    #[arg(long, env = "FOLDLINE_MAX_BATCH_RECORDS", default_value_t = 5_000)]
    pub max_batch_records: usize,
    /// How long an Idempotency-Key is remembered after its answer, in seconds (also when the
    /// keys are rebuilt from the log: older keys are not loaded).
    #[arg(long, env = "FOLDLINE_IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 60 * 60)]
    pub idempotency_ttl_secs: i64,
    /// Where the state is snapshotted.
    #[command(flatten)]
    pub snapshot: snapshot::SnapshotConfig,
    /// How writers are authenticated.
    #[command(flatten)]
    pub auth: foldline_service::auth::AuthConfig,
    /// How fast each writer may write.
    #[command(flatten)]
    pub limits: gate::RateLimitConfig,
    /// Browser origins allowed to call the API (CORS), comma-separated; the live page's
    /// origin is in the default.
    #[arg(
        long,
        env = "FOLDLINE_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8083,http://localhost:8083"
    )]
    pub cors_origins: Vec<String>,
}

impl Config {
    /// Defaults of the local stack, for tests that change a field or two.
    pub fn local() -> Config {
        Config::parse_from(["foldline-producer"])
    }
}

/// A start that read at least this many events from the log snapshots at once.
const SNAPSHOT_AFTER_READING: u64 = 10_000;

/// Fences earlier instances, loads the state from the log, then serves until `shutdown`
/// resolves. `/ready` turns green only after the log has been read to its end.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Refuses to start without a way to check tokens: writes are never open.
    let gate = gate::Gate::new(
        foldline_service::auth::Authenticator::new(&config.auth)?,
        &config.limits,
    );
    let cors = cors(&config.cors_origins)?;
    foldline_service::kafka::ensure_topic(
        &config.log.brokers,
        &config.log.topic,
        config.partitions,
        &[("retention.ms", "-1")],
    )
    .await
    .context("creating the topic")?;
    let codec = Arc::new(EventCodec::new(
        &config.log.registry_url,
        &config.log.topic,
    )?);
    let schema_id = codec
        .writer_schema_id()
        .await
        .context("registering the event schema in the registry")?;
    tracing::info!(schema_id, "event schema registered");

    let loaded = Arc::new(AtomicBool::new(false));
    let writer_slot: Arc<std::sync::OnceLock<Writer>> = Arc::new(std::sync::OnceLock::new());
    let readiness = {
        let loaded = loaded.clone();
        let writer_slot = writer_slot.clone();
        foldline_service::ops::readiness(move || {
            let loaded = loaded.load(Ordering::Acquire);
            let writer = writer_slot.get().map(Writer::status);
            async move {
                match (loaded, writer) {
                    (false, _) | (_, None) => Err("reading the log".to_owned()),
                    (true, Some(Err(e))) => Err(e.to_string()),
                    (true, Some(Ok(()))) => Ok(()),
                }
            }
        })
    };
    let ops = Ops::new("producer", env!("CARGO_PKG_VERSION"), readiness);
    let metrics = Metrics::new(&ops.registry);

    // Fence, then read, then serve. init_transactions fences any earlier instance with this
    // transactional.id and completes or aborts the transaction it left (a commit it sent
    // before it died becomes visible only now); only after that does reading the log to its
    // end see every committed command. Read first, and a retried command whose first copy
    // was still pending would be decided again on a state without it: appended twice.
    let writer = Writer::start(
        WriterConfig {
            brokers: config.log.brokers.clone(),
            topic: config.log.topic.clone(),
            transactional_id: config.transactional_id.clone(),
            max_batch_records: config.max_batch_records,
            commit_timeout: Duration::from_secs(10),
        },
        metrics.clone(),
    )
    .context("initialising the transactional producer")?;
    let _ = writer_slot.set(writer.clone());
    tracing::info!(transactional_id = %config.transactional_id, "transactional producer initialised; earlier instances fenced");

    let store = Arc::new(Store::new(config.idempotency_ttl_secs * 1000));
    let started = std::time::Instant::now();
    let snapshots = snapshot::SnapshotStore::connect(&config.snapshot, &config.log.topic).await;
    if let Some(snapshots) = &snapshots {
        let outcome = snapshot::restore(
            snapshots,
            &store,
            &config.log.brokers,
            &config.log.topic,
            &codec,
        )
        .await;
        tracing::info!("{outcome}");
    }
    let events = catch_up::catch_up(
        &config.log.brokers,
        &config.log.topic,
        &store,
        &codec,
        &metrics,
    )
    .await
    .context("reading the log")?;
    tracing::info!(events, products = store.product_count(), elapsed = ?started.elapsed(), "state loaded (snapshot, if any, plus the log after it)");
    if let Some(snapshots) = &snapshots {
        snapshot::spawn_periodic(
            snapshots.clone(),
            store.clone(),
            config.log.topic.clone(),
            Duration::from_secs(config.snapshot.snapshot_interval_secs.max(1)),
            events >= SNAPSHOT_AFTER_READING,
            metrics.clone(),
        );
    }
    let metrics_at_exit = metrics.clone();
    let service = Arc::new(CommandHandler::new(
        store.clone(),
        writer,
        codec,
        metrics,
        config.low_stock_threshold,
        config.log.brokers.clone(),
        config.log.topic.clone(),
    ));
    service.start_resync_loop();
    loaded.store(true, Ordering::Release);

    let app = http::routes(service, gate)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(config.request_timeout_ms),
        ))
        .layer(CatchPanicLayer::new())
        .merge(ops.routes())
        // Outermost: preflight requests are answered before the gate asks for a token.
        .layer(cors);
    let app = ops.instrument(app);
    foldline_service::serve::serve(listener, app, shutdown).await?;
    // In-flight requests are done: the last snapshot makes the next start read almost nothing.
    if let Some(snapshots) = &snapshots {
        if let Err(error) =
            snapshot::save_now(snapshots, &store, &config.log.topic, &metrics_at_exit).await
        {
            tracing::warn!(error = %format!("{error:#}"), "no snapshot at shutdown");
        }
    }
    Ok(())
}

/// CORS for the allowed origins: the write methods, the headers the API reads, and the ones a
/// browser script needs to see in answers.
fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    let origins = origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|o| HeaderValue::from_str(o.trim()))
        .collect::<Result<Vec<_>, _>>()
        .context("FOLDLINE_CORS_ORIGINS")?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-correlation-id"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([header::ETAG, header::LOCATION, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600)))
}
