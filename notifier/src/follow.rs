//! Following the log into the feed: the last stretch of every partition at start-up (the
//! feed's memory, bounded), then every record after it, reopening at the cursor on failure.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use foldline_schemas::wire::EventCodec;
use foldline_service::kafka::{self, SetupError, TopicReader};
use foldline_service::position::Position;
use rdkafka::Message;

use crate::cursor::Cursor;
use crate::feed::Feed;
use crate::live_event::{decode, LiveEvent};

/// Follows the topic into `feed`, for ever: first the last stretch of every partition up
/// to its committed end (the feed's memory), then every record after it. A failed reader is
/// reopened at the cursor, so no event is skipped.
pub async fn follow(feed: Feed, brokers: String, topic: String, codec: Arc<EventCodec>) {
    // Start near the log's committed end, so start-up does not grow with the log (nobody
    // can be waiting for older history: resuming clients read it themselves).
    let mut cursor = loop {
        match read_history(&brokers, &topic, &codec, feed.keep).await {
            Ok((cursor, recent, covered_from)) => {
                feed.begin(cursor.clone(), recent, covered_from);
                tracing::info!(%cursor, "following the topic from its end");
                break cursor;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the topic's end yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        let mut reader =
            match open_reader(&brokers, "foldline-notifier", &topic, &cursor, true).await {
                Ok(reader) => reader,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the topic yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
        loop {
            match reader.next().await {
                Ok(Some(message)) => {
                    let event = decode(&codec, &message).await.map(Arc::new);
                    let position = Position {
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    cursor.advance(position.partition, position.offset);
                    feed.publish(position, event);
                }
                // A following reader never ends.
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "reading the topic failed; reopening");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

/// Opens a reader on a blocking thread: creating an rdkafka client and reading the topic's
/// metadata block, and must not hold up the async runtime that serves the streams.
pub async fn open_reader(
    brokers: &str,
    client_id: &'static str,
    topic: &str,
    from: &Cursor,
    follow: bool,
) -> Result<TopicReader, SetupError> {
    let (brokers, topic, from) = (brokers.to_owned(), topic.to_owned(), from.clone());
    tokio::task::spawn_blocking(move || {
        TopicReader::open(&brokers, client_id, &topic, &from, None, follow)
    })
    .await
    .map_err(|e| SetupError::Topic {
        topic: String::new(),
        reason: format!("opening a reader failed: {e}"),
    })?
}

/// Reads the last stretch of every partition up to its committed end: the cursor at that
/// end, the last `history` events in timestamp order, and from where per partition they hold
/// every event. Each partition is read back from `history * 4` offsets before its end
/// (transaction markers take offsets too), so this costs the same on a log of a thousand
/// records or of a billion.
async fn read_history(
    brokers: &str,
    topic: &str,
    codec: &EventCodec,
    history: usize,
) -> Result<(Cursor, VecDeque<Arc<LiveEvent>>, Cursor), SetupError> {
    let ends = kafka::committed_ends(brokers, "foldline-notifier-ends", topic).await?;
    let back = (history as i64).saturating_mul(4);
    let from: Cursor = ends
        .iter()
        .map(|(partition, end)| (partition, (end - back).max(0)))
        .collect();
    let mut reader = open_reader(brokers, "foldline-notifier-history", topic, &from, false).await?;
    let mut events = Vec::new();
    while let Some(message) = reader.next().await? {
        if let Some(event) = decode(codec, &message).await {
            events.push(Arc::new(event));
        }
    }
    // The reader's positions: past transaction markers, at each partition's stable end.
    let cursor = reader.positions()?;
    events.sort_by_key(|e| (e.timestamp_ms, e.partition, e.offset));
    let skip = events.len().saturating_sub(history);
    let mut covered_from = from;
    for dropped in &events[..skip] {
        covered_from.advance(dropped.partition, dropped.offset);
    }
    Ok((
        cursor,
        events.into_iter().skip(skip).collect(),
        covered_from,
    ))
}
