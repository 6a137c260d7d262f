//! The archiver: a sink that collects each partition's records into an Avro file and uploads
//! it when it is full (records, bytes) or old enough, then reports the file's range durable.
//!
//! The archive is its own offset store: the listing of a partition's keys says where its
//! archive ends. After a start or a rebalance the sink lists the bucket once, skips records
//! the archive already holds and asks to re-read (`Reseek`) when the consumer is ahead of it,
//! so a file always starts where the previous one ended and a range written again after a
//! crash lands on the same key with the same records.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use foldline_consumer_runtime::{Batch, Flush, Record, Sink, SinkError, Written};
use foldline_service::position::Offsets;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::bucket::{Bucket, BucketError};
use crate::file::{Compression, FileWriter};
use crate::layout::FileRange;

/// When a file is closed and uploaded.
#[derive(clap::Args, Debug, Clone)]
pub struct Rotation {
    /// Most records per file.
    #[arg(long, env = "FOLDLINE_ARCHIVE_FILE_RECORDS", default_value_t = 100_000)]
    pub max_records: usize,
    /// Most (compressed) bytes per file.
    #[arg(long, env = "FOLDLINE_ARCHIVE_FILE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_bytes: usize,
    /// Longest a file stays open after its first record, in seconds.
    #[arg(long, env = "FOLDLINE_ARCHIVE_FILE_SECONDS", default_value_t = 300.0)]
    pub max_seconds: f64,
    /// Block compression.
    #[arg(long, env = "FOLDLINE_ARCHIVE_COMPRESSION", value_enum, default_value_t = Compression::Deflate)]
    pub compression: Compression,
}

pub struct ArchiveSink<B> {
    bucket: B,
    rotation: Rotation,
    /// Per partition, valid for one rebalance generation.
    partitions: BTreeMap<i32, PartitionFiles>,
    generation: Option<u64>,
    /// The archive's end per partition, listed once per generation.
    listed: Option<Offsets>,
    metrics: ArchiveMetrics,
}

struct PartitionFiles {
    partition: i32,
    /// Offsets below this are in uploaded files.
    durable: i64,
    /// Where the next file starts: the end of the last closed file.
    next_start: i64,
    /// Offsets below this are in a file (open, closed or uploaded).
    appended: i64,
    open: Option<OpenFile>,
    /// Closed files waiting for their upload, in offset order.
    closed: VecDeque<ClosedFile>,
}

struct OpenFile {
    start: i64,
    last: i64,
    /// UTC date of the first event; `None` while the file holds only dead-lettered offsets.
    date: Option<NaiveDate>,
    opened: Instant,
    writer: FileWriter,
}

struct ClosedFile {
    range: FileRange,
    /// Shared with each upload attempt, not copied.
    bytes: bytes::Bytes,
    records: usize,
}

impl<B: Bucket> ArchiveSink<B> {
    pub fn new(bucket: B, rotation: Rotation) -> ArchiveSink<B> {
        ArchiveSink {
            bucket,
            metrics: ArchiveMetrics::new(&rotation),
            rotation,
            partitions: BTreeMap::new(),
            generation: None,
            listed: None,
        }
    }

    /// The archive's end per partition (listed at most once per generation).
    async fn archived_end(&mut self, partition: i32) -> Result<Option<i64>, BucketError> {
        if self.listed.is_none() {
            let listing = self.bucket.list().await?;
            self.listed = Some(
                listing
                    .into_iter()
                    .filter_map(|(p, files)| files.last().map(|f| (p, f.next())))
                    .collect(),
            );
        }
        Ok(self.listed.as_ref().and_then(|l| l.get(partition)))
    }

    /// Where each of the batch's partitions stands; the partitions the consumer must re-read
    /// from the archive's end, if any.
    async fn positions(&mut self, batch: &Batch) -> Result<Offsets, BucketError> {
        if self.generation != Some(batch.generation) {
            // After a rebalance every partition is read again from the group's offsets, which
            // never pass what was uploaded: what was held back is read again.
            self.generation = Some(batch.generation);
            self.partitions.clear();
            self.listed = None;
        }
        let mut reseek = Offsets::new();
        for (&partition, &(first, _)) in &batch.ranges {
            if !self.partitions.contains_key(&partition) {
                let start = self.archived_end(partition).await?.unwrap_or(first);
                self.partitions
                    .insert(partition, PartitionFiles::starting_at(partition, start));
            }
            let appended = self.partitions[&partition].appended;
            if !batch.continues_from(partition, appended) {
                reseek.set(partition, appended);
            }
        }
        Ok(reseek)
    }

