//! Who owns which partition, for forwarding: every owner publishes `partition → its URL` to a
//! small topic beside the events (`<topic>.owners`, one partition) when it starts serving a
//! partition, and every instance follows that topic from its beginning. The last record of a
//! partition wins. An entry can be stale for a moment (an owner died and the group has not
//! moved its partitions yet): a forward to it fails or lands on an instance that no longer
//! owns the partition, and the client is asked to retry (503) — nothing is written twice,
//! because only the lane's fenced transactional producer writes.
//!
//! Kafka's group protocol cannot tell this: DescribeGroups answers no members on the local
//! broker (measured, docs/benchmarks.md), and member metadata carries no URL.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use foldline_service::kafka::{self, SetupError, TopicReader};
use foldline_service::position::Offsets;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

/// One record of the directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OwnerRecord {
    /// Base URL of the owner's write API.
    url: String,
    /// When it started serving the partition (epoch ms), for people reading the topic.
    since_ms: i64,
}

pub struct Directory {
    /// This instance's own URL: never forwarded to.
    me: String,
    topic: String,
    producer: FutureProducer,
    owners: RwLock<HashMap<i32, String>>,
    /// Sent when an owner is published (requests waiting for a partition's next owner).
    changes: tokio::sync::watch::Sender<()>,
}

/// The directory topic of an events topic.
pub fn topic_of(events_topic: &str) -> String {
    format!("{events_topic}.owners")
}

impl Directory {
    /// Creates the directory topic if needed and follows it in the background.
    pub async fn start(
        brokers: &str,
        events_topic: &str,
        me: &str,
    ) -> Result<Arc<Directory>, SetupError> {
        let topic = topic_of(events_topic);
        kafka::ensure_topic(brokers, &topic, 1, &[("retention.ms", "-1")]).await?;
        let producer: FutureProducer =
            kafka::producer_config(brokers, "foldline-producer-directory")
                .set("acks", "all")
                .set("message.timeout.ms", "10000")
                .create()?;
        let directory = Arc::new(Directory {
            me: me.to_owned(),
            topic: topic.clone(),
            producer,
            owners: RwLock::default(),
            changes: tokio::sync::watch::Sender::new(()),
        });
        let mut reader = TopicReader::open(
            brokers,
            "foldline-producer-directory",
            &topic,
            &Offsets::new(),
            None,
            true,
        )?;
        let following = Arc::downgrade(&directory);
        tokio::spawn(async move {
            loop {
                let message = match reader.next().await {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(%error, "reading the owners topic");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let Some(directory) = following.upgrade() else {
                    return;
                };
                let partition = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.parse::<i32>().ok());
                let record = message
                    .payload()
                    .and_then(|v| serde_json::from_slice::<OwnerRecord>(v).ok());
                match (partition, record) {
                    (Some(partition), Some(record)) => {
                        tracing::debug!(partition, url = %record.url, "owner published");
                        directory
                            .owners
                            .write()
                            .expect("not poisoned")
                            .insert(partition, record.url);
                        directory.changes.send_replace(());
                    }
                    _ => tracing::warn!(
                        offset = message.offset(),
                        "unreadable record in the owners topic; skipped"
                    ),
                }
            }
        });
        Ok(directory)
    }

    /// The URL of the instance that last said it owns `partition`, unless that is this one
    /// (which does not serve it now, or it would not ask).
    pub fn owner_of(&self, partition: i32) -> Option<String> {
        self.owners
            .read()
            .expect("not poisoned")
            .get(&partition)
            .filter(|url| **url != self.me)
            .cloned()
    }

    /// Wakes when an owner is published.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changes.subscribe()
    }

    /// Waits until the directory names someone other than `gone` for `partition` (this
    /// instance included), up to `wait`; `false` when it still names `gone` then. A change
    /// to another partition's owner does not end the wait: during a rebalance many move at
    /// once, and a request woken by the wrong one would only find the same owner again.
    pub async fn moved_from(&self, partition: i32, gone: &str, wait: Duration) -> bool {
        let mut changes = self.changes.subscribe();
        let named_gone = |directory: &Directory| {
            directory
                .owners
                .read()
                .expect("not poisoned")
                .get(&partition)
                .is_some_and(|url| url == gone)
        };
        let moved = async {
            loop {
                // Marked seen before looking, so a change after the look wakes the wait.
                changes.borrow_and_update();
                if !named_gone(self) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::time::timeout(wait, moved).await.is_ok()
    }

    /// Says that this instance now serves `partitions` (in the background; librdkafka retries).
    pub fn publish(self: &Arc<Self>, partitions: &[i32]) {
        for &partition in partitions {
            let directory = self.clone();
            tokio::spawn(async move {
                let record = OwnerRecord {
                    url: directory.me.clone(),
                    since_ms: chrono::Utc::now().timestamp_millis(),
                };
                let value = serde_json::to_vec(&record).expect("serialisable");
                let key = partition.to_string();
                let sent = directory
                    .producer
                    .send(
                        FutureRecord::to(&directory.topic).key(&key).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await;
                if let Err((error, _)) = sent {
                    tracing::warn!(%error, partition, "could not publish this instance as the partition's owner; requests forwarded here will be fewer");
                }
            });
        }
    }
}
