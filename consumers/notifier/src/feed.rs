//! The live feed: one task follows every partition of the topic from its end (found at
//! start-up, without reading the log) and broadcasts each decoded event to every connected
//! client. Clients that resume from an older cursor read what they missed themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldline_schemas::wire::EventCodec;
use foldline_service::kafka::{self, TopicReader};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::broadcast;

use crate::cursor::Cursor;

/// One event as clients get it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub partition: i32,
    pub offset: i64,
    pub event_type: String,
    pub product_id: String,
    /// The envelope as JSON, with its `position`.
    pub data: String,
}

/// Decodes a record into a [`LiveEvent`], waiting while the registry is down (never
/// skipping an event for that); `None` only for records that can never decode (the
/// consumers dead-letter those; the feed skips them).
pub async fn decode(codec: &EventCodec, message: &OwnedMessage) -> Option<LiveEvent> {
    let event = codec.decode_waiting(message.payload()?).await.ok()?;
    let mut json = serde_json::to_value(&event).ok()?;
    json["position"] = format!("{}:{}", message.partition(), message.offset()).into();
    Some(LiveEvent {
        partition: message.partition(),
        offset: message.offset(),
        event_type: event.event_type().to_string(),
        product_id: event.product_id,
        data: json.to_string(),
    })
}

pub struct Feed {
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// What has been broadcast, per partition. Updated together with each send, under this
    /// lock, so a subscriber gets a cursor that matches its receiver exactly.
    broadcast_cursor: Arc<Mutex<Cursor>>,
    /// True once the topic's end is known and the feed follows from there.
    pub caught_up: Arc<AtomicBool>,
}

impl Feed {
    /// A receiver of every event from now on, and the cursor it starts at.
    pub fn subscribe(&self) -> (Cursor, broadcast::Receiver<Arc<LiveEvent>>) {
        let cursor = self.broadcast_cursor.lock().expect("not poisoned");
        (cursor.clone(), self.live.subscribe())
    }

    pub fn clients(&self) -> usize {
        self.live.receiver_count()
    }
}

/// Starts the tailer. `capacity` bounds what a slow client may fall behind before it is told
/// to reconnect (memory is shared by all clients, not per client).
pub fn start(brokers: String, topic: String, codec: Arc<EventCodec>, capacity: usize) -> Feed {
    let (live, _) = broadcast::channel(capacity);
    let caught_up = Arc::new(AtomicBool::new(false));
    let broadcast_cursor = Arc::new(Mutex::new(Cursor::default()));
    let feed = Feed {
        live: live.clone(),
        broadcast_cursor: broadcast_cursor.clone(),
        caught_up: caught_up.clone(),
    };
    tokio::spawn(async move {
        let mut cursor = Cursor::default();
        // Start at the log's committed end, so start-up does not grow with the log (nobody
        // can be waiting for history: resuming clients read it themselves).
        loop {
            match kafka::committed_ends(&brokers, "foldline-notifier-ends", &topic).await {
                Ok(ends) => {
                    for (partition, end) in ends {
                        cursor.0.insert(partition, end);
                    }
                    *broadcast_cursor.lock().expect("not poisoned") = cursor.clone();
                    caught_up.store(true, Ordering::Release);
                    tracing::info!(%cursor, "following the topic from its end");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot find the topic's end yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        loop {
            // A failed reader is reopened at the cursor, so no event is skipped.
            let start = cursor.0.iter().map(|(p, o)| (*p, *o)).collect();
            let mut reader = match TopicReader::open(
                &brokers,
                "foldline-notifier",
                &topic,
                &start,
                None,
                true,
            ) {
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
                        let event = decode(&codec, &message).await;
                        cursor.advance(message.partition(), message.offset());
                        let mut shared = broadcast_cursor.lock().expect("not poisoned");
                        shared.advance(message.partition(), message.offset());
                        if let Some(event) = event {
                            let _ = live.send(Arc::new(event));
                        }
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
    });
    feed
}
