//! Fetch as a long poll: an idle reader costs the broker a request per max wait, and a
//! waiting fetch answers when records are committed, not when its wait ends.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::client::{config, ReaderContext, TxProducer};
use crate::Target;

const MAX_WAIT_MS: u64 = 2000;
/// An idle reader with a 2 s max wait sends about 0.5 fetches a second to a broker that
/// waits; one that answers at once draws hundreds.
const MAX_IDLE_FETCHES_PER_SECOND: f64 = 2.0;
/// A record committed during a wait is delivered well within the 2 s wait. A broker that
/// polls storage every `remaining / 2` misses this on most of the samples.
const MAX_WAKE_MS: u128 = 250;
const SAMPLES: usize = 5;

/// Fetch requests sent so far, from the client's statistics.
#[derive(Default)]
struct FetchRequests(Arc<AtomicI64>);

impl ClientContext for FetchRequests {
    fn stats(&self, statistics: Statistics) {
        let sent: i64 = statistics
            .brokers
            .values()
            .filter_map(|broker| broker.req.get("Fetch"))
            .sum();
        self.0.store(sent, Ordering::SeqCst);
    }

    // end-of-partition events are what this reader waits for, not errors
    fn error(&self, error: KafkaError, reason: &str) {
        ReaderContext.error(error, reason);
    }
}

impl ConsumerContext for FetchRequests {}

pub fn long_polls(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let topic = target.create_topic("long-poll", 1)?;
    let sent = Arc::new(AtomicI64::new(0));
    let consumer: BaseConsumer<FetchRequests> = config(&brokers)
        .set(
            "group.id",
            foldline_testkit::unique("conformance-long-poll"),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", MAX_WAIT_MS.to_string())
        .set("fetch.min.bytes", "1")
        .set("statistics.interval.ms", "500")
        .create_with_context(FetchRequests(sent.clone()))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;

    // Idle: count the fetches over 4 s after a second to settle.
    poll_for(&consumer, Duration::from_millis(1200))?;
    let (before, from) = (sent.load(Ordering::SeqCst), Instant::now());
    poll_for(&consumer, Duration::from_secs(4))?;
    let fetches = sent.load(Ordering::SeqCst) - before;
    let per_second = fetches as f64 / from.elapsed().as_secs_f64();
    ensure!(
        per_second <= MAX_IDLE_FETCHES_PER_SECOND,
        "an idle reader with fetch.wait.max.ms={MAX_WAIT_MS} sent {per_second:.1} fetches/s (at most {MAX_IDLE_FETCHES_PER_SECOND}): the broker answers empty fetches without waiting"
    );
    ensure!(fetches >= 0, "no statistics from the client");

    // Woken by data: commit a record while the reader's fetch waits, time its arrival.
    let producer = TxProducer::start(&brokers, &format!("{topic}-writer"))?;
    let mut delays = Vec::new();
    for sample in 0..SAMPLES {
        // Land at a different point of the wait each time.
        std::thread::sleep(Duration::from_millis(300 + 137 * sample as u64));
        producer.begin()?;
        producer.send(&topic, 0, &format!("wake-{sample}"))?;
        producer.commit().context("commit")?;
        let committed = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(MAX_WAIT_MS * 2)) {
                Some(Ok(message))
                    if message.payload() == Some(format!("wake-{sample}").as_bytes()) =>
                {
                    delays.push(committed.elapsed().as_millis());
                    break;
                }
                Some(Ok(_)) | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => bail!("reading: {error}"),
                None => bail!(
                    "record wake-{sample} not delivered within {} ms",
                    MAX_WAIT_MS * 2
                ),
            }
        }
    }
    eprintln!("  idle fetches/s {per_second:.2}; records committed during a wait arrived after {delays:?} ms");
    let slowest = delays.iter().copied().max().unwrap_or_default();
    ensure!(
        slowest <= MAX_WAKE_MS,
        "records committed during a {MAX_WAIT_MS} ms fetch wait arrived after {delays:?} ms (at most {MAX_WAKE_MS}): the waiting fetch is not woken by new records"
    );
    Ok(())
}

fn poll_for(consumer: &BaseConsumer<FetchRequests>, how_long: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => bail!("an empty topic delivered offset {}", message.offset()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error)) => bail!("reading: {error}"),
        }
    }
    Ok(())
}
