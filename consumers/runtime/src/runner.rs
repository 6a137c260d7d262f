//! A consumer binary's whole life: settings, the Kafka consumer, the ops routes, the
//! [`Pipeline`] until a stop signal.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldline_schemas::wire::EventCodec;
use foldline_service::config::EventLog;
use foldline_service::kafka;
use foldline_service::ops::{Ops, ReadinessCheck};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use tokio::net::TcpListener;

use crate::context::RuntimeContext;
use crate::dead_letter::DeadLetterQueue;
use crate::error::RunError;
use crate::pipeline::{Limits, Pipeline};
use crate::source::KafkaSource;
use crate::{RuntimeMetrics, Sink};

/// Settings every consumer shares; a consumer binary flattens them into its own config.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeConfig {
    /// Brokers, registry and the topic to consume.
    #[command(flatten)]
    pub log: EventLog,
    /// Where undecodable records go.
    #[arg(long, env = "FOLDLINE_DLQ_TOPIC", default_value = "products.dlq")]
    pub dead_letter_topic: String,
    /// Most records per batch.
    #[arg(long, env = "FOLDLINE_BATCH_RECORDS", default_value_t = 5000)]
    pub max_batch_records: usize,
    /// Most value bytes per batch.
    #[arg(long, env = "FOLDLINE_BATCH_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_batch_bytes: usize,
    /// Longest a batch waits for more records after its first one, in ms.
    #[arg(long, env = "FOLDLINE_BATCH_WAIT_MS", default_value_t = 20)]
    pub max_batch_wait_ms: u64,
    /// A batch is written before its wait ends when no record came for this long, in ms (the
    /// log has no more for now: a trickle is written at once, a flood still fills batches).
    #[arg(long, env = "FOLDLINE_BATCH_QUIET_MS", default_value_t = 2)]
    pub batch_quiet_ms: u64,
    /// After this long without records the sink is asked to flush what it holds back, in ms.
    #[arg(long, env = "FOLDLINE_IDLE_FLUSH_MS", default_value_t = 1000)]
    pub idle_flush_ms: u64,
}

/// What the runtime needs besides the shared settings.
pub struct Consumer<S> {
    /// The binary's name, for logs, `/health` and the Kafka client id.
    pub name: &'static str,
    pub version: &'static str,
    pub group_id: String,
    pub config: RuntimeConfig,
    pub sink: S,
}

type Kafka = StreamConsumer<RuntimeContext>;

/// What a consumer binary's `main` ends with: binds `listen` for the ops routes and runs the
/// consumer until SIGINT or SIGTERM (finishing and flushing the batch in flight).
pub async fn run_until_signal<S: Sink>(
    consumer: Consumer<S>,
    listen: &str,
) -> Result<(), RunError> {
    let listener = TcpListener::bind(listen).await.map_err(RunError::Listen)?;
    run(consumer, listener, foldline_service::shutdown::signal()).await
}

/// Serves `/health`, `/ready`, `/metrics` on `listener` and runs the consumer until
/// `shutdown` resolves; the batch in flight is finished first.
pub async fn run<S: Sink>(
    consumer: Consumer<S>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let joined = Arc::new(AtomicBool::new(false));
    let generation = Arc::new(AtomicU64::new(0));
    let healthy = Arc::new(AtomicBool::new(true));
    let ops = Ops::new(
        consumer.name,
        consumer.version,
        readiness(joined.clone(), healthy.clone()),
    );
    let metrics = RuntimeMetrics::new(&ops.registry);
    let config = &consumer.config;
    consumer.sink.register_metrics(&ops.registry);
    let kafka: Kafka = kafka::base_config(&config.log.brokers, consumer.name)
        .set("group.id", &consumer.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000")
        // A crashed instance's partitions move to the others after this long.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        // A sink outage stops polling; after this long the group moves our partitions away
        // (harmless: sinks check their stored offsets) and we join again once it is back.
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", kafka::FOLLOW_FETCH_WAIT_MS)
        .create_with_context(RuntimeContext {
            topic: config.log.topic.clone(),
            metrics: metrics.clone(),
            joined: joined.clone(),
            generation: generation.clone(),
        })?;
    kafka.subscribe(&[&config.log.topic])?;
    let pipeline = Pipeline::new(
        KafkaSource {
            consumer: kafka,
            brokers: config.log.brokers.clone(),
            topic: config.log.topic.clone(),
            generation,
            paused: Mutex::default(),
        },
        EventCodec::new(&config.log.registry_url, &config.log.topic)?,
        DeadLetterQueue::new(
            &config.log.brokers,
            &config.log.topic,
            &config.dead_letter_topic,
            &consumer.group_id,
        )?,
        metrics,
        healthy,
        Limits {
            max_records: config.max_batch_records,
            max_bytes: config.max_batch_bytes,
            max_wait: Duration::from_millis(config.max_batch_wait_ms),
            quiet_gap: Duration::from_millis(config.batch_quiet_ms),
            idle_flush: Duration::from_millis(config.idle_flush_ms),
        },
    );
    // Operators' requests about parked records, answered by the consume loop between batches.
    let (parking_tx, parking_rx) = tokio::sync::mpsc::channel(16);
    let pipeline = pipeline.with_parking_requests(parking_rx);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ops_server = tokio::spawn(foldline_service::serve::serve(
        listener,
        ops.instrument(ops.routes().merge(crate::parking::routes(parking_tx))),
        {
            let mut stop = stop_rx.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        },
    ));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = pipeline.run(consumer.sink, stop_rx).await;
    ops_server.abort();
    Ok(result?)
}

fn readiness(joined: Arc<AtomicBool>, healthy: Arc<AtomicBool>) -> ReadinessCheck {
    foldline_service::ops::readiness(move || {
        let joined = joined.load(Ordering::Acquire);
        let healthy = healthy.load(Ordering::Acquire);
        async move {
            match (joined, healthy) {
                (false, _) => Err("waiting for the consumer group to assign partitions".to_owned()),
                (_, false) => Err("the sink is unavailable; retrying".to_owned()),
                _ => Ok(()),
            }
        }
    })
}
