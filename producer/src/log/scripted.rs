//! A lane log in memory whose outcomes a test scripts: commit, abort, an unknown outcome
//! (with or without the events landing), fencing, or holding an append until released.

use std::collections::VecDeque;
use std::sync::Mutex;

use foldline_schemas::Envelope;
use foldline_service::kafka::SetupError;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{oneshot, Notify};

use super::{AppendError, AppendFailed, LaneLog, Position, Trace};
use crate::partitioning::PartitionPolicy;
use crate::store::Store;

/// What the next append does.
pub enum Outcome {
    Commit,
    /// Aborted: nothing appended.
    Abort,
    /// The commit's outcome is unknown to the writer; `landed` says whether the events are
    /// in the log. The lane refuses writes until its tail is read.
    Unknown {
        landed: bool,
    },
    /// Another instance took the lane.
    Fenced,
    /// Waits for the sender (or its drop), then commits.
    Hold(oneshot::Receiver<()>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Health {
    Ready,
    ReadingTail,
    Fenced,
}

pub struct ScriptedLog {
    policy: PartitionPolicy,
    outcomes: Mutex<VecDeque<Outcome>>,
    /// The log: every committed event with its position.
    committed: Mutex<Vec<(Position, Envelope)>>,
    health: Mutex<Health>,
    tail_wanted: Notify,
    /// Signalled whenever an append starts (so a test knows a commit is in flight).
    pub appending: Notify,
}

impl ScriptedLog {
    pub fn new(policy: PartitionPolicy) -> ScriptedLog {
        ScriptedLog {
            policy,
            outcomes: Mutex::default(),
            committed: Mutex::default(),
            health: Mutex::new(Health::Ready),
            tail_wanted: Notify::new(),
            appending: Notify::new(),
        }
    }

    /// The outcome of the next append not yet scripted (later ones commit).
    pub fn then(&self, outcome: Outcome) -> &Self {
        self.outcomes.lock().unwrap().push_back(outcome);
        self
    }

    /// Every event in the log, in append order.
    pub fn events(&self) -> Vec<Envelope> {
        let committed = self.committed.lock().unwrap();
        committed.iter().map(|(_, e)| e.clone()).collect()
    }

    fn commit(&self, events: &[Envelope]) -> Vec<Position> {
        let mut committed = self.committed.lock().unwrap();
        let mut positions = Vec::with_capacity(events.len());
        for event in events {
            let partition = self.policy.partition_of(&event.product_id);
            let offset = committed
                .iter()
                .filter(|(p, _)| p.partition == partition)
                .count() as i64;
            let position = Position { partition, offset };
            committed.push((position, event.clone()));
            positions.push(position);
        }
        positions
    }
}

impl LaneLog for ScriptedLog {
    fn status(&self) -> Result<(), AppendError> {
        match *self.health.lock().unwrap() {
            Health::Ready => Ok(()),
            Health::ReadingTail => Err(AppendError::Unavailable("reading the tail".into())),
            Health::Fenced => Err(AppendError::Fenced),
        }
    }

    fn append<'a>(
        &'a self,
        events: &'a [Envelope],
        _trace: &'a Trace,
    ) -> BoxFuture<'a, Result<Vec<Position>, AppendFailed>> {
        async move {
            self.status()?;
            self.appending.notify_waiters();
            let outcome = self.outcomes.lock().unwrap().pop_front();
            match outcome.unwrap_or(Outcome::Commit) {
                Outcome::Commit => Ok(self.commit(events)),
                Outcome::Hold(release) => {
                    let _ = release.await;
                    Ok(self.commit(events))
                }
                Outcome::Abort => Err(AppendError::Unavailable("aborted".into()).into()),
                Outcome::Fenced => {
                    *self.health.lock().unwrap() = Health::Fenced;
                    Err(AppendError::Fenced.into())
                }
                Outcome::Unknown { landed } => {
                    if landed {
                        self.commit(events);
                    }
                    *self.health.lock().unwrap() = Health::ReadingTail;
                    self.tail_wanted.notify_one();
                    Err(AppendError::OutcomeUnknown("scripted".into()).into())
                }
            }
        }
        .boxed()
    }

    fn tail_wanted(&self) -> BoxFuture<'_, ()> {
        self.tail_wanted.notified().boxed()
    }

    fn read_tail<'a>(&'a self, store: &'a Store) -> BoxFuture<'a, Result<u64, SetupError>> {
        async move {
            let start = store.next_offsets();
            let tail: Vec<(Position, Envelope)> = self
                .committed
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.offset >= start.get(p.partition).unwrap_or(0))
                .cloned()
                .collect();
            for (position, event) in &tail {
                store.apply_logged(event, *position).await;
            }
            Ok(tail.len() as u64)
        }
        .boxed()
    }

    fn resume(&self) {
        let mut health = self.health.lock().unwrap();
        if *health == Health::ReadingTail {
            *health = Health::Ready;
        }
    }
}
