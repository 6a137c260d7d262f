//! Kafka client settings shared by producers and consumers.
//!
//! The local broker (nisshi; tansu before it) and Redpanda both speak the Kafka API, but the
//! local brokers have answered ListOffsets with wrong high watermarks. Code therefore decides
//! "caught up" only from end-of-partition events (`enable.partition.eof`), which every broker
//! gets right.

use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::position::Offsets;

/// Settings common to every client: bootstrap servers and a client id.
pub fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("socket.keepalive.enable", "true")
        .set("log_level", "4");
    config
}

/// A producer's settings: keys map to partitions the way Java clients and Redpanda do.
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = base_config(brokers, client_id);
    config.set("partitioner", "murmur2_random");
    config
}

/// `fetch.wait.max.ms` of a consumer that follows the log for ever (the consumer runtime, the
/// notifier's feed). Brokers long-poll (Kafka, Redpanda, and the local log with its patch:
/// `fetch_long_polls_until_data_or_max_wait` in `foldline-conformance` checks it): a fetch is
/// answered as soon as records are committed, so a long wait adds no latency, and an idle
/// consumer costs the broker one request a second instead of fifty. Readers that read to the
/// end once keep the short wait of [`assign_consumer_config`]: their last, empty fetch is what
/// tells them they reached the end, and it lasts the whole wait.
pub const FOLLOW_FETCH_WAIT_MS: &str = "1000";

/// The client context of readers that ask for end-of-partition events
/// (`enable.partition.eof`). librdkafka hands each such event to the context's error callback
/// before delivering it, and rdkafka's default context logs every error at ERROR: a green test
/// run printed thousands of `PartitionEOF (Broker: No more messages)` lines. Reaching the end
/// of a partition is what these readers wait for, so it is logged at TRACE, and every other
/// error still at ERROR.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_end_of_partition(&error) {
            tracing::trace!(reason, "end of partition");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Whether `error` is the end-of-partition event, as a message error or a client error.
pub fn is_end_of_partition(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// A consumer that reads partitions it `assign()`s itself (no group join), committed data
/// only, and reports end-of-partition so callers know when they have caught up.
pub fn assign_consumer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = base_config(brokers, client_id);
    config
        .set("group.id", format!("{client_id}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50");
    config
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("timed out after {0:?} waiting for the broker")]
    Timeout(Duration),
}

