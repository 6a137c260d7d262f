//! Appending to the log with group commit.
//!
//! One thread owns the transactional producer. Requests hand it their encoded events; it
//! takes everything that is waiting, appends it in *one* Kafka transaction and answers every
//! request with the partition:offset of its events. Each request's events are atomic (one
//! transaction); per-product order holds because the caller keeps at most one command per
//! product in flight. A transaction per request would cap writes at the commit rate; this way
//! the batch grows with the load.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foldline_service::kafka;
use foldline_service::retry::{self, Delays};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// A record ready to append: key, Confluent-framed Avro value and headers.
pub struct OutRecord {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

pub use foldline_service::position::Position;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The transaction was aborted: nothing was appended.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The commit may or may not have happened (the broker went away during the commit).
    /// The state is re-read from the log before writes resume.
    #[error("the broker failed during commit, the outcome is unknown: {0}")]
    OutcomeUnknown(String),
    /// Another producer with the same transactional.id took over.
    #[error("fenced by another producer instance with the same transactional.id")]
    Fenced,
}

struct AppendRequest {
    records: Vec<OutRecord>,
    reply: oneshot::Sender<Result<Vec<Position>, AppendError>>,
}

const READY: u8 = 0;
const RECOVERING: u8 = 1;
const FENCED: u8 = 2;

#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<AppendRequest>,
    health: Arc<AtomicU8>,
    /// Signalled by the committer once it reconnected after an unknown commit outcome.
    resync: Arc<tokio::sync::Notify>,
}

pub struct WriterConfig {
    pub brokers: String,
    pub topic: String,
    pub transactional_id: String,
    pub max_batch_records: usize,
    pub commit_timeout: Duration,
}

impl Writer {
    /// Starts the committer thread; fails when the broker cannot initialise transactions.
    pub fn start(config: WriterConfig, metrics: Metrics) -> Result<Writer, KafkaError> {
        let producer = create_producer(&config)?;
        let (sender, receiver) = mpsc::channel(config.max_batch_records.max(1024));
        let health = Arc::new(AtomicU8::new(READY));
        let resync = Arc::new(tokio::sync::Notify::new());
        let (thread_health, thread_resync) = (health.clone(), resync.clone());
        std::thread::Builder::new()
            .name("foldline-committer".into())
            .spawn(move || {
                commit_loop(
                    config,
                    producer,
                    receiver,
                    thread_health,
                    thread_resync,
                    metrics,
                )
            })
            .expect("spawn committer thread");
        Ok(Writer {
            sender,
            health,
            resync,
        })
    }

    pub fn status(&self) -> Result<(), AppendError> {
        match self.health.load(Ordering::Acquire) {
            READY => Ok(()),
            FENCED => Err(AppendError::Fenced),
            _ => Err(AppendError::Unavailable(
                "reconnecting to the broker".into(),
            )),
        }
    }

    /// Appends `records` atomically; answers once the broker committed them.
    pub async fn append(&self, records: Vec<OutRecord>) -> Result<Vec<Position>, AppendError> {
        self.status()?;
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(AppendRequest { records, reply })
            .await
            .map_err(|_| AppendError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| AppendError::Unavailable("the writer has stopped".into()))?
    }

