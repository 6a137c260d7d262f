//! What the consume loop needs from the log, as small traits, and their Kafka implementations.
//! The loop ([`crate::pipeline`]) is written against the traits so its state machine —
//! batching, reseeks, partial writes, rebalances, dead letters, retries — is unit-tested with
//! in-memory fakes; the implementations here are thin wrappers over rdkafka.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldline_schemas::wire::{CodecError, EventCodec};
use foldline_schemas::Envelope;
use foldline_service::kafka::TopicReader;
use foldline_service::position::Offsets;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::context::RuntimeContext;
use crate::dead_letter::{DeadLetter, DeadLetterQueue};
use crate::error::{DeadLetterError, SourceError};

/// The partitions a consumer group assigned to this instance.
pub trait Source: Send + Sync {
    /// The next record of any assigned partition (waits until one arrives).
    fn recv(&self) -> impl Future<Output = Result<OwnedMessage, KafkaError>> + Send;
    /// Bumped on every rebalance: where each partition is read from is unknown after it.
    fn generation(&self) -> u64;
    /// Reads `partition` on from `offset`.
    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError>;
    /// Stops fetching every assigned partition (while the sink is down), keeping the group.
    fn pause(&self) -> Result<(), SourceError>;
    /// Undoes [`Source::pause`].
    fn resume(&self) -> Result<(), SourceError>;
    /// Records progress in the group (a restarted or newly assigned member starts there).
    fn commit(&self, next: &Offsets, mode: CommitMode);
    /// Reads the records at `wanted` (partition, offset) again, to retry parked records.
    fn refetch(
        &self,
        wanted: &[(i32, i64)],
    ) -> impl Future<Output = Result<Vec<OwnedMessage>, SourceError>> + Send {
        let _ = wanted;
        async { Err(SourceError::CannotReadAgain) }
    }
}

/// Turns a record's bytes into an event; waits while the registry is down, so an error means
/// the record itself can never be decoded.
pub trait Decoder: Send + Sync {
    fn decode(&self, bytes: &[u8]) -> impl Future<Output = Result<Envelope, CodecError>> + Send;
}

/// Where undecodable records go.
pub trait DeadLetters: Send + Sync {
    /// Appends `letters`; returns how many were skipped as already sent by this group.
    fn publish(
        &self,
        letters: &[DeadLetter],
    ) -> impl Future<Output = Result<usize, DeadLetterError>> + Send;
}

impl Decoder for EventCodec {
    async fn decode(&self, bytes: &[u8]) -> Result<Envelope, CodecError> {
        self.decode_waiting(bytes).await
    }
}

impl DeadLetters for DeadLetterQueue {
    async fn publish(&self, letters: &[DeadLetter]) -> Result<usize, DeadLetterError> {
        DeadLetterQueue::publish(self, letters).await
    }
}

/// A subscribed rdkafka consumer.
pub struct KafkaSource {
    pub consumer: StreamConsumer<RuntimeContext>,
    /// For reading parked records again, with a reader of its own.
    pub brokers: String,
    pub topic: String,
    pub generation: Arc<AtomicU64>,
    /// What [`Source::pause`] paused, so exactly that is resumed.
    pub paused: Mutex<Option<TopicPartitionList>>,
}

impl KafkaSource {
    /// Whether a failed seek of `partition` is a rebalance's doing: the partition is no
    /// longer assigned, or librdkafka says its state does not allow it (a group rejoin).
    fn rebalancing(&self, partition: i32, error: &KafkaError) -> bool {
        let assigned = self
            .consumer
            .assignment()
            .is_ok_and(|a| a.find_partition(&self.topic, partition).is_some());
        !assigned || error.to_string().contains("Erroneous state")
    }
}

impl Source for KafkaSource {
    async fn recv(&self) -> Result<OwnedMessage, KafkaError> {
        self.consumer.recv().await.map(|message| message.detach())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        let sought = self.consumer.seek(
            &self.topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(10),
        );
        match sought {
            Ok(()) => Ok(()),
            // A partition lost in a rebalance (seen right after a broker restart, while the
            // group was rejoining: "Erroneous state") cannot be sought, and need not be: its
            // next reader starts from the committed offset, and the sink, which keeps its
            // offsets with its data, asks for a reseek again if that is not where it stands.
            Err(error) if self.rebalancing(partition, &error) => {
                tracing::warn!(%error, partition, offset, "seek skipped: the partition is being reassigned");
                self.generation.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(error) => Err(SourceError::Kafka(error)),
        }
    }

    fn pause(&self) -> Result<(), SourceError> {
        let mut paused = self.paused.lock().expect("not poisoned");
        if paused.is_none() {
            let assignment = self.consumer.assignment()?;
            self.consumer.pause(&assignment)?;
            *paused = Some(assignment);
        }
        Ok(())
    }

    fn resume(&self) -> Result<(), SourceError> {
        if let Some(assignment) = self.paused.lock().expect("not poisoned").take() {
            self.consumer.resume(&assignment)?;
        }
        Ok(())
    }

    async fn refetch(&self, wanted: &[(i32, i64)]) -> Result<Vec<OwnedMessage>, SourceError> {
        let mut from = Offsets::new();
        for (partition, offset) in wanted {
            if from.get(*partition).is_none_or(|o| *offset < o) {
                from.set(*partition, *offset);
            }
        }
        let partitions: Vec<i32> = from.iter().map(|(p, _)| p).collect();
        let mut reader = TopicReader::open(
            &self.brokers,
            "foldline-parked-retry",
            &self.topic,
            &from,
            Some(&partitions),
            false,
        )?;
        let mut missing: std::collections::HashSet<(i32, i64)> = wanted.iter().copied().collect();
        let mut found = Vec::with_capacity(wanted.len());
        // Parked records are few; reading on until the last of them is found is bounded by
        // how far apart they are in the log.
        while !missing.is_empty() {
            let Some(message) = reader.next().await? else {
                break;
            };
            if missing.remove(&(message.partition(), message.offset())) {
                found.push(message);
            }
        }
        Ok(found)
    }

    fn commit(&self, next: &Offsets, mode: CommitMode) {
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next.iter() {
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if let Err(error) = self.consumer.commit(&list, mode) {
            tracing::debug!(%error, "group offset commit failed (the sink's offsets still hold)");
        }
    }
}
