//! The archive sink over an in-memory bucket: rotation, what is reported durable, reseeks
//! against what the bucket holds, an S3 outage mid-write, and rebalances.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use foldline_consumer_runtime::Record;
use foldline_schemas::event::ProductDeleted;
use foldline_schemas::{Envelope, Payload};

use super::*;
use crate::bucket::BucketError;
use crate::file::read_file;

#[derive(Clone, Default)]
struct MemoryBucket {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
    down: Arc<AtomicBool>,
}

impl MemoryBucket {
    fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    /// Offsets of the records in each file this sink wrote, by key (objects put by the test
    /// itself, which are not Avro, are left out).
    fn offsets(&self) -> BTreeMap<String, Vec<i64>> {
        let objects = self.objects.lock().unwrap();
        objects
            .iter()
            .filter_map(|(key, bytes)| {
                let records = read_file(bytes).ok()?;
                Some((key.clone(), records.iter().map(|r| r.offset).collect()))
            })
            .collect()
    }

    fn fail_if_down(&self) -> Result<(), BucketError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BucketError::Unavailable("connection refused".into()));
        }
        Ok(())
    }
}

impl Bucket for MemoryBucket {
    fn prefix(&self) -> &str {
        "products"
    }
    async fn list(&self) -> Result<BTreeMap<i32, Vec<FileRange>>, BucketError> {
        self.fail_if_down()?;
        let mut files: BTreeMap<i32, Vec<FileRange>> = BTreeMap::new();
        for key in self.keys() {
            let range = FileRange::parse("products", &key).expect("an archive key");
            files.entry(range.partition).or_default().push(range);
        }
        files.values_mut().for_each(|f| f.sort());
        Ok(files)
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BucketError> {
        self.fail_if_down()?;
        self.objects.lock().unwrap().insert(key.to_owned(), bytes);
        Ok(())
    }
}

fn rotation(max_records: usize) -> Rotation {
    Rotation {
        max_records,
        max_bytes: 64 * 1024 * 1024,
        max_seconds: 300.0,
        compression: Compression::None,
    }
}

fn record(partition: i32, offset: i64) -> Record {
    Record {
        partition,
        offset,
        key: Some(format!("p-{offset}")),
        timestamp_ms: Some(1_700_000_000_000),
        event: Envelope {
            event_id: Default::default(),
            product_id: format!("p-{offset}"),
            version: 1,
            occurred_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            correlation_id: "c".into(),
            idempotency_key: None,
            command_index: None,
            payload: Payload::ProductDeleted(ProductDeleted {}),
            actor: None,
        },
    }
}

/// A batch of records at `offsets` of `partition` (every offset consumed), read in
/// `generation`.
fn batch(partition: i32, offsets: impl IntoIterator<Item = i64>, generation: u64) -> Batch {
    let mut batch = Batch {
        generation,
        ..Batch::default()
    };
    for offset in offsets {
        batch.consumed(partition, offset, 10);
        batch.records.push(record(partition, offset));
    }
    batch
}

fn key(partition: i32, first: i64, last: i64) -> String {
    FileRange {
        partition,
        first,
        last,
        date: chrono::NaiveDate::from_ymd_opt(2023, 11, 14).unwrap(),
    }
    .key("products")
}

#[tokio::test]
async fn full_files_are_uploaded_and_only_their_offsets_reported_durable() {
    let bucket = MemoryBucket::default();
    let mut sink = ArchiveSink::new(bucket.clone(), rotation(3));
    let written = sink.write(&batch(0, 0..7, 0)).await.unwrap();
    assert_eq!(written, Written::Partly(Offsets::from([(0, 6)])));
    assert_eq!(
        bucket.offsets(),
        BTreeMap::from([(key(0, 0, 2), vec![0, 1, 2]), (key(0, 3, 5), vec![3, 4, 5])])
    );
    // Offset 6 is held back in the open file until a flush at shutdown.
    assert_eq!(
        sink.flush(Flush::Idle).await.unwrap(),
        Offsets::from([(0, 6)])
    );
    assert_eq!(
        sink.flush(Flush::Shutdown).await.unwrap(),
        Offsets::from([(0, 7)])
    );
    assert_eq!(bucket.offsets()[&key(0, 6, 6)], [6]);
}

#[tokio::test]
async fn a_file_ends_where_its_batch_ends_even_on_dead_lettered_offsets() {
    let bucket = MemoryBucket::default();
    let mut sink = ArchiveSink::new(bucket.clone(), rotation(100));
    let mut with_letters = batch(1, 10..12, 0);
    with_letters.consumed(1, 12, 0); // dead-lettered: no record
    with_letters.consumed(1, 13, 0);
    sink.write(&with_letters).await.unwrap();
    assert_eq!(
        sink.flush(Flush::Shutdown).await.unwrap(),
        Offsets::from([(1, 14)])
    );
    assert_eq!(
        bucket.offsets(),
        BTreeMap::from([(key(1, 10, 13), vec![10, 11])])
    );
}

#[tokio::test]
async fn a_consumer_ahead_of_the_archive_is_sent_back_to_where_the_archive_ends() {
    let bucket = MemoryBucket::default();
    bucket
        .put(&key(0, 0, 9), Bytes::from_static(b"archived earlier"))
        .await
        .unwrap();
    let mut sink = ArchiveSink::new(bucket.clone(), rotation(100));
    // The group's offsets said 15 (a commit the archive never saw as a file): 10..14 would be
    // missing from the archive.
    let ahead = sink.write(&batch(0, 15..17, 0)).await.unwrap();
    assert_eq!(ahead, Written::Reseek(Offsets::from([(0, 10)])));
    assert_eq!(bucket.keys(), [key(0, 0, 9)], "nothing written");
    // Read again from 10 (and records it holds are skipped): the next file starts at 10.
    let mut again = batch(0, 8..17, 0);
    again.read_from = Offsets::from([(0, 8)]);
    assert_eq!(
        sink.write(&again).await.unwrap(),
        Written::Partly(Offsets::from([(0, 10)]))
    );
    sink.flush(Flush::Shutdown).await.unwrap();
    assert_eq!(
        bucket.offsets()[&key(0, 10, 16)],
        (10..17).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_s3_outage_is_transient_and_the_retried_batch_lands_once() {
    let bucket = MemoryBucket::default();
    let mut sink = ArchiveSink::new(bucket.clone(), rotation(2));
    bucket.down.store(true, Ordering::SeqCst);
    let first = batch(0, 0..4, 0);
    assert!(matches!(
        sink.write(&first).await,
        Err(SinkError::Transient(_))
    ));
    bucket.down.store(false, Ordering::SeqCst);
    // The runtime retries the same batch.
    assert_eq!(
        sink.write(&first).await.unwrap(),
        Written::Partly(Offsets::from([(0, 4)]))
    );
    assert_eq!(
        bucket.offsets(),
        BTreeMap::from([(key(0, 0, 1), vec![0, 1]), (key(0, 2, 3), vec![2, 3])])
    );
}

#[tokio::test]
async fn an_upload_that_fails_after_listing_keeps_the_file_for_the_next_try() {
    let bucket = MemoryBucket::default();
    let mut sink = ArchiveSink::new(bucket.clone(), rotation(2));
    sink.write(&batch(0, 0..1, 0)).await.unwrap(); // listed, file open
    bucket.down.store(true, Ordering::SeqCst);
    let mut next = batch(0, 1..3, 0);
    next.read_from = Offsets::from([(0, 1)]);
    assert!(matches!(
        sink.write(&next).await,
        Err(SinkError::Transient(_))
    ));
    bucket.down.store(false, Ordering::SeqCst);
    assert_eq!(
        sink.write(&next).await.unwrap(),
        Written::Partly(Offsets::from([(0, 2)])),
        "the closed file 0-1 went up; offset 2 is held"
    );
    assert_eq!(bucket.keys(), [key(0, 0, 1)]);
}

#[tokio::test]
async fn after_a_rebalance_held_records_are_dropped_and_the_bucket_listed_again() {
    let bucket = MemoryBucket::default();
    let mut sink = ArchiveSink::new(bucket.clone(), rotation(100));
    sink.write(&batch(0, 0..5, 0)).await.unwrap(); // held in an open file
                                                   // Another instance archived 0..=4 meanwhile, and the group resumes at 5.
    bucket
        .put(&key(0, 0, 4), Bytes::from_static(b"by another instance"))
        .await
        .unwrap();
    let after = sink.write(&batch(0, 5..7, 1)).await.unwrap();
    assert_eq!(after, Written::Partly(Offsets::from([(0, 5)])));
    sink.flush(Flush::Shutdown).await.unwrap();
    assert_eq!(bucket.keys(), [key(0, 0, 4), key(0, 5, 6)]);
}
