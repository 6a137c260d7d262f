//! Reading the archive back: each partition's files in offset order, fetched ahead and
//! decoded off the async threads, for rebuilds and for restoring a topic.

use std::collections::BTreeMap;

use foldline_consumer_runtime::Record;
use foldline_service::position::Offsets;
use foldline_service::retry::{self, Retryable, Transient};
use tokio::sync::mpsc;

use crate::bucket::ArchiveBucket;
use crate::file::read_file;
use crate::layout::{check_continuity, Continuity, FileRange};

/// Files fetched and decoded at once while reading: enough to keep both cores decoding while
/// the reader folds, few enough to bound memory (a file is at most a few MiB of records).
const FILES_AHEAD: usize = 4;

/// The archive as listed when opened.
pub struct ArchiveReader {
    bucket: ArchiveBucket,
    pub files: BTreeMap<i32, Vec<FileRange>>,
}

/// One file's records that lie at or after the requested offsets.
pub struct FileRecords {
    pub range: FileRange,
    pub records: Vec<Record>,
}

impl ArchiveReader {
    /// Lists the archive. Gaps between a partition's files are reported (they mean history
    /// that is not in the archive) but do not stop the read.
    pub async fn open(bucket: ArchiveBucket) -> anyhow::Result<ArchiveReader> {
        let files = bucket.list().await?;
        for (partition, ranges) in &files {
            match check_continuity(ranges) {
                Ok(()) => {}
                Err(Continuity::Gap { after, next_first }) => tracing::warn!(
                    partition,
                    after,
                    next_first,
                    "the archive misses offsets between two files"
                ),
                // Read anyway: offsets already read are skipped, so nothing is doubled.
                Err(Continuity::Overlap { first, second }) => {
                    tracing::warn!(partition, ?first, ?second, "two archive files overlap")
                }
            }
        }
        Ok(ArchiveReader { bucket, files })
    }

    /// The offset after the archive's last file, per partition.
    pub fn ends(&self) -> Offsets {
        self.files
            .iter()
            .filter_map(|(p, f)| f.last().map(|f| (*p, f.next())))
            .collect()
    }

    /// How many offsets the archive covers at or after `from` (for progress bars).
    pub fn offsets_after(&self, from: &Offsets) -> u64 {
        self.files
            .iter()
            .flat_map(|(p, files)| {
                let start = from.get(*p).unwrap_or(0);
                files
                    .iter()
                    .map(move |f| (f.last - f.first.max(start) + 1).max(0) as u64)
            })
            .sum()
    }

    /// Streams the files holding offsets at or after `from` (per partition; absent = 0),
    /// partition by partition in offset order, [`FILES_AHEAD`] files fetched and decoded at once.
    pub fn stream(&self, from: &Offsets) -> mpsc::Receiver<anyhow::Result<FileRecords>> {
        let (tx, rx) = mpsc::channel(2);
        let bucket = self.bucket.clone();
        let wanted: Vec<(FileRange, i64)> = self
            .files
            .iter()
            .flat_map(|(p, files)| {
                let start = from.get(*p).unwrap_or(0);
                files
                    .iter()
                    .filter(move |f| f.last >= start)
                    .map(move |f| (*f, start))
            })
            .collect();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut next = Offsets::new();
            // Files fetched and decoded several at a time (decoding runs on the blocking
            // pool, so it spreads over the cores), handed on in order.
            let mut fetched = futures::stream::iter(wanted)
                .map(|(range, start)| {
                    let bucket = bucket.clone();
                    async move { (range, start, fetch(&bucket, range).await) }
                })
                .buffered(FILES_AHEAD);
            while let Some((range, start, read)) = fetched.next().await {
                let sent = match read {
                    Ok(mut records) => {
                        let floor = next.get(range.partition).unwrap_or(start).max(start);
                        records.retain(|r| r.offset >= floor);
                        next.set(range.partition, range.next().max(floor));
                        tx.send(Ok(FileRecords { range, records })).await
                    }
                    Err(error) => tx.send(Err(error)).await,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

async fn fetch(bucket: &ArchiveBucket, range: FileRange) -> anyhow::Result<Vec<Record>> {
    let key = range.key(&bucket.prefix);
    let bytes = (|| bucket.get(&key))
        .retry(retry::forever(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
        ))
        .when(|error| error.is_transient())
        .notify(|error, _| {
            tracing::warn!(%error, key, "S3 unavailable while reading the archive; retrying");
        })
        .await?;
    let records = tokio::task::spawn_blocking(move || read_file(&bytes))
        .await?
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    Ok(records)
}
