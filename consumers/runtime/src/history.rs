//! Reading history in bulk, for rebuilds: an [`EventSource`] hands over every record from
//! given offsets to the current end, in batches, in log order per partition. The topic is one
//! ([`TopicSource`]); the archive crate adds the S3 archive followed by the topic.

use std::future::Future;
use std::sync::Arc;

use foldline_schemas::wire::{CodecError, EventCodec};
use foldline_service::kafka::TopicReader;
use foldline_service::position::Offsets;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::mpsc;

use crate::error::HistoryError;
use crate::parking::Parked;
use crate::{Batch, Record};

/// Where a rebuild reads its events: every record from `from` to the current end, in batches
/// sent to `batches`. Returns the next offsets.
pub trait EventSource {
    fn read(
        &mut self,
        from: &Offsets,
        batches: mpsc::Sender<Batch>,
    ) -> impl Future<Output = Result<Offsets, HistoryError>> + Send;

    /// Records skipped so far because they could not be decoded.
    fn undecodable(&self) -> u64;
}

/// The topic as an event source.
pub struct TopicSource {
    pub brokers: String,
    pub topic: String,
    pub codec: Arc<EventCodec>,
    pub batch_records: usize,
    pub undecodable: u64,
}

impl EventSource for TopicSource {
    async fn read(
        &mut self,
        from: &Offsets,
        batches: mpsc::Sender<Batch>,
    ) -> Result<Offsets, HistoryError> {
        // librdkafka prefetches in its own threads, and full batches go to the writer through
        // the bounded `batches` channel: reading, decoding and writing overlap, memory stays
        // bounded.
        let mut reader = TopicReader::open(
            &self.brokers,
            "foldline-rebuild",
            &self.topic,
            from,
            None,
            false,
        )?;
        let mut position = from.clone();
        let mut batch = Batch {
            read_from: position.clone(),
            ..Batch::default()
        };
        while let Some(message) = reader.next().await? {
            if !decode_into(&self.codec, &message, &mut batch).await {
                self.undecodable += 1;
            }
            if batch.records.len() >= self.batch_records {
                position.merge(&batch.next_offsets());
                let full = std::mem::replace(
                    &mut batch,
                    Batch {
                        read_from: position.clone(),
                        ..Batch::default()
                    },
                );
                batches.send(full).await?;
            }
        }
        if !batch.is_empty() {
            batches.send(batch).await?;
        }
        Ok(reader.next_offsets().clone())
    }

    fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

/// Decodes one record; undecodable ones are skipped (the live consumers dead-lettered them)
/// but their offsets still count as consumed.
async fn decode_into(codec: &EventCodec, message: &OwnedMessage, batch: &mut Batch) -> bool {
    let bytes = message.payload().unwrap_or_default();
    batch.consumed(message.partition(), message.offset(), bytes.len());
    match codec.decode_waiting(bytes).await {
        Ok(event) => {
            batch.records.push(Record::from_message(message, event));
            true
        }
        // Parked as the live consumer parks it: never skipped.
        Err(CodecError::NewerSchema(newer)) => {
            let parked = Parked::newer(message.partition(), message.offset(), &newer);
            batch.parked.push(parked);
            true
        }
        Err(error) => {
            tracing::debug!(%error, offset = message.offset(), "skipping an undecodable record");
            false
        }
    }
}
