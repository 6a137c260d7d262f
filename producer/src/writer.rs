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

use foldline_service::retry::{self, Delays};
use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use kafka::{create_producer, is_fenced, KafkaLog};

mod kafka;

/// A record ready to append: partition (the key's, see [`crate::partitioning`]), key,
/// Confluent-framed Avro value and headers.
pub struct OutRecord {
    pub partition: i32,
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
    /// When the request was handed to the committer: its wait for a commit cycle is a stage
    /// of the write's latency (`producer_commit_wait_seconds`).
    queued_at: std::time::Instant,
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
        let max_batch_records = config.max_batch_records;
        Ok(Writer::over(
            KafkaLog { config, producer },
            max_batch_records,
            metrics,
        ))
    }

    /// Starts the committer thread over `log`.
    fn over(log: impl TransactionalLog, max_batch_records: usize, metrics: Metrics) -> Writer {
        let (sender, receiver) = mpsc::channel(max_batch_records.max(1024));
        let health = Arc::new(AtomicU8::new(READY));
        let resync = Arc::new(tokio::sync::Notify::new());
        let committer = Committer {
            max_batch_records,
            health: health.clone(),
            resync: resync.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name("foldline-committer".into())
            .spawn(move || committer.run(log, receiver))
            .expect("spawn committer thread");
        Writer {
            sender,
            health,
            resync,
        }
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
            .send(AppendRequest {
                records,
                reply,
                queued_at: std::time::Instant::now(),
            })
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

/// What the committer thread needs of the log, so its state machine (group commit, fenced,
/// outcome unknown, recovering) is tested without a broker; [`KafkaLog`] is the real one.
trait TransactionalLog: Send + 'static {
    /// Appends every request's records in one transaction; each request's positions.
    fn commit(&mut self, batch: &[AppendRequest]) -> Result<Vec<Vec<Position>>, AppendError>;
    /// Fence, then read: a new producer whose `init_transactions` completes or aborts whatever
    /// the old one left open. False once fenced (a newer instance owns the id).
    fn reinitialise(&mut self, health: &AtomicU8) -> bool;
}

struct Committer {
    max_batch_records: usize,
    health: Arc<AtomicU8>,
    resync: Arc<tokio::sync::Notify>,
    metrics: Metrics,
}

impl Committer {
    fn run(self, mut log: impl TransactionalLog, mut receiver: mpsc::Receiver<AppendRequest>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut batch = vec![first];
            let mut count = batch[0].records.len();
            while count < self.max_batch_records {
                match receiver.try_recv() {
                    Ok(next) => {
                        count += next.records.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            if self.health.load(Ordering::Acquire) == RECOVERING {
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
            for request in &batch {
                self.metrics
                    .commit_wait
                    .observe((started - request.queued_at).as_secs_f64());
            }
            let outcome = log.commit(&batch);
            self.metrics
                .observe_commit(batch.len(), count, started.elapsed(), outcome.is_ok());
            match outcome {
                Ok(positions) => {
                    for (request, positions) in batch.into_iter().zip(positions) {
                        let _ = request.reply.send(Ok(positions));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, requests = batch.len(), "append failed");
                    // The writer's state changes before anyone is answered, so a client that
                    // retries at once already sees it (and never a queue nobody reads).
                    match error {
                        AppendError::Unavailable(_) => {}
                        AppendError::Fenced => self.health.store(FENCED, Ordering::Release),
                        AppendError::OutcomeUnknown(_) => {
                            self.health.store(RECOVERING, Ordering::Release)
                        }
                    }
                    for request in batch {
                        let _ = request.reply.send(Err(error.clone()));
                    }
                    match error {
                        AppendError::Unavailable(_) => {}
                        AppendError::Fenced => {
                            tracing::error!(
                                "fenced by another instance; this producer stops writing"
                            );
                            return;
                        }
                        AppendError::OutcomeUnknown(_) => {
                            // Fence, then read: the new producer's init_transactions completes
                            // or aborts the transaction whose outcome is unknown, and only then
                            // is the log re-read (by the resync loop) and writes decided again.
                            if !log.reinitialise(&self.health) {
                                tracing::error!(
                                    "fenced while reconnecting; this producer stops writing"
                                );
                                return;
                            }
                            // notify_one keeps the signal if the resync loop is not waiting yet.
                            self.resync.notify_one();
                        }
                    }
                }
            }
        }
        tracing::info!("committer stopped");
    }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use rdkafka::error::RDKafkaErrorCode;

    use super::kafka::delivered_at;
    use super::*;

    /// A log that answers commits from a script (`Ok` = commit at increasing offsets) and
    /// records each batch's request count.
    #[derive(Clone, Default)]
    struct ScriptedLog {
        answers: Arc<Mutex<VecDeque<Option<AppendError>>>>,
        batches: Arc<Mutex<Vec<usize>>>,
        reinitialised: Arc<Mutex<usize>>,
        fenced_on_reinit: bool,
        /// While true the committer waits inside `commit`, so requests pile up.
        hold: Arc<std::sync::atomic::AtomicBool>,
    }

    impl TransactionalLog for ScriptedLog {
        fn commit(&mut self, batch: &[AppendRequest]) -> Result<Vec<Vec<Position>>, AppendError> {
            while self.hold.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut batches = self.batches.lock().unwrap();
            batches.push(batch.len());
            if let Some(Some(error)) = self.answers.lock().unwrap().pop_front() {
                return Err(error);
            }
            let mut offset = 100 * batches.len() as i64;
            Ok(batch
                .iter()
                .map(|request| {
                    request
                        .records
                        .iter()
                        .map(|_| {
                            offset += 1;
                            Position {
                                partition: 0,
                                offset,
                            }
                        })
                        .collect()
                })
                .collect())
        }

        fn reinitialise(&mut self, health: &AtomicU8) -> bool {
            *self.reinitialised.lock().unwrap() += 1;
            if self.fenced_on_reinit {
                health.store(FENCED, Ordering::Release);
                return false;
            }
            true
        }
    }

    fn records(n: usize) -> Vec<OutRecord> {
        (0..n)
            .map(|i| OutRecord {
                partition: 0,
                key: format!("p-{i}"),
                value: vec![0],
                headers: Vec::new(),
            })
            .collect()
    }

    fn writer(log: &ScriptedLog) -> Writer {
        let metrics = Metrics::new(&prometheus::Registry::new());
        Writer::over(log.clone(), 5000, metrics)
    }

    #[tokio::test]
    async fn waiting_requests_are_committed_together_and_each_gets_its_own_positions() {
        let log = ScriptedLog::default();
        let writer = writer(&log);
        log.hold.store(true, Ordering::Release);
        // The first request occupies the committer; the next three wait and go in one batch.
        let first = tokio::spawn({
            let w = writer.clone();
            async move { w.append(records(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting: Vec<_> = (1..=3)
            .map(|n| {
                let w = writer.clone();
                tokio::spawn(async move { w.append(records(n)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.hold.store(false, Ordering::Release);
        assert_eq!(first.await.unwrap().unwrap().len(), 1);
        let mut answers = Vec::new();
        for request in waiting {
            answers.push(request.await.unwrap().unwrap());
        }
        assert_eq!(
            *log.batches.lock().unwrap(),
            [1, 3],
            "one transaction for the three"
        );
        assert_eq!(answers.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2, 3]);
        let offsets: Vec<i64> = answers.iter().flatten().map(|p| p.offset).collect();
        assert_eq!(
            offsets,
            [201, 202, 203, 204, 205, 206],
            "no position answered twice"
        );
    }

    #[tokio::test]
    async fn an_unknown_outcome_refuses_writes_until_the_log_is_read_again() {
        let log = ScriptedLog::default();
        log.answers
            .lock()
            .unwrap()
            .push_back(Some(AppendError::OutcomeUnknown("commit timed out".into())));
        let writer = writer(&log);
        let failed = writer.append(records(1)).await;
        assert!(
            matches!(failed, Err(AppendError::OutcomeUnknown(_))),
            "{failed:?}"
        );
        // The committer fenced (re-initialised) and asks for the log to be read again.
        tokio::time::timeout(Duration::from_secs(5), writer.resync_requested())
            .await
            .expect("a resync is requested");
        assert_eq!(*log.reinitialised.lock().unwrap(), 1);
        assert!(writer.is_recovering());
        assert!(matches!(
            writer.append(records(1)).await,
            Err(AppendError::Unavailable(_))
        ));
        assert_eq!(
            log.batches.lock().unwrap().len(),
            1,
            "nothing committed while recovering"
        );
        // The service re-read the log: writes go on.
        writer.resume();
        assert!(writer.append(records(1)).await.is_ok());
        assert_eq!(log.batches.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_fenced_writer_answers_fenced_for_ever_and_commits_nothing_more() {
        let log = ScriptedLog::default();
        log.answers
            .lock()
            .unwrap()
            .push_back(Some(AppendError::Fenced));
        let writer = writer(&log);
        assert!(matches!(
            writer.append(records(1)).await,
            Err(AppendError::Fenced)
        ));
        for _ in 0..3 {
            assert!(matches!(
                writer.append(records(1)).await,
                Err(AppendError::Fenced)
            ));
        }
        assert!(matches!(writer.status(), Err(AppendError::Fenced)));
        assert_eq!(log.batches.lock().unwrap().len(), 1);
        assert_eq!(
            *log.reinitialised.lock().unwrap(),
            0,
            "never re-initialises"
        );
    }

    #[tokio::test]
    async fn a_writer_fenced_while_recovering_stops() {
        let log = ScriptedLog {
            fenced_on_reinit: true,
            ..ScriptedLog::default()
        };
        log.answers
            .lock()
            .unwrap()
            .push_back(Some(AppendError::OutcomeUnknown("broker gone".into())));
        let writer = writer(&log);
        assert!(writer.append(records(1)).await.is_err());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !matches!(writer.status(), Err(AppendError::Fenced)) {
            assert!(std::time::Instant::now() < deadline, "not fenced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(
            writer.append(records(1)).await,
            Err(AppendError::Fenced)
        ));
    }

    #[tokio::test]
    async fn an_aborted_transaction_answers_unavailable_and_writes_go_on() {
        let log = ScriptedLog::default();
        log.answers
            .lock()
            .unwrap()
            .push_back(Some(AppendError::Unavailable("broker down".into())));
        let writer = writer(&log);
        assert!(matches!(
            writer.append(records(1)).await,
            Err(AppendError::Unavailable(_))
        ));
        assert!(writer.append(records(2)).await.is_ok());
        assert_eq!(*log.reinitialised.lock().unwrap(), 0);
    }

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
