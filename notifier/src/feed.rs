//! The live feed: one task follows every partition of the topic from its end and broadcasts
//! each decoded event to every connected client. Clients that resume from an older cursor
//! read what they missed themselves.
//!
//! The feed also keeps the most recent events (read back from the last few hundred offsets
//! of each partition at start-up, then every broadcast one), so a page that opens shows the
//! present at once and continues live from the same cursor. Start-up reads a bounded stretch
//! of the log, never the whole of it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use foldline_schemas::wire::EventCodec;
use foldline_schemas::Envelope;
use foldline_service::kafka::{self, SetupError, TopicReader};
use foldline_service::position::Position;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::broadcast;

use crate::cursor::Cursor;
use crate::filter::Filter;

/// One event as clients get it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub partition: i32,
    pub offset: i64,
    pub event_type: String,
    pub product_id: String,
    /// The record's timestamp: orders the history read back from several partitions.
    pub timestamp_ms: i64,
    /// The envelope as JSON, with its `position`.
    pub data: String,
    /// Set when the feed broadcasts the event: its SSE frame, built once for every client
    /// that is in step with the feed (see [`SharedFrame`]).
    pub shared: OnceLock<SharedFrame>,
}

/// An event's frame as the feed broadcast it: `id:` is the feed's cursor just after the event.
/// A client whose own cursor is no further than `before` in any partition has had everything
/// the feed had before this event (the live feed gave it the rest), so the feed's cursor is its
/// cursor too, and it can be sent these very bytes: one frame per event, not one per client.
#[derive(Debug, Clone)]
pub struct SharedFrame {
    pub before: Cursor,
    pub after: Cursor,
    pub bytes: Bytes,
}

/// One SSE message: `id:`, `event:` and one `data:` line per line of `data`.
pub fn sse_frame(id: &str, event_type: &str, data: &str) -> Bytes {
    let mut frame = String::with_capacity(data.len() + id.len() + event_type.len() + 24);
    frame.push_str("id: ");
    frame.push_str(id);
    frame.push_str("\nevent: ");
    frame.push_str(event_type);
    for line in data.split('\n') {
        frame.push_str("\ndata: ");
        frame.push_str(line);
    }
    frame.push_str("\n\n");
    Bytes::from(frame)
}

/// Decodes a record into a [`LiveEvent`], waiting while the registry is down (never
/// skipping an event for that); `None` only for records that can never decode (the
/// consumers dead-letter those; the feed skips them).
pub async fn decode(codec: &EventCodec, message: &OwnedMessage) -> Option<LiveEvent> {
    let position = Position {
        partition: message.partition(),
        offset: message.offset(),
    };
    let event = match codec.decode_waiting(message.payload()?).await {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%position, %error, "undecodable record left out of the live feed");
            return None;
        }
    };
    LiveEvent::new(
        event,
        position,
        message.timestamp().to_millis().unwrap_or_default(),
    )
}

impl LiveEvent {
    /// The event `event` read at `position`, as clients get it; `None` if it cannot be
    /// written as JSON.
    pub fn new(event: Envelope, position: Position, timestamp_ms: i64) -> Option<LiveEvent> {
        let mut json = serde_json::to_value(&event).ok()?;
        json["position"] = position.to_string().into();
        // Streams are public: an idempotency key is the writer's, and a key seen is a key
        // another writer could try.
        if let Some(fields) = json.as_object_mut() {
            fields.remove("idempotency_key");
        }
        Some(LiveEvent {
            partition: position.partition,
            offset: position.offset,
            event_type: event.event_type().to_string(),
            product_id: event.product_id,
            timestamp_ms,
            data: json.to_string(),
            shared: OnceLock::new(),
        })
    }
}

