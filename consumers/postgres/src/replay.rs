//! Zero-downtime rebuild: fold the log into a new (shadow) model schema while the live one
//! keeps answering, catch up to the tail while holding the swap lock, swap the pointer in the
//! same transaction, then drop the old schema.
//!
//! The events come from an [`EventSource`]: the topic ([`TopicSource`]), or the S3 archive
//! followed by the topic from where the archive ends ([`ArchiveThenTopic`]), for history the
//! topic no longer holds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use foldline_archive::read::ArchiveReader;
use foldline_consumer_runtime::{Batch, Record};
use foldline_schemas::wire::EventCodec;
use foldline_service::kafka::TopicReader;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgConnection;
use tokio::sync::mpsc;

use crate::apply::{apply_batch, Applied, Target};
use crate::model::{new_schema_name, ReadModel, META_SCHEMA};

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub log: foldline_service::config::EventLog,
    pub group: String,
    pub low_stock_threshold: i64,
    pub batch_records: usize,
    /// How long the old schema stays after the swap, for reads that began before it.
    pub drop_grace: Duration,
    pub show_progress: bool,
}

#[derive(Debug)]
pub struct ReplayReport {
    pub events: u64,
    pub dead: u64,
    pub elapsed: Duration,
    pub old_schema: String,
    pub new_schema: String,
}

/// Where a rebuild reads its events: every record from `from` (partition → offset) to the
/// current end, in batches, in log order per partition. Returns the next offsets.
pub trait EventSource {
    fn read(
        &mut self,
        from: &BTreeMap<i32, i64>,
        batches: mpsc::Sender<Batch>,
    ) -> impl std::future::Future<Output = anyhow::Result<BTreeMap<i32, i64>>> + Send;

    /// Records skipped so far because they could not be decoded.
    fn undecodable(&self) -> u64;
}

/// The topic as an event source.
pub struct TopicSource {
    pub brokers: String,
    pub topic: String,
    pub codec: std::sync::Arc<EventCodec>,
    pub batch_records: usize,
    pub undecodable: u64,
}

