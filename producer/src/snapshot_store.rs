//! The snapshot store: the producer's snapshots ([`crate::snapshot`]) in S3, so a start reads
//! only the log's tail.
//!
//! A snapshot is written every few seconds while the state moves and at shutdown, as one
//! object per topic (per partition in `partitions` mode). At start-up,
//! after fencing, the snapshot is loaded only if it checks out against the log: its format
//! and topic match, and for each partition one event it holds is found in the log at its
//! offset with its id (a topic deleted and created again, or another cluster, fails this).
//! Anything else — no snapshot, S3 down, a mismatch — means reading the whole log, as before:
//! slower, never wrong.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use foldline_schemas::wire::{CodecError, EventCodec};
use foldline_service::aws::AwsEndpoint;
use foldline_service::kafka::TopicReader;
use foldline_service::position::Offsets;
use rdkafka::Message;

use crate::metrics::Metrics;
use crate::partitioning::PartitionPolicy;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::store::Store;

/// Why a snapshot could not be read or stored (a start then reads the whole log).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    #[error("reading the snapshot: {0}")]
    Read(String),
    #[error("storing the snapshot: {0}")]
    Store(String),
    #[error(transparent)]
    Format(#[from] SnapshotError),
    #[error("encoding or decoding the snapshot panicked")]
    Panicked,
}

/// An S3 error with its causes, for the log.
fn s3_error(error: impl std::error::Error) -> String {
    aws_sdk_s3::error::DisplayErrorContext(error).to_string()
}

#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotConfig {
    /// Bucket of the producer's snapshots (empty: no snapshots, every start reads the whole
    /// log). Created if missing.
    #[arg(
        long,
        env = "FOLDLINE_SNAPSHOT_BUCKET",
        default_value = "foldline-snapshots"
    )]
    pub snapshot_bucket: String,
    /// S3 API endpoint of the snapshot bucket (empty: AWS itself).
    #[arg(
        long = "snapshot-s3-endpoint",
        env = "FOLDLINE_S3_ENDPOINT",
        default_value = "http://127.0.0.1:9000"
    )]
    pub s3_endpoint: String,
    /// Seconds between snapshots while writes arrive (one more is written at shutdown).
    #[arg(long, env = "FOLDLINE_SNAPSHOT_INTERVAL_SECS", default_value_t = 30)]
    pub snapshot_interval_secs: u64,
    #[command(flatten)]
    pub aws: AwsEndpoint,
}

/// Checks `snapshot` belongs to this topic's log (see the module's docs).
pub async fn check_against_log(
    snapshot: &Snapshot,
    brokers: &str,
    topic: &str,
    codec: &EventCodec,
) -> Result<(), String> {
    snapshot.check_header(topic)?;
    if snapshot.known_events.is_empty() {
        return Ok(());
    }
    let start: Offsets = snapshot
        .known_events
        .iter()
        .map(|(partition, (offset, _))| (*partition, *offset))
        .collect();
    let partitions: Vec<i32> = start.partitions().collect();
    let mut reader = TopicReader::open(
        brokers,
        "foldline-producer-snapshot-check",
        topic,
        &start,
        Some(&partitions),
        false,
    )
    .map_err(|e| e.to_string())?;
    let mut unchecked = snapshot.known_events.clone();
    while !unchecked.is_empty() {
        let Some(message) = reader.next().await.map_err(|e| e.to_string())? else {
            return Err(format!("the log ends before the events {unchecked:?}"));
        };
        let Some((offset, event_id)) = unchecked.remove(&message.partition()) else {
            continue;
        };
        let found = match message.payload() {
            Some(bytes) if message.offset() == offset => match codec.decode_waiting(bytes).await {
                Ok(event) => event.event_id,
                // Its id is known even where this build cannot read the rest of it.
                Err(CodecError::NewerSchema(newer)) => newer.event_id,
                Err(error) => return Err(error.to_string()),
            },
            _ => {
                return Err(format!(
                    "partition {}: no event at offset {offset}",
                    message.partition()
                ))
            }
        };
        if found != event_id {
            return Err(format!(
                "partition {}: offset {offset} holds event {found}, the snapshot says {event_id}",
                message.partition()
            ));
        }
    }
    Ok(())
}

/// The snapshot object of one topic (or, [`SnapshotStore::scoped`], of one of its partitions:
/// in `partitions` mode each owner stores the state of the partitions it writes).
#[derive(Clone)]
pub struct SnapshotStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    topic: String,
    key: String,
}

impl SnapshotStore {
    /// `None` when snapshots are off (no bucket configured).
    pub async fn connect(config: &SnapshotConfig, topic: &str) -> Option<SnapshotStore> {
        if config.snapshot_bucket.is_empty() {
            return None;
        }
        Some(SnapshotStore {
            client: foldline_service::aws::s3_client(&config.aws, &config.s3_endpoint).await,
            bucket: config.snapshot_bucket.clone(),
            topic: topic.to_owned(),
            key: format!("producer/{topic}.json.zst"),
        })
    }