    /// Adds the batch's records to their partitions' open files, closing a file as soon as it
    /// is full, so files keep to the record and byte limits whatever the batch size.
    fn append(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let (compression, max_records, max_bytes) = (
            self.rotation.compression,
            self.rotation.max_records.max(1),
            self.rotation.max_bytes,
        );
        for record in &batch.records {
            let files = self
                .partitions
                .get_mut(&record.partition)
                .expect("positioned");
            if record.offset < files.appended {
                continue; // already in a file: a redelivery or a retried batch
            }
            let file = files.open_file(compression);
            file.add(record)?;
            let full = file.writer.records >= max_records || file.writer.bytes() >= max_bytes;
            files.appended = record.offset + 1;
            if full {
                files.close()?;
            }
        }
        for (&partition, &(_, last)) in &batch.ranges {
            let files = self.partitions.get_mut(&partition).expect("positioned");
            if last >= files.appended {
                // Dead-lettered offsets at the end belong to the open file's range too.
                files.open_file(compression).last = last;
                files.appended = last + 1;
            }
        }
        Ok(())
    }

    /// Closes every open file that is old enough or full (all of them with `all`).
    fn rotate(&mut self, all: bool) -> anyhow::Result<()> {
        let max_age = Duration::from_secs_f64(self.rotation.max_seconds.max(0.0));
        for files in self.partitions.values_mut() {
            let due = files.open.as_ref().is_some_and(|f| {
                all || f.writer.records >= self.rotation.max_records
                    || f.writer.bytes() >= self.rotation.max_bytes
                    || f.opened.elapsed() >= max_age
            });
            if due {
                files.close()?;
            }
        }
        Ok(())
    }

    /// Uploads closed files, partitions side by side, each in offset order.
    async fn upload(&mut self) -> Result<(), BucketError> {
        let bucket = &self.bucket;
        let metrics = &self.metrics;
        let uploads = self
            .partitions
            .values_mut()
            .filter(|f| !f.closed.is_empty())
            .map(|files| async move {
                while let Some(file) = files.closed.front() {
                    let started = Instant::now();
                    bucket
                        .put(&file.range.key(bucket.prefix()), file.bytes.clone())
                        .await?;
                    metrics
                        .upload_seconds
                        .observe(started.elapsed().as_secs_f64());
                    metrics.files.inc();
                    metrics.last_upload.set(chrono::Utc::now().timestamp());
                    metrics.bytes.inc_by(file.bytes.len() as u64);
                    metrics.records.inc_by(file.records as u64);
                    files.durable = file.range.next();
                    files.closed.pop_front();
                }
                Ok::<_, BucketError>(())
            });
        let results = futures::future::join_all(uploads).await;
        self.metrics.held_records.set(
            self.partitions
                .values()
                .map(|f| f.held_records() as i64)
                .sum(),
        );
        results.into_iter().collect()
    }

    fn durable(&self) -> Offsets {
        self.partitions
            .iter()
            .map(|(p, f)| (*p, f.durable))
            .collect()
    }
}

impl PartitionFiles {
    fn starting_at(partition: i32, offset: i64) -> PartitionFiles {
        PartitionFiles {
            partition,
            durable: offset,
            next_start: offset,
            appended: offset,
            open: None,
            closed: VecDeque::new(),
        }
    }

    fn open_file(&mut self, compression: Compression) -> &mut OpenFile {
        let start = self.next_start;
        self.open.get_or_insert_with(|| OpenFile {
            start,
            last: start - 1,
            date: None,
            opened: Instant::now(),
            writer: FileWriter::new(compression),
        })
    }

