//! Which partitions this instance writes, and with which transactional producer.
//!
//! A *lane* is a set of partitions written through one transactional id, one transaction at
//! a time. In `single` mode one lane holds every partition (`FOLDLINE_TRANSACTIONAL_ID`), so a
//! batch may touch any products. In `partitions` mode each partition is its own lane with the
//! transactional id `<FOLDLINE_TRANSACTIONAL_ID>-p<N>`, and a consumer group over the topic
//! ([`group`]) decides which instance holds which lanes: ownership moves by fencing, because
//! the new owner initialises the partition's transactional id before it reads the partition
//! (fence, then read, then serve). An instance that lost a partition without noticing (a long
//! pause) is fenced at its next commit and drops the lane. Requests for partitions owned
//! elsewhere are forwarded to the owner ([`directory`], `crate::forward`).

pub mod directory;
pub mod group;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use foldline_schemas::wire::EventCodec;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::snapshot::{self, SnapshotStore};
use crate::store::Store;
use crate::writer::{AppendError, Writer, WriterConfig};
use directory::Directory;

/// A take-over that read at least this many events from the log snapshots at once.
const SNAPSHOT_AFTER_READING: u64 = 10_000;
/// Periodic snapshots take at most 1/this of the time (see `spawn_periodic_snapshots`).
const SNAPSHOT_DUTY_DIVISOR: u32 = 20;

/// How the partitions of the topic are shared between producer instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One instance writes every partition in one transaction at a time (a second instance
    /// with the same transactional id fences the first). A batch may touch any products.
    Single,
    /// Instances share the partitions through a consumer group; each partition has its own
    /// transactional id. A batch must stay within one partition.
    Partitions,
}

/// A set of partitions written through one transactional producer.
pub struct Lane {
    pub partitions: Vec<i32>,
    pub writer: Writer,
    /// True while the lane takes requests; a request holds a read guard until its commit is
    /// answered, so giving the lane up (the write guard) waits for the commits in flight.
    serving: Arc<RwLock<bool>>,
    closed: CancellationToken,
}

/// A request's hold on the lane of its partition: the lane cannot be given up meanwhile.
pub struct LaneGuard {
    pub lane: Arc<Lane>,
    _serving: OwnedRwLockReadGuard<bool>,
}

/// Where a request for a partition goes.
pub enum Route {
    Here(LaneGuard),
    /// Another instance owns it (its base URL when known), or nobody does right now.
    Elsewhere {
        owner: Option<String>,
    },
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
    pub mode: Mode,
    pub partition_count: i32,
    setup: LaneSetup,
    serving: std::sync::RwLock<HashMap<i32, Arc<Lane>>>,
    /// Partitions being taken over, each with the token that cancels it when revoked first.
    pending: Mutex<HashMap<i32, CancellationToken>>,
    /// Partitions the group gives this instance now (`partitions` mode).
    assigned: Mutex<BTreeSet<i32>>,
    /// True once the consumer group gave this instance its share (always in `single` mode).
    pub joined: std::sync::atomic::AtomicBool,
    pub directory: Option<Arc<Directory>>,
}

