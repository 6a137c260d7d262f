//! Reading the tail of the log into the [`Store`]: when a lane is taken over (from where the
//! state ends: the beginning, or a snapshot) and after a commit with an unknown outcome — in
//! both cases only after the transactional producer has fenced earlier instances (see
//! `ownership`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use foldline_schemas::wire::{CodecError, EventCodec};
use foldline_service::kafka::{self, SetupError, TopicReader};
use rdkafka::Message;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::writer::Position;
use foldline_service::position::Offsets;

/// How long a transaction an earlier instance left behind may take to be decided.
const DECISION_LIMIT: Duration = Duration::from_secs(60);

/// Folds every committed event of `partitions` after the store's offsets into the store;
/// returns how many events were read. Undecodable records are skipped (and counted); a registry outage is
/// waited out, never skipped, so the state cannot silently miss events.
///
/// Reading to the end is not enough right after fencing: a commit the previous instance sent
/// just before it died may be decided by the broker a moment after `init_transactions`
/// returned (seen on tansu: the restarted producer read up to the pending transaction, the
/// commit marker landed after it, and a retried command was decided again on a state without
/// its first copy). So the ends of the log *including* undecided records are taken first, and
/// committed records are read until every one of those has been decided.
pub async fn read_tail(
    brokers: &str,
    topic: &str,
    partitions: &[i32],
    store: &Store,
    codec: &EventCodec,
    metrics: &Metrics,
) -> Result<u64, SetupError> {
    let start = store.next_offsets();
    let (mut events, mut positions) =
        fold_committed(brokers, topic, partitions, store, codec, metrics, &start).await?;
    let ends = kafka::undecided_ends(
        brokers,
        "foldline-producer-ends",
        topic,
        &positions,
        Some(partitions),
    )
    .await?;
    let started = Instant::now();
    loop {
        let undecided: BTreeMap<i32, (i64, i64)> = ends
            .iter()
            .filter_map(|(partition, end)| {
                let at = positions.get(partition).unwrap_or(0);
                (at < end).then_some((partition, (at, end)))
            })
            .collect();
        if undecided.is_empty() {
            return Ok(events);
        }
        if started.elapsed() > DECISION_LIMIT {
            return Err(SetupError::Timeout(DECISION_LIMIT));
        }
        tracing::info!(?undecided, "waiting for a transaction of an earlier instance to be decided (partition: (read up to, log end))");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (more, next) = fold_committed(
            brokers, topic, partitions, store, codec, metrics, &positions,
        )
        .await?;
        events += more;
        positions = next;
    }
}

/// Folds committed records of `partitions` from `start` to their ends; returns how many and
/// the reader's positions there (past markers and aborted records).
async fn fold_committed(
    brokers: &str,
    topic: &str,
    partitions: &[i32],
    store: &Store,
    codec: &EventCodec,
    metrics: &Metrics,
    start: &Offsets,
) -> Result<(u64, Offsets), SetupError> {
    let mut reader = TopicReader::open(
        brokers,
        "foldline-producer-replay",
        topic,
        start,
        Some(partitions),
        false,
    )?;
    let mut events = 0_u64;
    while let Some(message) = reader.next().await? {
        events += 1;
        let position = Position {
            partition: message.partition(),
            offset: message.offset(),
        };
        let Some(bytes) = message.payload() else {
            store.note_positions(&[position]);
            continue;
        };
        match codec.decode_waiting(bytes).await {
            Ok(envelope) => {
                store.apply_logged(&envelope, position).await;
                metrics.replayed_events.inc();
            }
            // Its product's state here would be wrong from this event on: commands on it are
            // refused (503) until a build that reads it takes over.
            Err(CodecError::NewerSchema(newer)) => {
                tracing::error!(%newer, %position, product = %newer.product_id,
                    "event written by a newer schema: the product takes no commands here");
                store.mark_unreadable(&newer.product_id, &newer.to_string());
                store.note_positions(&[position]);
            }
            Err(error) => {
                tracing::warn!(%error, %position, "skipping undecodable record");
                metrics.undecodable_events.inc();
                store.note_positions(&[position]);
            }
        }
    }
    Ok((events, reader.positions()?))
}
