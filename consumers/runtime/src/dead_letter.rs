//! Records no consumer can decode go to the dead-letter topic with their original key and
//! bytes and headers saying why, where they came from and which consumer group sent them; the
//! consumer carries on.
//!
//! Exactly once per consumer group: a consumer that crashes after dead-lettering a record but
//! before its batch is durable reads that record again. Before appending, the queue reads the
//! dead-letter topic's tail (only what it has not read yet: dead letters are rare, so this is
//! small) and skips every letter whose source offset its group has already dead-lettered —
//! whichever instance of the group did it. Within a source partition letters go out in offset
//! order, so "already sent" is "at or below the highest source offset seen".

use std::time::Duration;

use foldline_service::kafka::{self, TopicReader};
use foldline_service::position::Offsets;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::sync::Mutex;

use crate::error::DeadLetterError;

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub reason: String,
}

pub struct DeadLetterQueue {
    /// Made at the first dead letter: an idle producer is not free (rust-rdkafka's polling
    /// thread alone costs ~1 % of a core), and most consumers never dead-letter anything.
    producer: tokio::sync::OnceCell<FutureProducer>,
    brokers: String,
    source_topic: String,
    topic: String,
    group: String,
    sent: Mutex<Sent>,
}

/// What this group has dead-lettered, as far as the dead-letter topic has been read.
#[derive(Default)]
struct Sent {
    /// Next offset to read in each partition of the dead-letter topic (empty: not read yet).
    read_to: Offsets,
    /// Per source partition, the offset after the highest one dead-lettered.
    sent: Offsets,
}

impl Sent {
    /// Notes a letter read back from (or just appended to) the dead-letter topic.
    fn note(&mut self, partition: i32, offset: i64) {
        self.sent.advance(partition, offset);
    }

    fn already_sent(&self, letter: &DeadLetter) -> bool {
        self.sent.has_seen(letter.partition, letter.offset)
    }
}

/// The value of header `name`, as text.
fn header<'a>(message: &'a impl Message, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

impl DeadLetterQueue {
    pub fn new(
        brokers: &str,
        source_topic: &str,
        topic: &str,
        group: &str,
    ) -> Result<Self, DeadLetterError> {
        Ok(DeadLetterQueue {
            producer: tokio::sync::OnceCell::new(),
            brokers: brokers.to_owned(),
            source_topic: source_topic.to_owned(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            sent: Mutex::default(),
        })
    }

    async fn producer(&self) -> Result<&FutureProducer, DeadLetterError> {
        self.producer
            .get_or_try_init(|| async {
                kafka::producer_config(&self.brokers, "foldline-dead-letters")
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .create()
                    .map_err(DeadLetterError::Producer)
            })
            .await
    }

    /// Appends every letter this group has not dead-lettered yet and waits until the broker
    /// acknowledged them all. Returns how many were skipped as already sent.
    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<usize, DeadLetterError> {
        let mut sent = self.sent.lock().await;
        self.read_back(&mut sent).await?;
        let producer = self.producer().await?;
        let fresh: Vec<&DeadLetter> = letters.iter().filter(|l| !sent.already_sent(l)).collect();
        let sends = fresh.iter().map(|letter| {
            let partition = letter.partition.to_string();
            let offset = letter.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "dlq-reason",
                    value: Some(letter.reason.as_bytes()),
                })
                .insert(Header {
                    key: "dlq-source-topic",
                    value: Some(self.source_topic.as_bytes()),
                })
                .insert(Header {
                    key: "dlq-source-partition",
                    value: Some(partition.as_bytes()),
                })
                .insert(Header {
                    key: "dlq-source-offset",
                    value: Some(offset.as_bytes()),
                })
                .insert(Header {
                    key: "dlq-consumer-group",
                    value: Some(self.group.as_bytes()),
                });
            let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            if let Some(value) = &letter.value {
                record = record.payload(value);
            }
            producer.send(record, Duration::from_secs(30))
        });
        let results = futures::future::join_all(sends).await;
        for (letter, result) in fresh.iter().zip(results) {
            result.map_err(|(error, _)| DeadLetterError::Append(error))?;
            sent.note(letter.partition, letter.offset);
        }
        Ok(letters.len() - fresh.len())
    }

    /// Reads the dead-letter topic from where the last read ended, noting this group's letters
    /// for the source topic.
    async fn read_back(&self, sent: &mut Sent) -> Result<(), DeadLetterError> {
        if sent.read_to.is_empty() {
            // Nothing dead-lettered yet may mean no topic yet; readers need it to exist.
            kafka::ensure_topic(&self.brokers, &self.topic, 1, &[]).await?;
        }
        let mut reader = TopicReader::open(
            &self.brokers,
            "foldline-dead-letters-read-back",
            &self.topic,
            &sent.read_to,
            None,
            false,
        )?;
        while let Some(message) = reader.next().await? {
            let ours = header(&message, "dlq-consumer-group") == Some(self.group.as_str())
                && header(&message, "dlq-source-topic") == Some(self.source_topic.as_str());
            let source = header(&message, "dlq-source-partition")
                .and_then(|p| p.parse().ok())
                .zip(header(&message, "dlq-source-offset").and_then(|o| o.parse().ok()));
            if let (true, Some((partition, offset))) = (ours, source) {
                sent.note(partition, offset);
            }
        }
        sent.read_to = reader.positions()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64) -> DeadLetter {
        DeadLetter {
            partition,
            offset,
            key: None,
            value: None,
            reason: "test".into(),
        }
    }

    #[test]
    fn a_letter_at_or_below_the_highest_sent_offset_of_its_partition_is_already_sent() {
        let mut sent = Sent::default();
        sent.note(0, 7);
        sent.note(0, 3);
        assert!(sent.already_sent(&letter(0, 7)));
        assert!(sent.already_sent(&letter(0, 2)));
        assert!(!sent.already_sent(&letter(0, 8)));
        assert!(!sent.already_sent(&letter(1, 0)), "another partition");
    }
}