    /// The snapshot of the whole topic (`None`) or of one partition.
    pub fn scoped(&self, partition: Option<i32>) -> SnapshotStore {
        let key = match partition {
            None => format!("producer/{}.json.zst", self.topic),
            Some(partition) => format!("producer/{}/p{partition}.json.zst", self.topic),
        };
        SnapshotStore {
            key,
            ..self.clone()
        }
    }

    /// The stored snapshot, `None` when there is none yet.
    pub async fn load(&self) -> Result<Option<Snapshot>, SnapshotStoreError> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await;
        let object = match got {
            Ok(object) => object,
            Err(error)
                if error.as_service_error().is_some_and(|e| e.is_no_such_key())
                    || error
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() == 404) =>
            {
                return Ok(None)
            }
            Err(error) => return Err(SnapshotStoreError::Read(s3_error(error))),
        };
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| SnapshotStoreError::Read(s3_error(e)))?
            .into_bytes();
        let snapshot = tokio::task::spawn_blocking(move || Snapshot::decode(&bytes))
            .await
            .map_err(|_| SnapshotStoreError::Panicked)??;
        Ok(Some(snapshot))
    }

    /// Stores `snapshot` in place of the previous one (one PUT: readers see one or the
    /// other); answers its size in bytes.
    pub async fn save(&self, snapshot: Snapshot) -> Result<usize, SnapshotStoreError> {
        let bytes = tokio::task::spawn_blocking(move || snapshot.encode())
            .await
            .map_err(|_| SnapshotStoreError::Panicked)??;
        let size = bytes.len();
        let put = |bytes: Vec<u8>| {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .body(ByteStream::from(bytes))
                .send()
        };
        if let Err(error) = put(bytes.clone()).await {
            // The first save on a fresh S3 server: create the bucket, then try once more.
            let missing_bucket = error
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404);
            if !missing_bucket {
                return Err(SnapshotStoreError::Store(s3_error(error)));
            }
            let _ = self
                .client
                .create_bucket()
                .bucket(&self.bucket)
                .send()
                .await;
            put(bytes)
                .await
                .map_err(|e| SnapshotStoreError::Store(s3_error(e)))?;
        }
        Ok(size)
    }
}

/// Loads the stored snapshot into `store` if it checks out; answers what happened, for the
/// log. Never fails the start: without a usable snapshot the whole log is read.
pub async fn restore(
    snapshots: &SnapshotStore,
    store: &Store,
    brokers: &str,
    topic: &str,
    codec: &EventCodec,
) -> String {
    let started = Instant::now();
    // S3 down must not hold the start-up for long: the log alone is enough.
    let loaded = match tokio::time::timeout(Duration::from_secs(10), snapshots.load()).await {
        Ok(Ok(Some(snapshot))) => snapshot,
        Ok(Ok(None)) => return "no snapshot yet: reading the whole log".to_owned(),
        Ok(Err(error)) => return format!("snapshot unavailable ({error}): reading the whole log"),
        Err(_) => {
            return "snapshot unavailable (S3 slower than 10 s): reading the whole log".into()
        }
    };
    if let Err(why) = check_against_log(&loaded, brokers, topic, codec).await {
        return format!("snapshot does not match the log ({why}): reading the whole log");
    }
    if !store.is_behind(&loaded.next_offsets) {
        return format!(
            "the state here already goes as far as the snapshot ({:?}): reading the tail",
            loaded.next_offsets
        );
    }
    let described = format!(
        "snapshot of {} taken {} ({} products, {} keys, next offsets {:?}) loaded in {:?}",
        topic,
        loaded.taken_at,
        loaded.products.len(),
        loaded.answers.len(),
        loaded.next_offsets,
        started.elapsed()
    );
    store.restore(loaded);
    described
}

/// Takes and stores a snapshot now: of the whole state, or with a `scope` (a partition) of
/// that partition's products, keys and offsets.
pub async fn save_now(
    snapshots: &SnapshotStore,
    store: &Store,
    topic: &str,
    policy: &PartitionPolicy,
    scope: Option<i32>,
    metrics: &Metrics,
) -> Result<(), SnapshotStoreError> {
    let started = Instant::now();
    let snapshot = store.snapshot(topic, policy, scope).await;
    let (products, keys) = (snapshot.products.len(), snapshot.answers.len());
    let next_offsets = snapshot.next_offsets.clone();
    let size = match snapshots.save(snapshot).await {
        Ok(size) => size,
        Err(error) => {
            metrics.snapshots.with_label_values(&["failed"]).inc();
            return Err(error);
        }
    };
    metrics.snapshots.with_label_values(&["stored"]).inc();
    metrics.snapshot_bytes.set(size as i64);
    metrics
        .snapshot_stored_at
        .set(chrono::Utc::now().timestamp());
    metrics
        .snapshot_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        products,
        keys,
        ?next_offsets,
        bytes = size,
        elapsed = ?started.elapsed(),
        "snapshot stored"
    );
    Ok(())
}