    fn close(&mut self) -> anyhow::Result<()> {
        let Some(file) = self.open.take() else {
            return Ok(());
        };
        let range = FileRange {
            partition: self.partition,
            first: file.start,
            last: file.last,
            date: file.date.unwrap_or_else(|| Utc::now().date_naive()),
        };
        self.next_start = file.last + 1;
        let records = file.writer.records;
        self.closed.push_back(ClosedFile {
            range,
            bytes: file.writer.finish()?.into(),
            records,
        });
        Ok(())
    }

    fn held_records(&self) -> usize {
        self.open.as_ref().map_or(0, |f| f.writer.records)
            + self.closed.iter().map(|f| f.records).sum::<usize>()
    }
}

impl OpenFile {
    fn add(&mut self, record: &Record) -> anyhow::Result<()> {
        self.writer.append(record)?;
        self.last = record.offset;
        self.date
            .get_or_insert(record.event.occurred_at.date_naive());
        Ok(())
    }
}

impl<B: Bucket> Sink for ArchiveSink<B> {
    async fn write(&mut self, batch: &Batch) -> Result<Written, SinkError> {
        let reseek = self.positions(batch).await.map_err(bucket_error)?;
        if !reseek.is_empty() {
            return Ok(Written::Reseek(reseek));
        }
        // Idempotent on a retry of the same batch: offsets already appended are skipped.
        self.append(batch)
            .map_err(|error| SinkError::Fatal(error.into()))?;
        self.rotate(false)
            .map_err(|error| SinkError::Fatal(error.into()))?;
        self.upload().await.map_err(bucket_error)?;
        Ok(Written::Partly(self.durable()))
    }

    async fn flush(&mut self, why: Flush) -> Result<Offsets, SinkError> {
        self.rotate(why == Flush::Shutdown)
            .map_err(|error| SinkError::Fatal(error.into()))?;
        self.upload().await.map_err(bucket_error)?;
        Ok(self.durable())
    }

    fn register_metrics(&self, registry: &Registry) {
        self.metrics.register(registry);
    }
}

fn bucket_error(error: BucketError) -> SinkError {
    SinkError::classify(error)
}

#[derive(Clone)]
struct ArchiveMetrics {
    files: IntCounter,
    bytes: IntCounter,
    records: IntCounter,
    held_records: IntGauge,
    upload_seconds: Histogram,
    /// When the last file was uploaded (Unix seconds; the start until then), and the rotation
    /// period: "no file for longer than its rotation period" is an alert on these.
    last_upload: IntGauge,
    rotation_seconds: prometheus::Gauge,
}

impl ArchiveMetrics {
    fn new(rotation: &Rotation) -> ArchiveMetrics {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        ArchiveMetrics {
            files: counter("archive_files_total", "Archive files uploaded"),
            bytes: counter("archive_bytes_total", "Bytes of archive files uploaded"),
            records: counter("archive_records_total", "Records in uploaded archive files"),
            held_records: IntGauge::new(
                "archive_held_records",
                "Records in files not uploaded yet (open or waiting for S3)",
            )
            .expect("valid metric"),
            upload_seconds: Histogram::with_opts(
                HistogramOpts::new("archive_upload_seconds", "Time to upload one file")
                    .buckets(prometheus::exponential_buckets(0.005, 2.0, 14).expect("valid")),
            )
            .expect("valid metric"),
            last_upload: {
                let gauge = IntGauge::new(
                    "archive_last_upload_timestamp_seconds",
                    "When the last file was uploaded, Unix time (the archiver's start until then)",
                )
                .expect("valid metric");
                gauge.set(chrono::Utc::now().timestamp());
                gauge
            },
            rotation_seconds: {
                let gauge = prometheus::Gauge::new(
                    "archive_rotation_seconds",
                    "A file is closed at the latest this long after it opened",
                )
                .expect("valid metric");
                gauge.set(rotation.max_seconds);
                gauge
            },
        }
    }

    fn register(&self, registry: &Registry) {
        for metric in [
            Box::new(self.files.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.bytes.clone()),
            Box::new(self.records.clone()),
            Box::new(self.held_records.clone()),
            Box::new(self.upload_seconds.clone()),
            Box::new(self.last_upload.clone()),
            Box::new(self.rotation_seconds.clone()),
        ] {
            let _ = registry.register(metric);
        }
    }
}

#[cfg(test)]
mod tests;