/// What has been broadcast: the cursor just after it and its last events. One lock for both,
/// taken with each send, so a cursor always matches the events and receivers handed out.
#[derive(Default)]
struct Broadcast {
    cursor: Cursor,
    recent: VecDeque<Arc<LiveEvent>>,
    /// Per partition, the offset from which `recent` holds every event: a client resuming
    /// from there or later is served from memory, with no reader of its own.
    covered_from: Cursor,
    /// One channel per distinct filter among the clients: the feed filters each event once
    /// for all the clients of a filter, and a client never wakes for an event it does not
    /// want. Dropped when its last client has gone.
    filtered: HashMap<Filter, broadcast::Sender<Arc<LiveEvent>>>,
    /// `filtered`'s size at which channels without clients are dropped when a new filter
    /// comes: streams that come and go while no event is published leave nothing behind.
    prune_at: usize,
}

/// The least `prune_at`: pruning is amortized over at least this many new filters.
const PRUNE_AT_LEAST: usize = 64;

impl Broadcast {
    /// Keeps `event` among the recent ones, at most `keep` of them.
    fn remember(&mut self, event: Arc<LiveEvent>, keep: usize) {
        if keep == 0 {
            self.covered_from.advance(event.partition, event.offset);
            return;
        }
        if self.recent.len() >= keep {
            if let Some(evicted) = self.recent.pop_front() {
                self.covered_from.advance(evicted.partition, evicted.offset);
            }
        }
        self.recent.push_back(event);
    }
}

/// What a resuming client needs from memory: the events it has not had, then the live feed.
pub struct Resumed {
    pub missed: VecDeque<Arc<LiveEvent>>,
    pub live: broadcast::Receiver<Arc<LiveEvent>>,
}

/// The live feed's shared state: handed to every request, fed by [`follow`] (or a test).
#[derive(Clone)]
pub struct Feed {
    live: broadcast::Sender<Arc<LiveEvent>>,
    broadcast: Arc<Mutex<Broadcast>>,
    /// True once the topic's end is known and the feed follows from there.
    pub caught_up: Arc<AtomicBool>,
    /// How many recent events memory keeps.
    keep: usize,
    /// The channels' capacity: how far a client may fall behind.
    capacity: usize,
}

impl Feed {
    /// A feed that has read nothing yet. `capacity` bounds what a slow client may fall
    /// behind before it is told to reconnect (memory is shared by all clients, not per
    /// client); `history` is how many recent events are kept for pages that open.
    pub fn new(capacity: usize, history: usize) -> Feed {
        // What memory keeps: the page's history, and at least as much as a client may fall
        // behind the live feed, so a client told to reconnect resumes from memory.
        let keep = history.max(capacity);
        let (live, _) = broadcast::channel(capacity.max(1));
        Feed {
            live,
            broadcast: Arc::default(),
            caught_up: Arc::new(AtomicBool::new(false)),
            keep,
            capacity: capacity.max(1),
        }
    }

    /// The feed starts following from `cursor` (the log's end), with the `recent` events
    /// before it, which hold every event from `covered_from` on: streams may open now.
    pub fn begin(&self, cursor: Cursor, recent: VecDeque<Arc<LiveEvent>>, covered_from: Cursor) {
        *self.broadcast.lock().expect("not poisoned") = Broadcast {
            cursor,
            recent,
            covered_from,
            filtered: HashMap::new(),
            prune_at: PRUNE_AT_LEAST,
        };
        self.caught_up.store(true, Ordering::Release);
    }

    /// The record at `position` was read: the cursor moves past it and its event, if it
    /// decoded, goes to every client. An undecodable record is skipped on every path, so
    /// memory covers it.
    pub fn publish(&self, position: Position, event: Option<Arc<LiveEvent>>) {
        let mut shared = self.broadcast.lock().expect("not poisoned");
        let before = shared.cursor.clone();
        shared.cursor.advance(position.partition, position.offset);
        let Some(event) = event else {
            return;
        };
        let after = shared.cursor.clone();
        let bytes = sse_frame(&after.to_string(), &event.event_type, &event.data);
        let _ = event.shared.set(SharedFrame {
            before,
            after,
            bytes,
        });
        shared.remember(event.clone(), self.keep);
        shared.filtered.retain(|filter, channel| {
            if channel.receiver_count() == 0 {
                return false;
            }
            if filter.matches(&event) {
                let _ = channel.send(event.clone());
            }
            true
        });
        let _ = self.live.send(event);
    }

