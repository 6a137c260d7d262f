//! `GET /events/stream`: one client's stream. A resuming client (`Last-Event-ID`, or
//! `?last_event_id=` for pages that cannot set headers) first gets what it missed — from the
//! feed's memory when it holds that stretch (the usual case: a reconnect after a network blip
//! or after falling behind), else from the hub's one shared reader ([`crate::hub`]) — then
//! the live feed; its cursor skips anything it has already had, so there is no gap
//! and no duplicate. A client that falls further behind than the feed's buffer gets a final
//! `reconnect` event carrying its last id, and the stream ends.
//!
//! Fan-out costs little per client: once a client is in step with the live feed it is sent the
//! feed's own frame of each event (the same bytes for every client, see
//! [`crate::live_event::SharedFrame`]), clients with a filter read their filter's channel (filtered
//! once per event), and a client that is behind gets what the feed holds for it in one write.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::OwnedSemaphorePermit;

use crate::cursor::Cursor;
pub use crate::filter::Filter;
use crate::hub::Membership;
use crate::live_event::{sse_frame, LiveEvent};

/// Streams cut off so far because their client fell behind (told to reconnect): the process's
/// `sse_clients_cut_off_total`.
pub static CUT_OFF: AtomicU64 = AtomicU64::new(0);

/// Seconds from a record's append to its frame being handed to a client's stream, per
/// delivery: the notifier's stage of write → visible (`sse_delivery_delay_seconds`).
pub static DELIVERY_DELAY: std::sync::LazyLock<prometheus::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "sse_delivery_delay_seconds",
                "From a record's append to its frame handed to a client's stream, per delivery",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric")
    });

/// Where a client's first events come from.
pub enum Start {
    /// The live feed only.
    Live,
    /// What it missed, from the feed's memory.
    Memory(VecDeque<Arc<LiveEvent>>),
    /// What it missed, from the hub's shared reader (see [`crate::hub`]).
    Broker(Membership),
}

enum Phase {
    Start(Start),
    Memory(VecDeque<Arc<LiveEvent>>),
    Backlog(Membership),
    Live,
    /// The live feed went on without the client: its last frame tells it to reconnect.
    Lagged,
    Done,
}

/// Frames sent so far, counted by the notifier's `/metrics` (`sse_deliveries_total`).
#[derive(Debug, Default)]
pub struct Deliveries {
    /// The feed's own frame, the same bytes for every client in step.
    pub shared: AtomicU64,
    /// A frame made for one client (resuming, or not yet in step with the feed).
    pub own: AtomicU64,
}

/// Most frames put together into one write to a client that is behind.
const BATCH: usize = 64;
/// A comment this often keeps proxies from closing a quiet stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

struct Client {
    phase: Phase,
    cursor: Cursor,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    filter: Filter,
    /// Once in step with the live feed, the last event sent: its shared frame's cursor is the
    /// client's (`cursor` is no longer kept, which would cost a copy per event).
    in_step: Option<Arc<LiveEvent>>,
    deliveries: Arc<Deliveries>,
    /// The stream's place under the notifier's stream cap, given back when it ends.
    _stream: OwnedSemaphorePermit,
}

/// The frames of one client from `cursor` (where it has got to: the live cursor, or the one it
/// resumes from), starting as `start` says, then `live` (the feed's channel for `filter`).
pub fn client_stream(
    cursor: Cursor,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    start: Start,
    filter: Filter,
    deliveries: Arc<Deliveries>,
    stream: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let client = Client {
        phase: Phase::Start(start),
        cursor,
        live,
        filter,
        in_step: None,
        deliveries,
        _stream: stream,
    };
    // A heartbeat every HEARTBEAT whatever the traffic: resetting a timer per event would
    // cost a timer-wheel update per client per event.
    let heartbeat = Box::pin(tokio::time::sleep(HEARTBEAT));
    futures::stream::unfold(
        (client, heartbeat),
        |(mut client, mut heartbeat)| async move {
            // Every step of `next_frames` is cancel-safe: nothing is taken from a channel
            // without being returned in the same poll.
            let frames = tokio::select! {
                biased;
                frames = client.next_frames() => frames?,
                () = &mut heartbeat => {
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + HEARTBEAT);
                    Bytes::from_static(b": heartbeat\n\n")
                }
            };
            Some((Ok(frames), (client, heartbeat)))
        },
    )
}

impl Client {
    /// The client's own frame of `event` (its cursor as the id).
    fn own_frame(&mut self, event: &LiveEvent) -> Bytes {
        observe_delay(event);
        self.deliveries.own.fetch_add(1, Ordering::Relaxed);
        sse_frame(&self.cursor.to_string(), &event.event_type, &event.data)
    }

