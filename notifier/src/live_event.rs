//! One event as the notifier's clients get it: decoded from its record, written as JSON with
//! its position, and framed as an SSE message once for every client in step with the feed.

use std::sync::OnceLock;

use bytes::Bytes;
use foldline_schemas::read::NewerEvent;
use foldline_schemas::wire::{CodecError, EventCodec};
use foldline_schemas::Envelope;
use foldline_service::position::Position;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use crate::cursor::Cursor;

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
    let timestamp_ms = message.timestamp().to_millis().unwrap_or_default();
    let event = match codec.decode_waiting(message.payload()?).await {
        Ok(event) => event,
        // Streamed as written (clients expect types they do not know): a live view loses
        // nothing by showing what it cannot interpret.
        Err(CodecError::NewerSchema(newer)) => {
            let NewerEvent {
                product_id,
                event_type,
                json,
                ..
            } = *newer;
            return LiveEvent::from_json(json, event_type, product_id, position, timestamp_ms);
        }
        Err(error) => {
            tracing::warn!(%position, %error, "undecodable record left out of the live feed");
            return None;
        }
    };
    LiveEvent::new(event, position, timestamp_ms)
}

impl LiveEvent {
    /// The event `event` read at `position`, as clients get it; `None` if it cannot be
    /// written as JSON.
    pub fn new(event: Envelope, position: Position, timestamp_ms: i64) -> Option<LiveEvent> {
        let json = serde_json::to_value(&event).ok()?;
        let event_type = event.event_type().to_string();
        LiveEvent::from_json(json, event_type, event.product_id, position, timestamp_ms)
    }

    /// The event whose JSON form (the envelope's shape) is `json`.
    pub fn from_json(
        mut json: serde_json::Value,
        event_type: String,
        product_id: String,
        position: Position,
        timestamp_ms: i64,
    ) -> Option<LiveEvent> {
        json["position"] = position.to_string().into();
        // Streams are public: an idempotency key is the writer's, and a key seen is a key
        // another writer could try.
        if let Some(fields) = json.as_object_mut() {
            fields.remove("idempotency_key");
        }
        Some(LiveEvent {
            partition: position.partition,
            offset: position.offset,
            event_type,
            product_id,
            timestamp_ms,
            data: json.to_string(),
            shared: OnceLock::new(),
        })
    }
}