impl Lanes {
    pub fn new(
        mode: Mode,
        partition_count: i32,
        setup: LaneSetup,
        directory: Option<Arc<Directory>>,
    ) -> Arc<Lanes> {
        Arc::new(Lanes {
            mode,
            partition_count,
            setup,
            serving: Default::default(),
            pending: Default::default(),
            assigned: Default::default(),
            joined: (mode == Mode::Single).into(),
            directory,
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.setup.store
    }

    /// The lanes this mode splits `partitions` into, with their transactional ids.
    fn transactional_id(&self, partitions: &[i32]) -> String {
        match self.mode {
            Mode::Single => self.setup.transactional_id.clone(),
            Mode::Partitions => format!("{}-p{}", self.setup.transactional_id, partitions[0]),
        }
    }

    /// Whether one request may touch all of `partitions` (one transaction covers them).
    pub fn one_lane(&self, partitions: &BTreeSet<i32>) -> bool {
        self.mode == Mode::Single || partitions.len() <= 1
    }

    /// Where a request for `partition` goes. In `partitions` mode a lane that was fenced is
    /// dropped on the way: another instance took the partition while this one did not notice
    /// — or, if the group still gives it to this instance, a take-over that was revoked
    /// half-way initialised the id after this lane did, and the partition is taken over again
    /// (fencing that stray producer). In `single` mode a fenced lane stays, answering 503: a
    /// newer instance with the same id is the writer now.
    pub async fn route(self: &Arc<Self>, partition: i32) -> Route {
        let lane = self.serving_lane(partition);
        if let Some(lane) = lane {
            let fenced = matches!(lane.writer.status(), Err(AppendError::Fenced));
            if fenced && self.mode == Mode::Partitions {
                tracing::warn!(
                    partition,
                    "fenced: another producer initialised this partition's transactional id"
                );
                self.remove(&lane);
                let still_mine = self
                    .assigned
                    .lock()
                    .expect("not poisoned")
                    .contains(&partition);
                if still_mine {
                    self.take_over(lane.partitions.clone()).await;
                }
            } else {
                let guard = lane.serving.clone().read_owned().await;
                if *guard {
                    return Route::Here(LaneGuard {
                        lane,
                        _serving: guard,
                    });
                }
            }
        }
        Route::Elsewhere {
            owner: self.directory.as_ref().and_then(|d| d.owner_of(partition)),
        }
    }

    fn serving_lane(&self, partition: i32) -> Option<Arc<Lane>> {
        self.serving
            .read()
            .expect("not poisoned")
            .get(&partition)
            .cloned()
    }

    fn remove(&self, lane: &Arc<Lane>) {
        let mut serving = self.serving.write().expect("not poisoned");
        for partition in &lane.partitions {
            if serving.get(partition).is_some_and(|l| Arc::ptr_eq(l, lane)) {
                serving.remove(partition);
                self.count_served(&serving, *partition, false);
            }
        }
        lane.closed.cancel();
    }

    /// The gauges of what is served, after `partition` started (`true`) or stopped.
    fn count_served(&self, serving: &HashMap<i32, Arc<Lane>>, partition: i32, served: bool) {
        let metrics = &self.setup.metrics;
        metrics
            .partition_served
            .with_label_values(&[&partition.to_string()])
            .set(i64::from(served));
        metrics.partitions_served.set(serving.len() as i64);
    }

    /// A partition for a request that only creates products: one this instance serves, at
    /// random (all partitions in `single` mode), or any when it serves none (then forwarded).
    pub fn partition_for_new(&self) -> i32 {
        let serving = self.served();
        if serving.is_empty() {
            rand::random_range(0..self.partition_count)
        } else {
            serving[rand::random_range(0..serving.len())]
        }
    }

    /// The partitions served here, sorted.
    pub fn served(&self) -> Vec<i32> {
        let mut served: Vec<i32> = self
            .serving
            .read()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        served.sort_unstable();
        served
    }

    /// Every distinct lane served here.
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        let mut lanes: Vec<Arc<Lane>> = Vec::new();
        for lane in self.serving.read().expect("not poisoned").values() {
            if !lanes.iter().any(|l| Arc::ptr_eq(l, lane)) {
                lanes.push(lane.clone());
            }
        }
        lanes
    }

    /// Ready when the group has given this instance its share and every lane of it serves
    /// with a healthy writer.
    pub fn status(&self) -> Result<(), String> {
        if !self.joined.load(std::sync::atomic::Ordering::Acquire) {
            return Err("joining the producers' group".into());
        }
        let pending: Vec<i32> = self
            .pending
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        if !pending.is_empty() {
            return Err(format!("taking over partitions {pending:?}"));
        }
        if self.mode == Mode::Single && self.lanes().is_empty() {
            return Err("reading the log".into());
        }
        for lane in self.lanes() {
            lane.writer.status().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Fence, then read, then serve `partitions` (one lane per partition in `partitions` mode).
    /// Retries until it succeeds or the partitions are revoked first.
    pub async fn take_over(self: &Arc<Self>, partitions: Vec<i32>) {
        self.assigned
            .lock()
            .expect("not poisoned")
            .extend(partitions.iter().copied());
        // A partition already being taken over is left to that take-over.
        let partitions: Vec<i32> = {
            let pending = self.pending.lock().expect("not poisoned");
            partitions
                .into_iter()
                .filter(|p| !pending.contains_key(p))
                .collect()
        };
        if partitions.is_empty() {
            return;
        }
        let groups: Vec<Vec<i32>> = match self.mode {
            Mode::Single => vec![partitions],
            Mode::Partitions => partitions.into_iter().map(|p| vec![p]).collect(),
        };
        for group in groups {
            let token = CancellationToken::new();
            {
                let mut pending = self.pending.lock().expect("not poisoned");
                for partition in &group {
                    pending.insert(*partition, token.clone());
                }
            }
            let lanes = self.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(200);
                loop {
                    let attempt = tokio::select! {
                        _ = token.cancelled() => return,
                        attempt = lanes.open_lane(&group) => attempt,
                    };
                    match attempt {
                        Ok((lane, events)) => {
                            lanes.start_serving(lane, &group, &token, events);
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(error = %format!("{error:#}"), partitions = ?group, "taking over failed; trying again");
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
    }

    /// Takes over `partitions` now (start-up in `single` mode): an error is returned, not
    /// retried.
    pub async fn take_over_now(self: &Arc<Self>, partitions: Vec<i32>) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let (lane, events) = self.open_lane(&partitions).await?;
        self.start_serving(lane, &partitions, &token, events);
        Ok(())
    }

    /// Puts a lane that has read its partitions into service, unless they were revoked
    /// meanwhile. A lane that had to read many events snapshots at once, so the next owner
    /// does not.
    fn start_serving(
        self: &Arc<Self>,
        lane: Arc<Lane>,
        partitions: &[i32],
        token: &CancellationToken,
        events_read: u64,
    ) {
        {
            let mut pending = self.pending.lock().expect("not poisoned");
            if token.is_cancelled() {
                lane.closed.cancel();
                return;
            }
            let mut serving = self.serving.write().expect("not poisoned");
            for partition in partitions {
                pending.remove(partition);
                serving.insert(*partition, lane.clone());
                self.count_served(&serving, *partition, true);
            }
        }
        self.spawn_resync(lane.clone());
        if let Some(directory) = &self.directory {
            directory.publish(partitions);
        }
        tracing::info!(?partitions, "serving");
        if events_read >= SNAPSHOT_AFTER_READING {
            let lanes = self.clone();
            tokio::spawn(async move { lanes.save_snapshot(&lane).await });
        }
    }

    /// Fences the lane's transactional id, then loads its partitions' state: the snapshot
    /// when it is ahead of what the store holds, then the log's tail.
    async fn open_lane(&self, partitions: &[i32]) -> anyhow::Result<(Arc<Lane>, u64)> {
        let started = std::time::Instant::now();
        let config = WriterConfig {
            brokers: self.setup.brokers.clone(),
            topic: self.setup.topic.clone(),
            transactional_id: self.transactional_id(partitions),
            max_batch_records: self.setup.max_batch_records,
            commit_timeout: Duration::from_secs(10),
        };
        let transactional_id = config.transactional_id.clone();
        let metrics = self.setup.metrics.clone();
        // Fence: init_transactions completes or aborts what an earlier owner left open.
        let writer = tokio::task::spawn_blocking(move || Writer::start(config, metrics))
            .await
            .context("the writer's start panicked")?
            .context("initialising the transactional producer")?;
        tracing::info!(%transactional_id, ?partitions, "transactional producer initialised; earlier owners fenced");
        // Read: the snapshot (if it is ahead of this store), then the tail.
        if let Some(snapshots) = &self.setup.snapshots {
            let outcome = snapshot::restore(
                &snapshots.scoped(self.snapshot_scope(partitions)),
                &self.setup.store,
                &self.setup.brokers,
                &self.setup.topic,
                &self.setup.codec,
            )
            .await;
            tracing::info!(?partitions, "{outcome}");
        }
        let events = crate::catch_up::catch_up(
            &self.setup.brokers,
            &self.setup.topic,
            partitions,
            &self.setup.store,
            &self.setup.codec,
            &self.setup.metrics,
        )
        .await
        .context("reading the log")?;
        tracing::info!(?partitions, events, products = self.setup.store.product_count(), elapsed = ?started.elapsed(),
            "state loaded (snapshot, if any, plus the log after it)");
        let lane = Arc::new(Lane {
            partitions: partitions.to_vec(),
            writer,
            serving: Arc::new(RwLock::new(true)),
            closed: CancellationToken::new(),
        });
        Ok((lane, events))
    }

    /// The snapshot of a lane: the whole topic's in `single` mode, the partition's otherwise.
    pub fn snapshot_scope(&self, partitions: &[i32]) -> Option<i32> {
        match self.mode {
            Mode::Single => None,
            Mode::Partitions => Some(partitions[0]),
        }
    }

    /// Stops serving `partitions`: waits (up to 10 s) for the commits in flight, stores the
    /// partitions' snapshots so the next owner reads little, then drops the lanes.
    pub async fn give_up(&self, partitions: &[i32]) {
        self.assigned
            .lock()
            .expect("not poisoned")
            .retain(|p| !partitions.contains(p));
        {
            let pending = self.pending.lock().expect("not poisoned");
            for partition in partitions {
                if let Some(token) = pending.get(partition) {
                    token.cancel();
                }
            }
        }
        self.pending
            .lock()
            .expect("not poisoned")
            .retain(|p, _| !partitions.contains(p));
        let lanes: Vec<Arc<Lane>> = partitions
            .iter()
            .filter_map(|p| self.serving_lane(*p))
            .fold(Vec::new(), |mut lanes, lane| {
                if !lanes.iter().any(|l| Arc::ptr_eq(l, &lane)) {
                    lanes.push(lane);
                }
                lanes
            });
        for lane in lanes {
            match tokio::time::timeout(Duration::from_secs(10), lane.serving.write()).await {
                Ok(mut serving) => *serving = false,
                Err(_) => {
                    tracing::warn!(partitions = ?lane.partitions, "commits still in flight after 10 s; giving the partitions up anyway (the next owner fences them)")
                }
            }
            self.remove(&lane);
            self.save_snapshot(&lane).await;
            tracing::info!(partitions = ?lane.partitions, "partitions given up");
        }
    }

    /// Stores the snapshot of `lane`'s partitions (periodically, at shutdown, when giving
    /// them up, and after a take-over that read much of the log); true when stored.
    pub async fn save_snapshot(&self, lane: &Lane) -> bool {
        let Some(snapshots) = &self.setup.snapshots else {
            return false;
        };
        let scope = self.snapshot_scope(&lane.partitions);
        let snapshots = snapshots.scoped(scope);
        let saving = snapshot::save_now(
            &snapshots,
            &self.setup.store,
            &self.setup.topic,
            scope.map(|p| (p, self.partition_count)),
            &self.setup.metrics,
        );
        match tokio::time::timeout(Duration::from_secs(10), saving).await {
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

    /// Re-reads the lane's partitions whenever its writer asks (after a commit with an
    /// unknown outcome and a reconnect), then lets writes go on. Driven by the writer, not by
    /// the request that saw the failure: that request may have timed out meanwhile.
    fn spawn_resync(self: &Arc<Self>, lane: Arc<Lane>) {
        let lanes = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = lane.closed.cancelled() => return,
                    _ = lane.writer.resync_requested() => {}
                }
                let Some(lanes) = lanes.upgrade() else { return };
                let setup = &lanes.setup;
                tracing::info!(partitions = ?lane.partitions, "re-reading the log after a failed commit");
                loop {
                    match crate::catch_up::catch_up(
                        &setup.brokers,
                        &setup.topic,
                        &lane.partitions,
                        &setup.store,
                        &setup.codec,
                        &setup.metrics,
                    )
                    .await
                    {
                        Ok(events) => {
                            tracing::info!(
                                events,
                                "state re-read from the log after a failed commit"
                            );
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "resync from the log failed, retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    if lane.closed.is_cancelled() {
                        return;
                    }
                }
                lane.writer.resume();
            }
        });
    }

    /// Writes each lane's snapshot every `interval` while its partitions move.
    pub fn spawn_periodic_snapshots(self: &Arc<Self>, interval: Duration) {
        if self.setup.snapshots.is_none() {
            return;
        }
        let lanes = Arc::downgrade(self);
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