impl EventSource for TopicSource {
    async fn read(
        &mut self,
        from: &BTreeMap<i32, i64>,
        batches: mpsc::Sender<Batch>,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        // librdkafka prefetches in its own threads, and full batches go to the writer through
        // the bounded `batches` channel: reading, decoding and writing overlap, memory stays
        // bounded.
        let start: HashMap<i32, i64> = from.iter().map(|(p, o)| (*p, *o)).collect();
        let mut reader = TopicReader::open(
            &self.brokers,
            "foldline-replay",
            &self.topic,
            &start,
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
                position.extend(batch.next_offsets());
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
        Ok(reader
            .next_offsets()
            .iter()
            .map(|(p, o)| (*p, *o))
            .collect())
    }

    fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

/// The S3 archive, then the topic from where the archive ends. Each file is cut into batches
/// of at most `batch_records`; a file's range (which includes dead-lettered offsets and
/// transaction markers) counts as read, so the topic continues right after it.
pub struct ArchiveThenTopic {
    pub archive: ArchiveReader,
    pub topic: TopicSource,
}

impl EventSource for ArchiveThenTopic {
    async fn read(
        &mut self,
        from: &BTreeMap<i32, i64>,
        batches: mpsc::Sender<Batch>,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut position = from.clone();
        let mut files = self.archive.stream(from);
        while let Some(file) = files.recv().await {
            let file = file?;
            let partition = file.range.partition;
            let mut records = file.records.into_iter().peekable();
            while records.peek().is_some() || position.get(&partition) < Some(&file.range.next()) {
                // The archive's history starts where its first file starts: nothing before it
                // can be read any more, so the rebuild reads on from there without a break.
                let read_from = position.get(&partition).copied().unwrap_or(0);
                let mut batch = Batch {
                    read_from: BTreeMap::from([(partition, read_from)]),
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
                position.extend(batch.next_offsets());
                batches.send(batch).await?;
            }
        }
        let start = self.topic_start(position.clone())?;
        let mut next = self.topic.read(&start, batches).await?;
        // Where the archive reaches further than the topic, the archive's end is next.
        for (partition, end) in position {
            let at = next.entry(partition).or_insert(end);
            *at = (*at).max(end);
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
    fn topic_start(&self, mut position: BTreeMap<i32, i64>) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer: rdkafka::consumer::BaseConsumer =
            foldline_service::kafka::base_config(&self.topic.brokers, "foldline-replay")
                .create()?;
        for (partition, offset) in position.iter_mut() {
            let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                &self.topic.topic,
                *partition,
                Duration::from_secs(10),
            )?;
            if high < *offset {
                tracing::info!(
                    partition,
                    archive_end = *offset,
                    topic_end = high,
                    "the topic ends before the archive does: reading it from its end"
                );
                *offset = high;
            }
        }
        Ok(position)
    }
}

/// Decodes one record; undecodable ones are skipped (the live projector dead-lettered them)
/// but their offsets still count as consumed.
async fn decode_into(codec: &EventCodec, message: &OwnedMessage, batch: &mut Batch) -> bool {
    let bytes = message.payload().unwrap_or_default();
    batch.consumed(message.partition(), message.offset(), bytes.len());
    match codec.decode_waiting(bytes).await {
        Ok(event) => {
            batch.records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                timestamp_ms: message.timestamp().to_millis(),
                event,
            });
            true
        }
        Err(error) => {
            tracing::debug!(%error, offset = message.offset(), "skipping an undecodable record");
            false
        }
    }
}

/// Rebuilds the read model from `source` into a new schema and swaps it in.
pub async fn replay<S: EventSource + Send>(
    model: &ReadModel,
    config: &ReplayConfig,
    mut source: S,
) -> anyhow::Result<ReplayReport> {
    let started = Instant::now();
    let old_schema = model.bootstrap().await?;
    let new_schema = new_schema_name();
    model.create_model(&new_schema).await?;
    tracing::info!(%old_schema, %new_schema, "replay: building a new model schema");
    let progress = progress_bar(model, config, &old_schema).await;
    let target = Target {
        schema: &new_schema,
        group: &config.group,
        topic: &config.log.topic,
        low_stock_threshold: config.low_stock_threshold,
    };
    let mut events = 0u64;

    // Phase 1: the bulk, one transaction per batch, while the live model keeps serving.
    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let from = BTreeMap::new();
    let read = source.read(&from, tx);
    let write = async {
        while let Some(batch) = rx.recv().await {
            let mut conn = model.pool.begin().await?;
            expect_done(apply_batch(&mut conn, &target, &batch).await?)?;
            conn.commit().await?;
            count(&batch, &mut events, &progress);
        }
        Ok::<_, anyhow::Error>(())
    };
    let (next, written) = tokio::join!(read, write);
    written?;
    let next = next?;

    // Phase 2: under the swap lock (the live projector waits), read what arrived meanwhile,
    // then point readers and the projector at the new schema, all in one transaction.
    let mut swap = model.pool.begin().await?;
    sqlx::query(&format!(
        "SELECT schema_name FROM {META_SCHEMA}.active_model FOR UPDATE"
    ))
    .execute(&mut *swap)
    .await?;
    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let read = source.read(&next, tx);
    let write = async {
        while let Some(batch) = rx.recv().await {
            expect_done(apply_batch(&mut swap, &target, &batch).await?)?;
            count(&batch, &mut events, &progress);
        }
        Ok::<_, anyhow::Error>(())
    };
    let (tail, written) = tokio::join!(read, write);
    written?;
    tail?;
    swap_to(&mut swap, &new_schema).await?;
    swap.commit().await?;
    progress.finish_and_clear();
    tracing::info!(%new_schema, events, "replay: swapped in the new model");

    tokio::time::sleep(config.drop_grace).await;
    model.drop_model(&old_schema).await?;
    Ok(ReplayReport {
        events,
        dead: source.undecodable(),
        elapsed: started.elapsed(),
        old_schema,
        new_schema,
    })
}

fn expect_done(applied: Applied) -> anyhow::Result<()> {
    match applied {
        Applied::Done => Ok(()),
        // A fresh schema read from the start has nothing to disagree with.
        Applied::Reseek(at) => anyhow::bail!("replay read out of order at {at:?}"),
    }
}

fn count(batch: &Batch, events: &mut u64, progress: &ProgressBar) {
    let offsets: i64 = batch
        .ranges
        .values()
        .map(|(first, last)| last - first + 1)
        .sum();
    *events += batch.records.len() as u64;
    progress.inc(offsets as u64);
}

async fn swap_to(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE {META_SCHEMA}.active_model SET schema_name = $1, swapped_at = now()"
    ))
    .bind(schema)
    .execute(&mut *conn)
    .await?;
    // Delivered at commit: query APIs switch to the new schema at once.
    crate::query::progress::notify(conn).await?;
    Ok(())
}

/// The live model's offsets tell how far the log reaches (watermarks are not trusted: tansu
/// reports wrong ones), which gives the progress bar its length and ETA.
async fn progress_bar(model: &ReadModel, config: &ReplayConfig, live: &str) -> ProgressBar {
    let total: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT sum(next_offset)::bigint FROM {live}.consumer_offsets WHERE topic = $1"
    ))
    .bind(&config.log.topic)
    .fetch_one(&model.pool)
    .await
    .unwrap_or(None);
    if !config.show_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.unwrap_or(0).max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("replay {bar:40} {pos}/{len} records  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    bar
}
