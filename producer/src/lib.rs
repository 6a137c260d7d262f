//! # Layout
//! The producer: REST commands in, Avro events appended to the `products` topic.
//! - [`domain`]: the product aggregate, `decide` and `evolve`, pure (given/when/then tests).
//! - [`handler`]: one write request end to end (limits, home partition, idempotency, locks,
//!   decide on a copy, append, fold), over the [`handler::Routes`] and [`log::LaneLog`]
//!   traits — unit-tested over a scripted log (`handler/tests.rs`).
//! - [`log`]: the lane log trait, its Kafka adapter and reading the tail (after fencing, and
//!   after a commit with an unknown outcome).
//! - [`writer`]: the transactional Kafka producer with group commit (the committer).
//! - [`partitioning`]: the partition policy, in one place: partition of a key, lanes,
//!   transactional ids, snapshot scopes, a request's home.
//! - [`ownership`]: which lanes this instance serves — [`ownership::state`] decides (a pure
//!   state machine, unit-tested), `Lanes` applies its steps; the consumer group and the
//!   owners' directory are adapters.
//! - [`store`]: the in-memory state: per-product slots and Idempotency-Key answers.
//! - [`snapshot`]: the snapshot format (pure); [`snapshot_store`]: snapshots in S3, checked
//!   against the log before they are loaded.
//! - [`http`]: the routes, headers, problem+json errors, and the middleware every write
//!   passes ([`http::gate`]: rate limits then authentication; [`http::forward`]: to the
//!   instance that owns the partition).
//! - [`answer`]: what a successful command answers.
//! - [`metrics`]: Prometheus metrics of the above.

pub mod answer;
pub mod domain;
pub mod handler;
pub mod http;
pub mod log;
pub mod metrics;
pub mod ownership;
pub mod partitioning;
pub mod snapshot;
pub mod snapshot_store;
pub mod store;
pub mod writer;

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
use crate::ownership::{directory::Directory, group, LaneSetup, Lanes, Mode};
use crate::partitioning::PartitionPolicy;
use crate::store::Store;

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
    /// Kafka transactional.id: a second instance with the same id fences the first. In
    /// `partitions` mode, the prefix of each partition's id (`<id>-p<N>`) and the producers'
    /// consumer group.
    #[arg(
        long,
        env = "FOLDLINE_TRANSACTIONAL_ID",
        default_value = "foldline-producer"
    )]
    pub transactional_id: String,
    /// `single`: this instance writes every partition (a batch may touch any products).
    /// `partitions`: instances with the same transactional id share the partitions through
    /// a consumer group and forward requests to the partition's owner (a batch stays within
    /// one partition).
    #[arg(
        long,
        env = "FOLDLINE_PRODUCER_OWNERSHIP",
        value_enum,
        default_value = "single"
    )]
    pub ownership: Mode,
    /// The URL other instances forward requests to (`partitions` mode); empty: `http://` and
    /// the listening address.
    #[arg(long, env = "FOLDLINE_PRODUCER_URL", default_value = "")]
    pub advertised_url: String,
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
    pub snapshot: snapshot_store::SnapshotConfig,
    /// How writers are authenticated.
    #[command(flatten)]
    pub auth: foldline_service::auth::AuthConfig,
    /// How fast each writer may write.
    #[command(flatten)]
    pub limits: http::gate::RateLimitConfig,
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

