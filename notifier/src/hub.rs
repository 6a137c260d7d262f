//! One shared reader for every client that resumes from further back than the feed's memory
//! (issue 25: never a Kafka consumer per client). Clients *join* with their cursor; the hub
//! reads the log once per pass, from the oldest cursor among the clients waiting when the pass
//! starts to the log's end, and hands each decoded event to every member that has not had it.
//! A member's channel ending means "you are caught up as of the pass's end: go live"; a member
//! too slow to take its events is cut (told to reconnect), never waited for. Clients joining
//! during a pass wait for the next one. Joins are bounded: past `max_waiting`, 503.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::cursor::Cursor;
use crate::follow::open_reader;
use crate::live_event::{decode, LiveEvent};
use foldline_schemas::wire::EventCodec;

/// How long a pass waits after its first client for others to join it.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);
/// Events a member may have waiting before it is cut.
const MEMBER_BUFFER: usize = 4096;

/// A client's side of the hub: its events until the pass ends (then the channel closes).
pub struct Membership {
    pub events: mpsc::Receiver<Arc<LiveEvent>>,
    /// Set when the hub cut the member (too slow, or the pass failed): reconnect, do not go
    /// live (events would be missing).
    pub cut: Arc<AtomicBool>,
}

struct Member {
    from: Cursor,
    events: mpsc::Sender<Arc<LiveEvent>>,
    cut: Arc<AtomicBool>,
}

/// Where the hub reads the log.
pub struct Backlog {
    pub brokers: String,
    pub topic: String,
    pub codec: Arc<EventCodec>,
}

#[derive(Clone)]
pub struct BacklogHub {
    joins: mpsc::Sender<Member>,
    /// Passes over the log so far (one reader each).
    pub passes: Arc<AtomicU64>,
}

impl BacklogHub {
    pub fn start(backlog: Arc<Backlog>, max_waiting: usize) -> BacklogHub {
        let (joins, waiting) = mpsc::channel(max_waiting.max(1));
        let passes = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(backlog, waiting, passes.clone()));
        BacklogHub { joins, passes }
    }

    /// Joins the next pass from `from`; `None` when too many clients wait already.
    pub fn join(&self, from: Cursor) -> Option<Membership> {
        let (events, receiver) = mpsc::channel(MEMBER_BUFFER);
        let cut = Arc::new(AtomicBool::new(false));
        let member = Member {
            from,
            events,
            cut: cut.clone(),
        };
        self.joins.try_send(member).ok()?;
        Some(Membership {
            events: receiver,
            cut,
        })
    }
}

async fn run(backlog: Arc<Backlog>, mut waiting: mpsc::Receiver<Member>, passes: Arc<AtomicU64>) {
    while let Some(first) = waiting.recv().await {
        let mut members = vec![first];
        // Clients reconnect in waves (a notifier restart, a network blip): a moment's wait
        // lets one pass serve the whole wave.
        tokio::time::sleep(GATHER).await;
        while let Ok(more) = waiting.try_recv() {
            members.push(more);
        }
        passes.fetch_add(1, Ordering::Relaxed);
        pass(&backlog, &mut members).await;
        // Dropping the senders ends every member's channel: caught up (or cut).
    }
}

/// Where a pass for `members` starts: per partition, the oldest of their cursors (a member
/// whose cursor does not name a partition has seen nothing of it).
fn oldest(members: &[Member]) -> Cursor {
    let mut partitions: Vec<i32> = members
        .iter()
        .flat_map(|m| m.from.iter().map(|(p, _)| p))
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
        .into_iter()
        .map(|p| {
            let from = members
                .iter()
                .map(|m| m.from.get(p).unwrap_or(0))
                .min()
                .unwrap_or(0);
            (p, from)
        })
        .collect()
}

async fn pass(backlog: &Backlog, members: &mut Vec<Member>) {
    let from = oldest(members);
    let mut reader = match open_reader(
        &backlog.brokers,
        "foldline-notifier-backlog",
        &backlog.topic,
        &from,
        false,
    )
    .await
    {
        Ok(reader) => reader,
        Err(error) => {
            tracing::warn!(%error, "cannot read back what clients missed");
            cut_all(members);
            return;
        }
    };
    loop {
        match reader.next().await {
            Ok(Some(message)) => {
                let Some(event) = decode(&backlog.codec, &message).await.map(Arc::new) else {
                    continue;
                };
                members.retain(|member| {
                    if member.from.has_seen(event.partition, event.offset) {
                        return true;
                    }
                    match member.events.try_send(event.clone()) {
                        Ok(()) => true,
                        // Too slow, or gone: cut it rather than wait for it.
                        Err(_) => {
                            member.cut.store(true, Ordering::Release);
                            false
                        }
                    }
                });
                if members.is_empty() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "reading back for clients failed");
                cut_all(members);
                return;
            }
        }
    }
}

fn cut_all(members: &mut Vec<Member>) {
    for member in members.drain(..) {
        member.cut.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(from: &[(i32, i64)]) -> Member {
        let (events, _) = mpsc::channel(1);
        Member {
            from: from.iter().copied().collect(),
            events,
            cut: Arc::default(),
        }
    }

    #[test]
    fn a_pass_starts_at_the_oldest_cursor_of_each_partition() {
        let members = [
            member(&[(0, 10), (1, 4)]),
            member(&[(0, 3), (1, 9), (2, 1)]),
        ];
        assert_eq!(oldest(&members), Cursor::from([(0, 3), (1, 4), (2, 0)]));
    }
}