/// Creates `topic` unless it exists. `config` are topic configs such as `retention.ms`.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<(), SetupError> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(brokers, "foldline-admin").create()?;
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        new_topic = new_topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new_topic], &options).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(SetupError::Topic {
                    topic: name,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Number of partitions of `topic`, waiting up to `timeout` for it to appear in metadata.
pub fn partition_count<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<i32, SetupError> {
    let deadline = Instant::now() + timeout;
    loop {
        let result = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(metadata) = &result {
            if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                if t.error().is_none() && !t.partitions().is_empty() {
                    return Ok(t.partitions().len() as i32);
                }
            }
        }
        if Instant::now() >= deadline {
            return match result {
                Err(error) => Err(error.into()),
                Ok(_) => Err(SetupError::Topic {
                    topic: topic.to_owned(),
                    reason: "not found".into(),
                }),
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Number of partitions of `topic` (waiting up to 30 s for it to appear).
pub async fn topic_partition_count(brokers: &str, topic: &str) -> Result<i32, SetupError> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            base_config(&brokers, "foldline-metadata").create()?;
        partition_count(&consumer, &topic, Duration::from_secs(30))
    })
    .await
    .expect("the metadata query does not panic")
}

/// Reads every committed record of `topic` from `start` (partition → offset, default the
/// beginning) up to the end of each partition, as seen by end-of-partition events (never by
/// watermarks: tansu reports wrong ones). Returns the next offset of each partition.
pub async fn read_to_end<F, Fut>(
    brokers: &str,
    client_id: &str,
    topic: &str,
    start: &Offsets,
    mut on_message: F,
) -> Result<Offsets, SetupError>
where
    F: FnMut(OwnedMessage) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut reader = TopicReader::open(brokers, client_id, topic, start, None, false)?;
    while let Some(message) = reader.next().await? {
        on_message(message).await;
    }
    Ok(reader.next_offsets().clone())
}

/// Reads chosen partitions of a topic from chosen offsets, committed records only, either up
/// to the end of every partition (`follow = false`) or for ever.
pub struct TopicReader {
    consumer: StreamConsumer<ReaderContext>,
    topic: String,
    follow: bool,
    remaining: std::collections::HashSet<i32>,
    next: Offsets,
    idle: Duration,
}

impl TopicReader {
    /// `partitions`: all of the topic's when `None`. `start`: offset per partition, the
    /// beginning where missing.
    pub fn open(
        brokers: &str,
        client_id: &str,
        topic: &str,
        start: &Offsets,
        partitions: Option<&[i32]>,
        follow: bool,
    ) -> Result<TopicReader, SetupError> {
        let mut config = assign_consumer_config(brokers, client_id);
        if follow {
            config.set("fetch.wait.max.ms", FOLLOW_FETCH_WAIT_MS);
        }
        Self::open_with(config, topic, start, partitions, follow)
    }

    fn open_with(
        config: ClientConfig,
        topic: &str,
        start: &Offsets,
        partitions: Option<&[i32]>,
        follow: bool,
    ) -> Result<TopicReader, SetupError> {
        let consumer: StreamConsumer<ReaderContext> = config.create_with_context(ReaderContext)?;
        let count = partition_count(&consumer, topic, Duration::from_secs(30))?;
        let chosen: Vec<i32> = match partitions {
            Some(list) => {
                if let Some(bad) = list.iter().find(|p| **p < 0 || **p >= count) {
                    return Err(SetupError::Topic {
                        topic: topic.to_owned(),
                        reason: format!("has no partition {bad} (it has {count})"),
                    });
                }
                list.to_vec()
            }
            None => (0..count).collect(),
        };
        let mut assignment = TopicPartitionList::new();
        let mut next = Offsets::new();
        for partition in &chosen {
            let offset = match start.get(*partition) {
                Some(o) => Offset::Offset(o),
                None => Offset::Beginning,
            };
            assignment.add_partition_offset(topic, *partition, offset)?;
            next.set(*partition, start.get(*partition).unwrap_or(0));
        }
        consumer.assign(&assignment)?;
        Ok(TopicReader {
            consumer,
            topic: topic.to_owned(),
            follow,
            remaining: chosen.into_iter().collect(),
            next,
            idle: Duration::ZERO,
        })
    }

    /// The next record, or `None` once every partition reached its end (never when following).
    pub async fn next(&mut self) -> Result<Option<OwnedMessage>, SetupError> {
        // librdkafka sometimes reports an end-of-partition as a global error without naming
        // the partition (seen on tansu with freshly created topics), and it is then lost to
        // us. When nothing arrives for a while, assigning the partitions still being read at
        // their current offsets makes the client fetch again and report their ends anew.
        let nudge_after = Duration::from_millis(1500);
        let idle_limit = Duration::from_secs(60);
        loop {
            if !self.follow && self.remaining.is_empty() {
                return Ok(None);
            }
            match tokio::time::timeout(nudge_after, self.consumer.recv()).await {
                Err(_) if self.follow => {}
                Err(_) => {
                    self.idle += nudge_after;
                    if self.idle >= idle_limit {
                        return Err(SetupError::Timeout(idle_limit));
                    }
                    if self.idle >= Duration::from_secs(6) {
                        tracing::warn!(topic = %self.topic, remaining = ?self.remaining, next = ?self.next,
                            idle = ?self.idle, "no end of partition yet; asking again");
                    }
                    let mut again = TopicPartitionList::new();
                    for partition in &self.remaining {
                        again.add_partition_offset(
                            &self.topic,
                            *partition,
                            Offset::Offset(self.next.get(*partition).unwrap_or(0)),
                        )?;
                    }
                    self.consumer.assign(&again)?;
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    self.idle = Duration::ZERO;
                    self.remaining.remove(&partition);
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, topic = %self.topic, "error while reading, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Ok(message)) => {
                    self.idle = Duration::ZERO;
                    self.next.set(message.partition(), message.offset() + 1);
                    return Ok(Some(message.detach()));
                }
            }
        }
    }

    /// Next offset per partition (after the last record returned).
    pub fn next_offsets(&self) -> &Offsets {
        &self.next
    }

    /// The consumer's fetch position per partition: unlike [`TopicReader::next_offsets`] it
    /// moves past transaction markers and aborted records, so after a partition's end it is
    /// that end (for a `read_committed` reader, the last stable offset).
    pub fn positions(&self) -> Result<Offsets, SetupError> {
        let mut positions = self.next.clone();
        for element in self.consumer.position()?.elements() {
            if let Offset::Offset(offset) = element.offset() {
                positions.advance_to(element.partition(), offset);
            }
        }
        Ok(positions)
    }
}

/// Where each partition of `topic` ends for a `read_committed` reader: its last stable
/// offset (librdkafka ≥ 1.7.1 answers watermark queries by the consumer's isolation level), so
/// a reader starting there misses no record of a transaction still open now.
pub async fn committed_ends(
    brokers: &str,
    client_id: &str,
    topic: &str,
) -> Result<Offsets, SetupError> {
    let (brokers, client_id, topic) = (brokers.to_owned(), client_id.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: StreamConsumer<ReaderContext> =
            assign_consumer_config(&brokers, &client_id).create_with_context(ReaderContext)?;
        let timeout = Duration::from_secs(10);
        let count = partition_count(&consumer, &topic, Duration::from_secs(30))?;
        let mut ends = Offsets::new();
        for partition in 0..count {
            let (_, end) = consumer.fetch_watermarks(&topic, partition, timeout)?;
            ends.set(partition, end);
        }
        Ok(ends)
    })
    .await
    .expect("the watermark query does not panic")
}

/// Where each partition of `topic` ends *including records of transactions not yet decided*:
/// the position of a `read_uncommitted` reader at each end-of-partition, reading from
/// `start`, of `partitions` (all when `None`). A `read_committed` reader whose positions reach
/// these offsets has seen every transaction that had written anything by now decided
/// (committed or aborted).
pub async fn undecided_ends(
    brokers: &str,
    client_id: &str,
    topic: &str,
    start: &Offsets,
    partitions: Option<&[i32]>,
) -> Result<Offsets, SetupError> {
    let mut config = assign_consumer_config(brokers, client_id);
    config.set("isolation.level", "read_uncommitted");
    let mut reader = TopicReader::open_with(config, topic, start, partitions, false)?;
    while reader.next().await?.is_some() {}
    reader.positions()
}

/// Waits (at most 50 ms) until librdkafka has released every delivered message.
///
/// Call it after all delivery futures resolved and before `commit_transaction`. rust-rdkafka's
/// commit flushes first, and its flush, finding anything still counted as in flight, polls in
/// fixed 100 ms steps. A delivery future resolves a moment *before* the polling thread releases
/// the message, so committing straight away costs ~100 ms per transaction (measured: 130 ms →
/// 28 ms per one-record commit on the local broker).
pub fn await_reports_released(producer: &rdkafka::producer::FutureProducer) {
    use rdkafka::producer::Producer;
    let deadline = Instant::now() + Duration::from_millis(50);
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}
