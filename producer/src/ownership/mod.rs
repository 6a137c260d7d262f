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
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use foldline_schemas::wire::EventCodec;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::handler::{HeldLane, Route, Routes};
use crate::log::kafka::KafkaLaneLog;
use crate::log::{keep_reading_the_tail, AppendError, LaneLog};
use crate::metrics::Metrics;
pub use crate::partitioning::Mode;
use crate::partitioning::PartitionPolicy;
use crate::snapshot_store::{self, SnapshotStore};
use crate::store::Store;
use crate::writer::{Writer, WriterConfig};
use directory::Directory;
use state::{LaneId, Ownership, Step};

/// A take-over that read at least this many events from the log snapshots at once.
const SNAPSHOT_AFTER_READING: u64 = 10_000;
/// Periodic snapshots take at most 1/this of the time (see `spawn_periodic_snapshots`).
const SNAPSHOT_DUTY_DIVISOR: u32 = 20;
/// How long a commit may take before its outcome counts as unknown.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long giving a lane up waits for its commits in flight, and for its snapshot.
const GIVE_UP_WAIT: Duration = Duration::from_secs(10);

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
}

struct Inner {
    ownership: Ownership,
    /// The lanes that serve (as the ownership says).
    lanes: HashMap<LaneId, Arc<Lane>>,
    /// The take-overs under way, each with the token that stops it.
    taking: HashMap<LaneId, CancellationToken>,
}

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
    pub async fn take_over_all_now(&self) -> anyhow::Result<()> {
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

    fn spawn_take_over(&self, id: LaneId, partitions: Vec<i32>) {
        let token = CancellationToken::new();
        self.inner().taking.insert(id, token.clone());
        let Some(lanes) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                let attempt = tokio::select! {
                    _ = token.cancelled() => return,
                    attempt = lanes.open_lane(id, &partitions) => attempt,
                };
                match attempt {
                    Ok((lane, events)) => {
                        lanes.inner().taking.remove(&id);
                        lanes.start_serving(lane, events);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), ?partitions, "taking over failed; trying again");
                        tokio::select! {
                            _ = token.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    /// Puts a lane that has read its partitions into service, unless they were revoked
    /// meanwhile. A lane that had to read many events snapshots at once, so the next owner
    /// does not.
    fn start_serving(&self, lane: Arc<Lane>, events_read: u64) {
        {
            let mut inner = self.inner();
            if !inner.ownership.opened(lane.id) {
                drop(inner);
                lane.closed.cancel();
                return;
            }
            inner.lanes.insert(lane.id, lane.clone());
        }
        self.count_served(&lane.partitions, true);
        tokio::spawn(keep_reading_the_tail(
            lane.log.clone(),
            self.setup.store.clone(),
            lane.closed.clone(),
        ));
        if let Some(directory) = &self.directory {
            directory.publish(&lane.partitions);
        }
        tracing::info!(partitions = ?lane.partitions, "serving");
        if events_read >= SNAPSHOT_AFTER_READING {
            if let Some(lanes) = self.me.upgrade() {
                tokio::spawn(async move { lanes.save_snapshot(&lane).await });
            }
        }
    }

    /// Fences the lane's transactional id, then loads its partitions' state: the snapshot
    /// when it is ahead of what the store holds, then the log's tail.
    async fn open_lane(&self, id: LaneId, partitions: &[i32]) -> anyhow::Result<(Arc<Lane>, u64)> {
        use anyhow::Context;
        let started = Instant::now();
        let setup = &self.setup;
        let config = WriterConfig {
            brokers: setup.brokers.clone(),
            topic: setup.topic.clone(),
            transactional_id: self
                .policy
                .transactional_id(&setup.transactional_id, partitions),
            max_batch_records: setup.max_batch_records,
            commit_timeout: COMMIT_TIMEOUT,
        };
        let transactional_id = config.transactional_id.clone();
        let metrics = setup.metrics.clone();
        // Fence: init_transactions completes or aborts what an earlier owner left open.
        let writer = tokio::task::spawn_blocking(move || Writer::start(config, metrics))
            .await
            .context("the writer's start panicked")?
            .context("initialising the transactional producer")?;
        tracing::info!(%transactional_id, ?partitions, "transactional producer initialised; earlier owners fenced");
        let log = Arc::new(KafkaLaneLog {
            writer,
            codec: setup.codec.clone(),
            policy: self.policy,
            brokers: setup.brokers.clone(),
            topic: setup.topic.clone(),
            partitions: partitions.to_vec(),
            metrics: setup.metrics.clone(),
        });
        // Read: the snapshot (if it is ahead of this store), then the tail.
        if let Some(snapshots) = &setup.snapshots {
            let outcome = snapshot_store::restore(
                &snapshots.scoped(self.policy.snapshot_scope(partitions)),
                &setup.store,
                &setup.brokers,
                &setup.topic,
                &setup.codec,
            )
            .await;
            tracing::info!(?partitions, "{outcome}");
        }
        let events = log
            .read_tail(&setup.store)
            .await
            .context("reading the log")?;
        tracing::info!(?partitions, events, products = setup.store.product_count(), elapsed = ?started.elapsed(),
            "state loaded (snapshot, if any, plus the log after it)");
        let lane = Arc::new(Lane {
            id,
            partitions: partitions.to_vec(),
            log,
            serving: Arc::new(RwLock::new(true)),
            closed: CancellationToken::new(),
        });
        Ok((lane, events))
    }

    /// Stores the snapshot of `lane`'s partitions (periodically, at shutdown, when giving
    /// them up, and after a take-over that read much of the log); true when stored.
    pub async fn save_snapshot(&self, lane: &Lane) -> bool {
        let Some(snapshots) = &self.setup.snapshots else {
            return false;
        };
        let scope = self.policy.snapshot_scope(&lane.partitions);
        let snapshots = snapshots.scoped(scope);
        let saving = snapshot_store::save_now(
            &snapshots,
            &self.setup.store,
            &self.setup.topic,
            &self.policy,
            scope,
            &self.setup.metrics,
        );
        match tokio::time::timeout(GIVE_UP_WAIT, saving).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(error = %format!("{error:#}"), "no snapshot stored");
                false
            }
            Err(_) => {
                tracing::warn!("no snapshot stored: S3 slower than 10 s");
                false
            }
        }
    }

    /// Writes each lane's snapshot every `interval` while its partitions move.
    pub fn spawn_periodic_snapshots(&self, interval: Duration) {
        if self.setup.snapshots.is_none() {
            return;
        }
        let lanes = self.me.clone();
        tokio::spawn(async move {
            let mut saved: HashMap<Vec<i32>, Vec<Option<i64>>> = HashMap::new();
            let mut pause = interval;
            loop {
                tokio::time::sleep(pause).await;
                let Some(lanes) = lanes.upgrade() else { return };
                let started = Instant::now();
                for lane in lanes.lanes() {
                    let offsets = lanes.setup.store.next_offsets();
                    let now: Vec<Option<i64>> =
                        lane.partitions.iter().map(|p| offsets.get(*p)).collect();
                    if saved.get(&lane.partitions) == Some(&now) {
                        continue;
                    }
                    if lanes.save_snapshot(&lane).await {
                        saved.insert(lane.partitions.clone(), now);
                    }
                }
                // A snapshot's cost grows with the state (every product is copied, encoded
                // and compressed on the cores that serve writes): spend at most 1/20 of the
                // time on them. At ~700,000 products the interval stays near 30 s; a state
                // large enough to take 3 s gets one a minute, and a restart reads more tail.
                pause = interval.max(started.elapsed() * SNAPSHOT_DUTY_DIVISOR);
            }
        });
    }
}

impl Routes for Lanes {
    fn policy(&self) -> PartitionPolicy {
        self.policy
    }

    /// Where a request for `partition` goes. A lane found fenced is handed to the
    /// ownership (see [`Ownership::fenced`]) on the way.
    fn route(&self, partition: i32) -> BoxFuture<'_, Route> {
        async move {
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
