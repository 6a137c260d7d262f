//! Which partitions this instance writes, and with which transactional producer.
//!
//! A *lane* is a set of partitions written through one transactional id, one transaction at
//! a time; [`crate::partitioning::PartitionPolicy`] says how partitions form lanes (`single`:
//! one lane of every partition; `partitions`: a lane per partition, shared between instances
//! by a consumer group, [`group`]). Ownership moves by fencing, because the new owner
//! initialises the lane's transactional id before it reads the partition (fence, then read,
//! then serve). An instance that lost a partition without noticing (a long pause) is fenced
//! at its next commit and drops the lane. Requests for partitions owned elsewhere are
//! forwarded to the owner ([`directory`], `crate::http::forward`).
//!
//! What happens when is decided by [`state::Ownership`], a plain value with unit tests;
//! [`Lanes`] applies its steps (opening writers, reading the state, snapshots).

pub mod directory;
pub mod group;
mod snapshots;
pub mod state;
mod take_over;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use foldline_schemas::wire::EventCodec;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::handler::{HeldLane, Route, Routes};
use crate::log::kafka::KafkaLaneLog;
use crate::log::{AppendError, LaneLog};
use crate::metrics::Metrics;
pub use crate::partitioning::Mode;
use crate::partitioning::PartitionPolicy;
use crate::snapshot_store::SnapshotStore;
use crate::store::Store;
use directory::Directory;
use state::{LaneId, Ownership, Step};
pub use take_over::TakeOverError;

/// A take-over that read at least this many events from the log snapshots at once.
const SNAPSHOT_AFTER_READING: u64 = 10_000;
/// How long a commit may take before its outcome counts as unknown.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long giving a lane up waits for its commits in flight, and for its snapshot.
const GIVE_UP_WAIT: Duration = Duration::from_secs(10);
/// How long a request for a partition that is changing hands (no instance serves it yet)
/// waits for its next owner before it is answered 503. A hand-over takes a fraction of this;
/// waiting here, rather than answering at once, spares the client a backoff that would
/// outlast the hand-over.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

/// A set of partitions written through one transactional producer.
pub struct Lane {
    pub id: LaneId,
    pub partitions: Vec<i32>,
    pub log: Arc<KafkaLaneLog>,
    /// True while the lane takes requests; a request holds a read guard until its commit is
    /// answered, so giving the lane up (the write guard) waits for the commits in flight.
    serving: Arc<RwLock<bool>>,
    closed: CancellationToken,
}

/// What taking over a lane needs: how to fence, where to read the state from.
pub struct LaneSetup {
    pub brokers: String,
    pub topic: String,
    pub transactional_id: String,
    pub max_batch_records: usize,
    pub store: Arc<Store>,
    pub codec: Arc<EventCodec>,
    pub metrics: Metrics,
    pub snapshots: Option<SnapshotStore>,
}

pub struct Lanes {
    pub policy: PartitionPolicy,
    setup: LaneSetup,
    me: Weak<Lanes>,
    inner: Mutex<Inner>,
    pub directory: Option<Arc<Directory>>,
    /// Sent when a lane starts or stops serving here.
    changes: Changes,
}

struct Inner {
    ownership: Ownership,
    /// The lanes that serve (as the ownership says).
    lanes: HashMap<LaneId, Arc<Lane>>,
    /// The take-overs under way, each with the token that stops it.
    taking: HashMap<LaneId, CancellationToken>,
}

/// Wakes the requests waiting in [`Lanes::route`] for a partition to change hands.
type Changes = tokio::sync::watch::Sender<()>;

