//! Plain rdkafka clients for the checks: a transactional producer that reports every
//! delivery, and readers that read a topic to its end at either isolation level. Nothing
//! of Foldline's own write or read path is used, so a failure is the broker's.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

pub use foldline_service::kafka::ReaderContext;

/// How long any single client call may take before the check fails.
pub const CALL: Duration = Duration::from_secs(20);

pub fn config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "foldline-conformance")
        .set("log_level", "3")
        // A broker killed by a check is found again quickly.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    config
}

/// Records the outcome of every delivery, so a check knows its records reached the broker.
#[derive(Default)]
pub struct Deliveries {
    failed: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.lock().unwrap().push(error.to_string());
        }
    }
}

pub struct TxProducer {
    pub inner: ThreadedProducer<Deliveries>,
    pub transactional_id: String,
}

impl TxProducer {
    /// A transactional producer, initialised (which fences any earlier instance of the
    /// same `transactional.id`).
    pub fn start(brokers: &str, transactional_id: &str) -> anyhow::Result<TxProducer> {
        let inner: ThreadedProducer<Deliveries> = config(brokers)
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "15000")
            .set("transaction.timeout.ms", "30000")
            .create_with_context(Deliveries::default())?;
        inner
            .init_transactions(CALL)
            .with_context(|| format!("init_transactions({transactional_id})"))?;
        Ok(TxProducer {
            inner,
            transactional_id: transactional_id.to_owned(),
        })
    }

    pub fn begin(&self) -> anyhow::Result<()> {
        Ok(self.inner.begin_transaction()?)
    }

    pub fn send(&self, topic: &str, partition: i32, value: &str) -> anyhow::Result<()> {
        send(&self.inner, topic, partition, value)
    }

    /// Waits until every record sent so far is acknowledged by the broker.
    pub fn delivered(&self) -> anyhow::Result<()> {
        delivered(&self.inner)
    }

    pub fn commit(&self) -> Result<(), KafkaError> {
        self.inner.commit_transaction(CALL)
    }

    pub fn abort(&self) -> anyhow::Result<()> {
        Ok(self.inner.abort_transaction(CALL)?)
    }
}

/// Sends one record to `partition`, waiting while the client's queue is full.
pub fn send(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    partition: i32,
    value: &str,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::<(), str>::to(topic)
        .partition(partition)
        .payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((error, _)) => bail!("send to {topic}/{partition}: {error}"),
        }
    }
}

/// Flushes `producer` and fails if any delivery failed.
pub fn delivered(producer: &ThreadedProducer<Deliveries>) -> anyhow::Result<()> {
    producer
        .flush(CALL)
        .context("records not acknowledged in time")?;
    let failed = std::mem::take(&mut *producer.context().failed.lock().unwrap());
    if let Some(first) = failed.first() {
        bail!("{} deliveries failed, the first: {first}", failed.len());
    }
    Ok(())
}

/// An idempotent producer outside any transaction.
pub fn idempotent_producer(brokers: &str) -> anyhow::Result<ThreadedProducer<Deliveries>> {
    Ok(config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "15000")
        .create_with_context(Deliveries::default())?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

impl Isolation {
    fn name(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// One record as a reader saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
}

/// A consumer that `assign()`s (no group), at `isolation`, reporting partition ends.
pub fn reader(brokers: &str, isolation: Isolation) -> anyhow::Result<BaseConsumer<ReaderContext>> {
    Ok(config(brokers)
        .set("group.id", foldline_testkit::unique("conformance-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation.name())
        .set("fetch.wait.max.ms", "100")
        .create_with_context(ReaderContext)?)
}

/// Every record of `topic`'s partitions `0..partitions` from the beginning to the end of
/// each (the last stable offset under read_committed), with each partition's position
/// after its end.
pub fn read_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    isolation: Isolation,
) -> anyhow::Result<(Vec<Seen>, BTreeMap<i32, i64>)> {
    let consumer = reader(brokers, isolation)?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut seen = Vec::new();
    let mut ends = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ends.len() < partitions as usize {
        if Instant::now() > deadline {
            bail!(
                "reading {topic} ({}) did not reach the end of every partition in 60 s ({} records, ends {ends:?})",
                isolation.name(),
                seen.len()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                let position = consumer
                    .position()?
                    .find_partition(topic, partition)
                    .and_then(|p| p.offset().to_raw())
                    .unwrap_or(-1);
                ends.insert(partition, position);
            }
            Some(Err(error)) => bail!("reading {topic}: {error}"),
            Some(Ok(message)) => {
                ends.remove(&message.partition());
                seen.push(Seen {
                    partition: message.partition(),
                    offset: message.offset(),
                    value: String::from_utf8_lossy(message.payload().unwrap_or_default())
                        .into_owned(),
                });
            }
        }
    }
    Ok((seen, ends))
}

/// The values of `seen`, in the order read.
pub fn values(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| s.value.clone()).collect()
}