    /// The next bytes for the client: one frame or several (a batch when it is behind).
    async fn next_frames(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.phase {
                Phase::Start(_) => {
                    let Phase::Start(start) = std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        unreachable!("matched above")
                    };
                    self.phase = match start {
                        Start::Live => Phase::Live,
                        Start::Memory(missed) => Phase::Memory(missed),
                        Start::Broker(membership) => Phase::Backlog(membership),
                    };
                    // Tell the client how soon to reconnect, and that the stream is open.
                    return Some(Bytes::from_static(b": connected\nretry: 2000\n\n"));
                }
                Phase::Memory(missed) => match missed.pop_front() {
                    Some(event) => {
                        if let Some(sent) = self.deliver(&event) {
                            return Some(sent);
                        }
                    }
                    None => self.phase = Phase::Live,
                },
                Phase::Backlog(membership) => match membership.events.recv().await {
                    Some(event) => {
                        if let Some(sent) = self.deliver(&event) {
                            return Some(sent);
                        }
                    }
                    // The pass ended: caught up as of the log's end then, unless cut.
                    None if membership.cut.load(Ordering::Acquire) => {
                        return Some(self.reconnect())
                    }
                    None => self.phase = Phase::Live,
                },
                Phase::Live => match self.live.recv().await {
                    Ok(event) => {
                        if let Some(sent) = self.live_frames(event) {
                            return Some(sent);
                        }
                    }
                    Err(RecvError::Lagged(_)) => return Some(self.reconnect()),
                    Err(RecvError::Closed) => return None,
                },
                Phase::Lagged => return Some(self.reconnect()),
                Phase::Done => return None,
            }
        }
    }

    /// `first` and whatever else the live feed already holds for the client (up to
    /// [`BATCH`] frames, one write): the shared frames once the client is in step.
    fn live_frames(&mut self, first: Arc<LiveEvent>) -> Option<Bytes> {
        let mut frames: Option<Bytes> = self.live_frame(first);
        let mut batch: Option<bytes::BytesMut> = None;
        for _ in 1..BATCH {
            let next = match self.live.try_recv() {
                Ok(next) => next,
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.phase = Phase::Lagged;
                    break;
                }
                Err(_) => break,
            };
            let Some(frame) = self.live_frame(next) else {
                continue;
            };
            match (&mut batch, frames.take()) {
                (Some(batch), _) => batch.extend_from_slice(&frame),
                (None, None) => frames = Some(frame),
                (None, Some(previous)) => {
                    // Room for a few more; it grows if the batch does (reserving for a full
                    // batch held 64 frames' worth per client for a batch of two).
                    let mut joined =
                        bytes::BytesMut::with_capacity((previous.len() + frame.len()) * 2);
                    joined.extend_from_slice(&previous);
                    joined.extend_from_slice(&frame);
                    batch = Some(joined);
                }
            }
        }
        batch.map(bytes::BytesMut::freeze).or(frames)
    }

    /// One live event's frame for this client, if it wants it.
    fn live_frame(&mut self, event: Arc<LiveEvent>) -> Option<Bytes> {
        let Some(shared) = event.shared.get() else {
            return self.deliver(&event);
        };
        if self.in_step.is_none() && dominated_by(&self.cursor, &shared.before) {
            // Everything up to `before` reached the client (memory, backlog or this channel
            // gave it the rest), so from here its cursor is the feed's.
            self.in_step = Some(event.clone());
        }
        if self.in_step.is_none() {
            return self.deliver(&event);
        }
        if !self.filter.matches(&event) {
            return None;
        }
        observe_delay(&event);
        self.deliveries.shared.fetch_add(1, Ordering::Relaxed);
        let frame = shared.bytes.clone();
        self.in_step = Some(event);
        Some(frame)
    }

    /// Advances the cursor; the client's own frame when it has not had the event and wants it.
    fn deliver(&mut self, event: &LiveEvent) -> Option<Bytes> {
        if self.cursor.has_seen(event.partition, event.offset) {
            return None;
        }
        self.cursor.advance(event.partition, event.offset);
        self.filter.matches(event).then(|| self.own_frame(event))
    }

    /// The last word to a client that fell behind: reconnect from here.
    fn reconnect(&mut self) -> Bytes {
        self.phase = Phase::Done;
        if let Some(last) = self.in_step.take() {
            if let Some(shared) = last.shared.get() {
                self.cursor = shared.after.clone();
            }
        }
        CUT_OFF.fetch_add(1, Ordering::Relaxed);
        let cursor = self.cursor.to_string();
        sse_frame(
            &cursor,
            "reconnect",
            &serde_json::json!({"last_event_id": cursor,
                "reason": "fell behind the live feed; reconnect with this Last-Event-ID"})
            .to_string(),
        )
    }
}

/// True when `cursor` is nowhere past `feed` (the client has seen nothing the feed had not).
fn dominated_by(cursor: &Cursor, feed: &Cursor) -> bool {
    cursor
        .iter()
        .all(|(partition, next)| next <= feed.get(partition).unwrap_or(0))
}

fn observe_delay(event: &LiveEvent) {
    let delay = chrono::Utc::now().timestamp_millis() - event.timestamp_ms;
    DELIVERY_DELAY.observe(delay.max(0) as f64 / 1000.0);
}