/// Fences earlier instances, loads the state from the log, then serves until `shutdown`
/// resolves. `/ready` turns green only after the log has been read to its end.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Refuses to start without a way to check tokens: writes are never open.
    let gate = http::gate::Gate::new(
        foldline_service::auth::Authenticator::new(&config.auth)?,
        &config.limits,
    );
    let cors = cors(&config.cors_origins)?;
    anyhow::ensure!(
        !config.transactional_id.trim().is_empty(),
        "FOLDLINE_TRANSACTIONAL_ID must not be empty (it names the producer's transactions and, in partitions mode, its group)"
    );
    foldline_service::kafka::ensure_topic(
        &config.log.brokers,
        &config.log.topic,
        config.partitions,
        &[("retention.ms", "-1")],
    )
    .await
    .context("creating the topic")?;
    // Registering the schema needs an admin token: the one given, or one the producer signs
    // with its own secret.
    // (A producer checking writers' tokens by JWKS alone signs with FOLDLINE_JWT_SECRET when the
    // environment has one, else needs FOLDLINE_REGISTRY_TOKEN.)
    let secret =
        (config.auth.jwt_secret.clone()).or_else(|| std::env::var("FOLDLINE_JWT_SECRET").ok());
    let registry_token =
        foldline_schemas::wire::registry_token("foldline-producer", secret.as_deref());
    let codec = Arc::new(EventCodec::with_token(
        &config.log.registry_url,
        &config.log.topic,
        registry_token.as_deref(),
    )?);
    let schema_id = codec
        .writer_schema_id()
        .await
        .context("registering the event schema in the registry")?;
    tracing::info!(schema_id, "event schema registered");

    let partition_count =
        foldline_service::kafka::topic_partition_count(&config.log.brokers, &config.log.topic)
            .await
            .context("reading the topic's partitions")?;
    let advertised_url = match config.advertised_url.trim() {
        "" => format!("http://{}", listener.local_addr()?),
        url => url.trim_end_matches('/').to_owned(),
    };
    let directory = match config.ownership {
        Mode::Single => None,
        Mode::Partitions => {
            Some(Directory::start(&config.log.brokers, &config.log.topic, &advertised_url).await?)
        }
    };
    let lanes_slot: Arc<std::sync::OnceLock<Arc<Lanes>>> = Arc::new(std::sync::OnceLock::new());
    let readiness = {
        let lanes_slot = lanes_slot.clone();
        foldline_service::ops::readiness(move || {
            let status = lanes_slot
                .get()
                .map_or(Err("starting".to_owned()), |lanes| lanes.status());
            async move { status }
        })
    };
    let ops = Ops::new("producer", env!("CARGO_PKG_VERSION"), readiness);
    let metrics = Metrics::new(&ops.registry);
    let snapshots =
        snapshot_store::SnapshotStore::connect(&config.snapshot, &config.log.topic).await;
    let store = Arc::new(Store::new(config.idempotency_ttl_secs * 1000));
    let lanes = Lanes::new(
        PartitionPolicy::new(config.ownership, partition_count),
        LaneSetup {
            brokers: config.log.brokers.clone(),
            topic: config.log.topic.clone(),
            transactional_id: config.transactional_id.clone(),
            max_batch_records: config.max_batch_records,
            store: store.clone(),
            codec: codec.clone(),
            metrics: metrics.clone(),
            snapshots,
        },
        directory,
    );
    let _ = lanes_slot.set(lanes.clone());

    // Fence, then read, then serve (see `ownership`): init_transactions fences any earlier
    // instance with the lane's transactional.id and completes or aborts the transaction it
    // left (a commit it sent before it died becomes visible only now); only after that does
    // reading the log to its end see every committed command. Read first, and a retried
    // command whose first copy was still pending would be decided again on a state without
    // it: appended twice.
    let stop_membership = tokio_util::sync::CancellationToken::new();
    let membership = match config.ownership {
        Mode::Single => {
            lanes.take_over_all_now().await?;
            None
        }
        Mode::Partitions => Some(group::join(
            lanes.clone(),
            &config.log.brokers,
            &config.log.topic,
            &config.transactional_id,
            stop_membership.clone(),
        )?),
    };
    lanes.spawn_periodic_snapshots(Duration::from_secs(
        config.snapshot.snapshot_interval_secs.max(1),
    ));
    let service = Arc::new(CommandHandler::new(
        store,
        lanes.clone(),
        metrics.clone(),
        config.low_stock_threshold,
    ));

    let forwarder = (config.ownership == Mode::Partitions).then(|| {
        http::forward::Forwarder::new(
            &advertised_url,
            config.max_body_bytes,
            Duration::from_millis(config.request_timeout_ms),
            metrics.clone(),
            lanes.directory.clone(),
        )
    });
    let app = http::routes(service, gate, forwarder)
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
    // In `partitions` mode the partitions are given up *before* the listener closes: while
    // the others take them over, requests that reach this instance still wait for the next
    // owner and are forwarded there, instead of finding a closed port.
    let leave_first = async move {
        shutdown.await;
        if let Some(thread) = membership {
            tracing::info!("stopping: giving the partitions up before the listener closes");
            stop_membership.cancel();
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    };
    foldline_service::serve::serve(listener, app, leave_first).await?;
    // In-flight requests are done. In `single` mode store the snapshots, so the next
    // instance reads almost nothing.
    if config.ownership == Mode::Single {
        for lane in lanes.lanes() {
            lanes.save_snapshot(&lane).await;
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