    /// A receiver of every event from now on that `filter` accepts, and the cursor it
    /// starts at.
    pub fn subscribe(&self, filter: &Filter) -> (Cursor, broadcast::Receiver<Arc<LiveEvent>>) {
        let mut broadcast = self.broadcast.lock().expect("not poisoned");
        let live = self.receiver(&mut broadcast, filter);
        (broadcast.cursor.clone(), live)
    }

    /// A receiver of `filter`'s channel (the whole feed for a filter that accepts all),
    /// made under the broadcast lock.
    fn receiver(
        &self,
        broadcast: &mut Broadcast,
        filter: &Filter,
    ) -> broadcast::Receiver<Arc<LiveEvent>> {
        if filter.accepts_all() {
            return self.live.subscribe();
        }
        if broadcast.filtered.len() >= broadcast.prune_at
            && !broadcast.filtered.contains_key(filter)
        {
            broadcast
                .filtered
                .retain(|_, channel| channel.receiver_count() > 0);
            broadcast.prune_at = (broadcast.filtered.len() * 2).max(PRUNE_AT_LEAST);
        }
        broadcast
            .filtered
            .entry(filter.clone())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Distinct filters with a channel of their own (each filtered once per event).
    pub fn filter_channels(&self) -> usize {
        self.broadcast.lock().expect("not poisoned").filtered.len()
    }

    /// Up to `limit` of the most recent events that `keep` accepts, oldest first, and the
    /// cursor just after the newest event broadcast: a stream resumed from that cursor
    /// continues with no gap and no duplicate.
    pub fn recent(
        &self,
        limit: usize,
        keep: impl Fn(&LiveEvent) -> bool,
    ) -> (Cursor, Vec<Arc<LiveEvent>>) {
        let broadcast = self.broadcast.lock().expect("not poisoned");
        let mut events: Vec<_> = broadcast
            .recent
            .iter()
            .rev()
            .filter(|e| keep(e))
            .take(limit)
            .cloned()
            .collect();
        events.reverse();
        (broadcast.cursor.clone(), events)
    }

    pub fn clients(&self) -> usize {
        let broadcast = self.broadcast.lock().expect("not poisoned");
        self.live.receiver_count()
            + broadcast
                .filtered
                .values()
                .map(broadcast::Sender::receiver_count)
                .sum::<usize>()
    }

    /// The cursor just after the last record the feed has read.
    pub fn cursor(&self) -> Cursor {
        self.broadcast.lock().expect("not poisoned").cursor.clone()
    }

    /// The topic's partitions, as far as the feed has read it (its cursor names every one).
    pub fn partitions(&self) -> Vec<i32> {
        let broadcast = self.broadcast.lock().expect("not poisoned");
        broadcast.cursor.iter().map(|(p, _)| p).collect()
    }

    /// When the recent events hold everything after `from`: those events and a receiver of
    /// the live feed from just after them, taken under one lock (no gap, no duplicate).
    /// `None` when `from` is older than what memory holds.
    pub fn resume(&self, from: &Cursor, filter: &Filter) -> Option<Resumed> {
        let mut broadcast = self.broadcast.lock().expect("not poisoned");
        let covered = broadcast.cursor.iter().all(|(partition, _)| {
            from.get(partition).unwrap_or(0) >= broadcast.covered_from.get(partition).unwrap_or(0)
        });
        if !covered {
            return None;
        }
        let missed = broadcast
            .recent
            .iter()
            .filter(|e| !from.has_seen(e.partition, e.offset))
            .cloned()
            .collect();
        let live = self.receiver(&mut broadcast, filter);
        Some(Resumed { missed, live })
    }
}

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
