//! Durable storage of the registry: every change is a JSON record in a single-partition
//! topic (`_schemas`, compacted, as Redpanda and Karapace do). Start-up replays it.

use std::time::Duration;

use foldline_service::kafka::{self, SetupError};
use foldline_service::position::Offsets;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::model::{LogRecord, Registry};

pub struct SchemaLog {
    /// Made at the first write: an idle producer is not free (rust-rdkafka's polling thread
    /// alone costs ~1 % of a core), and a registry mostly answers reads.
    producer: tokio::sync::OnceCell<FutureProducer>,
    brokers: String,
    topic: String,
}

impl SchemaLog {
    /// Creates the topic if needed and rebuilds the registry from it.
    pub async fn open(brokers: &str, topic: &str) -> Result<(SchemaLog, Registry), SetupError> {
        kafka::ensure_topic(brokers, topic, 1, &[("cleanup.policy", "compact")]).await?;
        let mut registry = Registry::default();
        let mut records = 0_u64;
        kafka::read_to_end(brokers, "foldline-schema-registry", topic, &Offsets::new(), |m| {
            match m.payload().map(serde_json::from_slice::<LogRecord>) {
                Some(Ok(record)) => {
                    registry.apply(record);
                    records += 1;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, offset = m.offset(), "skipping unreadable registry record")
                }
                None => {}
            }
            std::future::ready(())
        })
        .await?;
        tracing::info!(records, topic, "registry state loaded");
        Ok((
            SchemaLog {
                producer: tokio::sync::OnceCell::new(),
                brokers: brokers.to_owned(),
                topic: topic.to_owned(),
            },
            registry,
        ))
    }

    /// Appends a record and waits until the broker acknowledged it.
    pub async fn append(&self, record: &LogRecord) -> Result<(), String> {
        let key = record.key();
        let value = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let producer = self
            .producer
            .get_or_try_init(|| async {
                kafka::producer_config(&self.brokers, "foldline-schema-registry")
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("message.timeout.ms", "10000")
                    .create::<FutureProducer>()
            })
            .await
            .map_err(|e| e.to_string())?;
        producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map(|_| ())
            .map_err(|(error, _)| error.to_string())
    }
}