    /// Marks the writer usable again after the state was re-read from the log.
    pub fn resume(&self) {
        let _ =
            self.health
                .compare_exchange(RECOVERING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Resolves when the state must be re-read from the log before writes go on.
    pub async fn resync_requested(&self) {
        self.resync.notified().await;
    }

    pub fn is_recovering(&self) -> bool {
        self.health.load(Ordering::Acquire) == RECOVERING
    }
}

fn create_producer(config: &WriterConfig) -> Result<FutureProducer, KafkaError> {
    let producer: FutureProducer = kafka::producer_config(&config.brokers, "foldline-producer")
        .set("transactional.id", &config.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("retry.backoff.ms", "5")
        .set("retry.backoff.max.ms", "100")
        .set("message.timeout.ms", "10000")
        .set("transaction.timeout.ms", "30000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    producer.init_transactions(Duration::from_secs(15))?;
    Ok(producer)
}

fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
        )
    )
}

fn commit_loop(
    config: WriterConfig,
    mut producer: FutureProducer,
    mut receiver: mpsc::Receiver<AppendRequest>,
    health: Arc<AtomicU8>,
    resync: Arc<tokio::sync::Notify>,
    metrics: Metrics,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        let mut count = batch[0].records.len();
        while count < config.max_batch_records {
            match receiver.try_recv() {
                Ok(next) => {
                    count += next.records.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        if health.load(Ordering::Acquire) == RECOVERING {
            // These requests decided on a state that may lack the batch whose outcome is
            // unknown; only after the state is re-read from the log may writes go on.
            for request in batch {
                let _ = request.reply.send(Err(AppendError::Unavailable(
                    "re-reading the log after a failed commit".into(),
                )));
            }
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = commit(&producer, &config, &batch);
        metrics.observe_commit(batch.len(), count, started.elapsed(), outcome.is_ok());
        match outcome {
            Ok(positions) => {
                for (request, positions) in batch.into_iter().zip(positions) {
                    let _ = request.reply.send(Ok(positions));
                }
            }
            Err(error) => {
                tracing::warn!(%error, requests = batch.len(), "append failed");
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
                match error {
                    AppendError::Unavailable(_) => {}
                    AppendError::Fenced => {
                        health.store(FENCED, Ordering::Release);
                        tracing::error!("fenced by another instance; this producer stops writing");
                        return;
                    }
                    AppendError::OutcomeUnknown(_) => {
                        health.store(RECOVERING, Ordering::Release);
                        // Fence, then read: the new producer's init_transactions completes or
                        // aborts the transaction whose outcome is unknown, and only then is the
                        // log re-read (by the resync loop) and writes decided again.
                        let reconnected =
                            reconnect(|| create_producer(&config), &health, std::thread::sleep);
                        let Some(reconnected) = reconnected else {
                            tracing::error!(
                                "fenced while reconnecting; this producer stops writing"
                            );
                            return;
                        };
                        producer = reconnected;
                        // notify_one keeps the signal if the resync loop is not waiting yet.
                        resync.notify_one();
                    }
                }
            }
        }
    }
    tracing::info!("committer stopped");
}

/// Calls `init` (a new producer and its `init_transactions`) until one initialises;
/// init_transactions completes or aborts whatever the old one left open, so afterwards the
/// log holds exactly the committed transactions. `None` once fenced: a newer instance owns
/// the transactional.id, and initialising again would fence it back, so this writer never
/// calls `init` again.
fn reconnect<P>(
    mut init: impl FnMut() -> Result<P, KafkaError>,
    health: &AtomicU8,
    mut sleep: impl FnMut(Duration),
) -> Option<P> {
    let mut delays = Delays::new(retry::forever(
        Duration::from_millis(200),
        Duration::from_secs(5),
    ));
    loop {
        match init() {
            Ok(producer) => {
                tracing::info!("transactional producer re-initialised");
                return Some(producer);
            }
            Err(error) if is_fenced(&error) => {
                health.store(FENCED, Ordering::Release);
                tracing::error!(%error, "fenced while reconnecting");
                return None;
            }
            Err(error) => tracing::warn!(%error, "broker still unavailable, retrying"),
        }
        sleep(delays.next_delay());
    }
}

fn commit(
    producer: &FutureProducer,
    config: &WriterConfig,
    batch: &[AppendRequest],
) -> Result<Vec<Vec<Position>>, AppendError> {
    let classify = |error: KafkaError| -> AppendError {
        if is_fenced(&error) {
            AppendError::Fenced
        } else {
            AppendError::OutcomeUnknown(error.to_string())
        }
    };
    producer.begin_transaction().map_err(classify)?;
    let mut deliveries = Vec::with_capacity(batch.len());
    for request in batch {
        let mut futures = Vec::with_capacity(request.records.len());
        for record in &request.records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let future = producer
                .send_result(
                    FutureRecord::to(&config.topic)
                        .key(&record.key)
                        .payload(&record.value)
                        .headers(headers),
                )
                .map_err(|(error, _)| error);
            match future {
                Ok(f) => futures.push(f),
                Err(error) if is_fenced(&error) => return Err(AppendError::Fenced),
                Err(error) => return Err(abort(producer, config, error.to_string())),
            }
        }
        deliveries.push(futures);
    }
    // Wait for every delivery report *before* committing, so that rust-rdkafka's flush inside
    // the commit finds nothing in flight (see `await_reports_released`). A failed delivery
    // aborts the transaction, so nothing of the batch becomes visible.
    let mut positions = Vec::with_capacity(deliveries.len());
    for futures in deliveries {
        let mut request_positions = Vec::with_capacity(futures.len());
        for future in futures {
            match futures::executor::block_on(future) {
                Ok(Ok(delivery)) => match delivered_at(delivery.partition, delivery.offset) {
                    Ok(position) => request_positions.push(position),
                    Err(reason) => return Err(AppendError::OutcomeUnknown(reason)),
                },
                // A newer instance owns the transactional.id (nisshi reports this per record,
                // as an abortable error): stop writing, whatever the abort would say.
                Ok(Err((error, _))) if is_fenced(&error) => return Err(AppendError::Fenced),
                Ok(Err((error, _))) => return Err(abort(producer, config, error.to_string())),
                Err(_) => return Err(abort(producer, config, "delivery cancelled".into())),
            }
        }
        positions.push(request_positions);
    }
    kafka::await_reports_released(producer);
    if let Err(error) = producer.commit_transaction(config.commit_timeout) {
        let requires_abort = matches!(&error, KafkaError::Transaction(e) if e.txn_requires_abort());
        if requires_abort {
            return Err(abort(producer, config, error.to_string()));
        }
        return Err(classify(error));
    }
    Ok(positions)
}

/// Where a delivered record went. A delivery without an offset (seen on nisshi right after a
/// broker restart, when librdkafka resent a batch the broker already had: it answered the
/// duplicate with offset -1) cannot be answered with its position, and the transaction's
/// fate is unknown (the restarted broker may have forgotten it, and its records then stay
/// visible whatever an abort says): the outcome is unknown, so the log is re-read before
/// writes go on and a client's retry with its Idempotency-Key finds its first answer there.
fn delivered_at(partition: i32, offset: i64) -> Result<Position, String> {
    if offset < 0 {
        tracing::warn!(
            partition,
            offset,
            "the broker acknowledged a record without its offset; aborting the transaction"
        );
        return Err(format!(
            "the broker acknowledged a record in partition {partition} without its offset"
        ));
    }
    Ok(Position { partition, offset })
}

fn abort(producer: &FutureProducer, config: &WriterConfig, reason: String) -> AppendError {
    // A newer instance took over: say so, never re-initialise (that would fence it back).
    if let Some((code, _)) = producer.client().fatal_error() {
        if matches!(
            code,
            RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
        ) {
            return AppendError::Fenced;
        }
    }
    match producer.abort_transaction(config.commit_timeout) {
        // An abort is only as good as the broker's memory of the transaction: nisshi forgets
        // open transactions when it restarts, and what they had written stays visible (the
        // chaos run doubled commands that way). So an aborted transaction still counts as an
        // unknown outcome: the log is re-read before writes go on.
        Ok(()) => AppendError::OutcomeUnknown(format!("{reason}; aborted")),
        Err(error) if is_fenced(&error) => AppendError::Fenced,
        Err(error) => AppendError::OutcomeUnknown(format!("{reason}; abort failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_without_an_offset_is_not_an_answer() {
        assert_eq!(
            delivered_at(1, 41),
            Ok(Position {
                partition: 1,
                offset: 41
            })
        );
        assert!(delivered_at(1, -1).is_err());
    }

    #[test]
    fn a_writer_fenced_while_reconnecting_never_initialises_again() {
        let health = AtomicU8::new(RECOVERING);
        let mut attempts = 0;
        let outcome = reconnect(
            || {
                attempts += 1;
                match attempts {
                    1 => Err(KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)),
                    2 => Err(KafkaError::Global(RDKafkaErrorCode::ProducerFenced)),
                    _ => Ok("a producer that would fence the newer instance back"),
                }
            },
            &health,
            |_| {},
        );
        assert_eq!(outcome, None);
        assert_eq!(attempts, 2, "init called again after being fenced");
        assert_eq!(health.load(Ordering::Acquire), FENCED);
    }

    #[test]
    fn a_writer_reconnecting_through_an_outage_backs_off_and_returns_the_new_producer() {
        let health = AtomicU8::new(RECOVERING);
        let mut attempts = 0;
        let mut slept = Vec::new();
        let outcome = reconnect(
            || {
                attempts += 1;
                if attempts < 6 {
                    Err(KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure))
                } else {
                    Ok(attempts)
                }
            },
            &health,
            |delay| slept.push(delay.as_millis()),
        );
        assert_eq!(outcome, Some(6));
        // Doubling from 200 ms, each with up to as much again of jitter.
        assert_eq!(slept.len(), 5);
        for (i, ms) in slept.iter().enumerate() {
            let base = 200u128 << i;
            assert!((base..=2 * base).contains(ms), "{slept:?}");
        }
        assert_eq!(health.load(Ordering::Acquire), RECOVERING);
    }
}
