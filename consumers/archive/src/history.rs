//! The S3 archive, then the topic from where the archive ends, as one [`EventSource`] for
//! rebuilds that need history the topic no longer holds.

use std::time::Duration;

use foldline_consumer_runtime::error::HistoryError;
use foldline_consumer_runtime::history::{EventSource, TopicSource};
use foldline_consumer_runtime::Batch;
use foldline_service::position::Offsets;
use tokio::sync::mpsc;

use crate::read::ArchiveReader;

/// Each file is cut into batches of at most the topic source's `batch_records`; a file's range
/// (which includes dead-lettered offsets and transaction markers) counts as read, so the topic
/// continues right after it.
pub struct ArchiveThenTopic {
    pub archive: ArchiveReader,
    pub topic: TopicSource,
}

impl EventSource for ArchiveThenTopic {
    async fn read(
        &mut self,
        from: &Offsets,
        batches: mpsc::Sender<Batch>,
    ) -> Result<Offsets, HistoryError> {
        let mut position = from.clone();
        let mut files = self.archive.stream(from);
        while let Some(file) = files.recv().await {
            let file = file.map_err(|error| HistoryError::Archive(error.into()))?;
            let partition = file.range.partition;
            let mut records = file.records.into_iter().peekable();
            while records.peek().is_some() || position.get(partition) < Some(file.range.next()) {
                // The archive's history starts where its first file starts: nothing before it
                // can be read any more, so the rebuild reads on from there without a break.
                let read_from = position.get(partition).unwrap_or(0);
                let mut batch = Batch {
                    read_from: Offsets::from([(partition, read_from)]),
                    ..Batch::default()
                };
                for record in records.by_ref().take(self.topic.batch_records.max(1)) {
                    batch.consumed(partition, record.offset, 0);
                    batch.records.push(record);
                }
                if records.peek().is_none() {
                    // The file's range ends with it, whatever its last record's offset.
                    batch.consumed(partition, file.range.last, 0);
                }
                position.merge(&batch.next_offsets());
                batches.send(batch).await?;
            }
        }
        let start = self.topic_start(position.clone())?;
        let mut next = self.topic.read(&start, batches).await?;
        // Where the archive reaches further than the topic, the archive's end is next.
        for (partition, end) in position.iter() {
            next.advance_to(partition, end);
        }
        Ok(next)
    }

    fn undecodable(&self) -> u64 {
        self.topic.undecodable
    }
}

impl ArchiveThenTopic {
    /// Where the topic read starts: where the archive ends, unless the topic ends before that
    /// (it was re-created after a loss, or is a restored copy): then from its end. Starting
    /// lower than needed is harmless — records the new model holds are skipped — so the
    /// broker's high watermark (too low on tansu) is only used to come down.
    fn topic_start(&self, archive_end: Offsets) -> Result<Offsets, HistoryError> {
        let consumer: rdkafka::consumer::BaseConsumer =
            foldline_service::kafka::base_config(&self.topic.brokers, "foldline-rebuild")
                .create()?;
        let mut start = archive_end.clone();
        for (partition, offset) in archive_end.iter() {
            let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                &self.topic.topic,
                partition,
                Duration::from_secs(10),
            )?;
            if high < offset {
                tracing::info!(
                    partition,
                    archive_end = offset,
                    topic_end = high,
                    "the topic ends before the archive does: reading it from its end"
                );
                start.set(partition, high);
            }
        }
        Ok(start)
    }
}
