//! Records no consumer can decode go to the dead-letter topic with their original key and
//! bytes and headers saying why and where they came from; the consumer carries on.

use std::time::Duration;

use foldline_service::kafka;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub reason: String,
}

pub struct DeadLetterQueue {
    producer: FutureProducer,
    source_topic: String,
    topic: String,
}

impl DeadLetterQueue {
    pub fn new(brokers: &str, source_topic: &str, topic: &str) -> anyhow::Result<Self> {
        let producer = kafka::producer_config(brokers, "foldline-dead-letters")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(DeadLetterQueue {
            producer,
            source_topic: source_topic.to_owned(),
            topic: topic.to_owned(),
        })
    }

    /// Appends every letter and waits until the broker acknowledged them all.
    pub async fn publish(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        let sends = letters.iter().map(|letter| {
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
                });
            let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            if let Some(value) = &letter.value {
                record = record.payload(value);
            }
            self.producer.send(record, Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(error, _)| anyhow::anyhow!("dead-letter append failed: {error}"))?;
        }
        Ok(())
    }
}
