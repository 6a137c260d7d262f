//! `GET /events/stream`: one client's stream. A resuming client (`Last-Event-ID`, or
//! `?last_event_id=` for pages that cannot set headers) first gets what it missed — from the
//! feed's memory when it holds that stretch (the usual case: a reconnect after a network blip
//! or after falling behind), else from the hub's one shared reader ([`crate::hub`]) — then
//! the live feed; its cursor skips anything it has already had, so there is no gap
//! and no duplicate. A client that falls further behind than the feed's buffer gets a final
//! `reconnect` event carrying its last id, and the stream ends.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event;
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::OwnedSemaphorePermit;

use crate::cursor::Cursor;
use crate::feed::LiveEvent;
use crate::hub::Membership;

/// Streams cut off so far because their client fell behind (told to reconnect): the process's
/// `sse_clients_cut_off_total`.
pub static CUT_OFF: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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

/// `?type=A,B&product_id=X`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub types: Option<HashSet<String>>,
    pub product_id: Option<String>,
}

impl Filter {
    /// From `?type=A,B` (comma-separated) and `?product_id=`.
    pub fn new(types: Option<&str>, product_id: Option<String>) -> Filter {
        Filter {
            types: types.map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            product_id,
        }
    }

    pub fn matches(&self, event: &LiveEvent) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.contains(&event.event_type))
            && self
                .product_id
                .as_ref()
                .is_none_or(|p| *p == event.product_id)
    }
}

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
    Done,
}

struct Client {
    phase: Phase,
    cursor: Cursor,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    filter: Filter,
    /// The stream's place under the notifier's stream cap, given back when it ends.
    _stream: OwnedSemaphorePermit,
}

/// The events of one client from `cursor` (where it has got to: the live cursor, or the one it
/// resumes from), starting as `start` says, then `live`.
pub fn client_stream(
    cursor: Cursor,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    start: Start,
    filter: Filter,
    stream: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let client = Client {
        phase: Phase::Start(start),
        cursor,
        live,
        filter,
        _stream: stream,
    };
    futures::stream::unfold(client, |mut client| async move {
        let event = client.next_event().await?;
        Some((Ok(event), client))
    })
}

impl Client {
    fn message(&mut self, event: &LiveEvent) -> Event {
        let delay = chrono::Utc::now().timestamp_millis() - event.timestamp_ms;
        DELIVERY_DELAY.observe(delay.max(0) as f64 / 1000.0);
        Event::default()
            .id(self.cursor.to_string())
            .event(&event.event_type)
            .data(&event.data)
    }

    async fn next_event(&mut self) -> Option<Event> {
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
                    return Some(
                        Event::default()
                            .retry(Duration::from_secs(2))
                            .comment("connected"),
                    );
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
                    None if membership.cut.load(std::sync::atomic::Ordering::Acquire) => {
                        return Some(self.reconnect())
                    }
                    None => self.phase = Phase::Live,
                },
                Phase::Live => match self.live.recv().await {
                    Ok(event) => {
                        if let Some(sent) = self.deliver(&event) {
                            return Some(sent);
                        }
                    }
                    Err(RecvError::Lagged(_)) => return Some(self.reconnect()),
                    Err(RecvError::Closed) => return None,
                },
                Phase::Done => return None,
            }
        }
    }

    /// Advances the cursor; the SSE message when the client has not had the event and wants it.
    fn deliver(&mut self, event: &LiveEvent) -> Option<Event> {
        if self.cursor.has_seen(event.partition, event.offset) {
            return None;
        }
        self.cursor.advance(event.partition, event.offset);
        self.filter.matches(event).then(|| self.message(event))
    }

    /// The last word to a client that fell behind: reconnect from here.
    fn reconnect(&mut self) -> Event {
        self.phase = Phase::Done;
        CUT_OFF.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Event::default()
            .id(self.cursor.to_string())
            .event("reconnect")
            .data(
                serde_json::json!({"last_event_id": self.cursor.to_string(),
                "reason": "fell behind the live feed; reconnect with this Last-Event-ID"})
                .to_string(),
            )
    }
}
