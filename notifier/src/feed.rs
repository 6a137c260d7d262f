//! The live feed: one task ([`crate::follow::follow`]) follows every partition of the topic
//! from its end and broadcasts each decoded event to every connected client. Clients that
//! resume from an older cursor read what they missed themselves.
//!
//! The feed also keeps the most recent events (read back from the last few hundred offsets
//! of each partition at start-up, then every broadcast one), so a page that opens shows the
//! present at once and continues live from the same cursor. Start-up reads a bounded stretch
//! of the log, never the whole of it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use foldline_service::position::Position;
use tokio::sync::broadcast;

use crate::cursor::Cursor;
use crate::filter::Filter;
use crate::live_event::{sse_frame, LiveEvent, SharedFrame};

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
    pub(crate) keep: usize,
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