impl Lanes {
    pub fn new(
        policy: PartitionPolicy,
        setup: LaneSetup,
        directory: Option<Arc<Directory>>,
    ) -> Arc<Lanes> {
        Arc::new_cyclic(|me| Lanes {
            policy,
            setup,
            me: me.clone(),
            inner: Mutex::new(Inner {
                ownership: Ownership::new(policy),
                lanes: HashMap::new(),
                taking: HashMap::new(),
            }),
            directory,
            changes: Changes::new(()),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.setup.store
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    fn serving_lane(&self, partition: i32) -> Option<Arc<Lane>> {
        let inner = self.inner();
        let id = inner.ownership.serving_lane(partition)?;
        inner.lanes.get(&id).cloned()
    }

    /// The partitions served here, sorted.
    pub fn served(&self) -> Vec<i32> {
        self.inner().ownership.served()
    }

    /// Every lane served here.
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        self.inner().lanes.values().cloned().collect()
    }

    /// Ready when the group has given this instance its share and every lane of it serves
    /// with a healthy writer.
    pub fn status(&self) -> Result<(), String> {
        self.inner().ownership.status()?;
        for lane in self.lanes() {
            lane.log.status().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The group gave this instance `partitions`: fence, read and serve each new lane, in
    /// the background, retrying until it serves or is revoked.
    pub fn assigned(&self, partitions: &[i32]) {
        let steps = self.inner().ownership.assign(partitions);
        self.run(steps);
    }

    /// Takes over every partition now (start-up in `single` mode): an error is returned,
    /// not retried.
    pub async fn take_over_all_now(&self) -> Result<(), TakeOverError> {
        let steps = self.inner().ownership.assign(&self.policy.all());
        for step in steps {
            if let Step::TakeOver { lane, partitions } = step {
                let (opened, events) = self.open_lane(lane, &partitions).await?;
                self.start_serving(opened, events);
            }
        }
        Ok(())
    }

    /// The group takes `partitions` away: take-overs stop; lanes wait (up to 10 s) for their
    /// commits in flight, store their snapshots so the next owner reads little, and close.
    pub async fn revoked(&self, partitions: &[i32]) {
        let steps = self.inner().ownership.revoke(partitions);
        for step in steps {
            match step {
                Step::GiveUp { lane } => self.give_up(lane).await,
                other => self.run(vec![other]),
            }
        }
    }

    /// Applies steps that need no waiting (a give-up is awaited by [`Self::revoked`]).
    fn run(&self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::TakeOver { lane, partitions } => self.spawn_take_over(lane, partitions),
                Step::Cancel { lane } => {
                    if let Some(token) = self.inner().taking.remove(&lane) {
                        token.cancel();
                    }
                }
                Step::Close { lane } => {
                    if let Some(lane) = self.remove(lane) {
                        lane.closed.cancel();
                    }
                }
                Step::GiveUp { lane } => {
                    let lanes = self.me.upgrade();
                    tokio::spawn(async move {
                        if let Some(lanes) = lanes {
                            lanes.give_up(lane).await;
                        }
                    });
                }
            }
        }
    }

    fn remove(&self, id: LaneId) -> Option<Arc<Lane>> {
        let lane = self.inner().lanes.remove(&id)?;
        self.count_served(&lane.partitions, false);
        self.changes.send_replace(());
        Some(lane)
    }

    async fn give_up(&self, id: LaneId) {
        let Some(lane) = self.remove(id) else { return };
        match tokio::time::timeout(GIVE_UP_WAIT, lane.serving.write()).await {
            Ok(mut serving) => *serving = false,
            Err(_) => {
                tracing::warn!(partitions = ?lane.partitions, "commits still in flight after 10 s; giving the partitions up anyway (the next owner fences them)")
            }
        }
        lane.closed.cancel();
        self.save_snapshot(&lane).await;
        tracing::info!(partitions = ?lane.partitions, "partitions given up");
    }

    /// Where a request for `partition` goes now. A lane found fenced is handed to the
    /// ownership (see [`Ownership::fenced`]) on the way.
    async fn route_now(&self, partition: i32) -> Route {
        if let Some(lane) = self.serving_lane(partition) {
            let fenced = matches!(lane.log.status(), Err(AppendError::Fenced));
            let steps = if fenced {
                self.inner().ownership.fenced(lane.id)
            } else {
                Vec::new()
            };
            if !steps.is_empty() {
                tracing::warn!(
                    partition,
                    "fenced: another producer initialised this partition's transactional id"
                );
                self.run(steps);
            } else {
                let guard = lane.serving.clone().read_owned().await;
                if *guard {
                    let log: Arc<dyn LaneLog> = lane.log.clone();
                    return Route::Here(HeldLane::new(log, guard));
                }
            }
        }
        Route::Elsewhere {
            owner: self.directory.as_ref().and_then(|d| d.owner_of(partition)),
        }
    }

    /// The gauges of what is served, after `partitions` started (`true`) or stopped.
    fn count_served(&self, partitions: &[i32], served: bool) {
        let metrics = &self.setup.metrics;
        for partition in partitions {
            metrics
                .partition_served
                .with_label_values(&[&partition.to_string()])
                .set(i64::from(served));
        }
        metrics.partitions_served.set(self.served().len() as i64);
    }
}

impl Routes for Lanes {
    fn policy(&self) -> PartitionPolicy {
        self.policy
    }

    /// Where a request for `partition` goes. In `partitions` mode a partition that no
    /// instance is known to serve (it is changing hands: given up here, or being taken over,
    /// or its new owner not yet published) is waited for, up to [`HAND_OVER_WAIT`].
    fn route(&self, partition: i32) -> BoxFuture<'_, Route> {
        async move {
            if self.policy.mode != Mode::Partitions {
                return self.route_now(partition).await;
            }
            let deadline = tokio::time::Instant::now() + HAND_OVER_WAIT;
            let mut lanes_changed = self.changes.subscribe();
            let mut owners_changed = self.directory.as_ref().map(|d| d.changes());
            loop {
                // Marked seen before looking, so a change after the look wakes the wait.
                lanes_changed.borrow_and_update();
                if let Some(owners) = owners_changed.as_mut() {
                    owners.borrow_and_update();
                }
                let route = self.route_now(partition).await;
                if !matches!(route, Route::Elsewhere { owner: None }) {
                    return route;
                }
                let changed = async {
                    match owners_changed.as_mut() {
                        Some(owners) => tokio::select! {
                            _ = lanes_changed.changed() => {}
                            _ = owners.changed() => {}
                        },
                        None => {
                            let _ = lanes_changed.changed().await;
                        }
                    }
                };
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return route;
                }
            }
        }
        .boxed()
    }

    /// One partition served here at random (all partitions in `single` mode), or any when
    /// none is (then forwarded).
    fn partition_for_new(&self) -> i32 {
        let served = self.served();
        if served.is_empty() {
            rand::random_range(0..self.policy.partition_count)
        } else {
            served[rand::random_range(0..served.len())]
        }
    }
}
