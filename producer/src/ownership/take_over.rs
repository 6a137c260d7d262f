//! Taking a lane over: fence its transactional id, load its partitions' state (snapshot,
//! then the tail), then serve — unless the ownership cancelled it meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use super::state::LaneId;
use super::{Lane, Lanes, COMMIT_TIMEOUT, SNAPSHOT_AFTER_READING};
use crate::log::kafka::KafkaLaneLog;
use crate::log::{keep_reading_the_tail, LaneLog};
use crate::snapshot_store;
use crate::writer::{Writer, WriterConfig};

/// Why taking a lane over failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("the writer's start panicked")]
    Panicked,
    #[error("initialising the transactional producer: {0}")]
    Fence(#[from] rdkafka::error::KafkaError),
    #[error("reading the log: {0}")]
    Tail(#[from] foldline_service::kafka::SetupError),
}

impl Lanes {
    pub(super) fn spawn_take_over(&self, id: LaneId, partitions: Vec<i32>) {
        let token = CancellationToken::new();
        {
            // A revoke between the step and here found no token to cancel: it must not start.
            let mut inner = self.inner();
            if !inner.ownership.is_taking(id) {
                return;
            }
            inner.taking.insert(id, token.clone());
        }
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
                        tracing::warn!(%error, ?partitions, "taking over failed; trying again");
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
    pub(super) fn start_serving(&self, lane: Arc<Lane>, events_read: u64) {
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
        self.changes.send_replace(());
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
    pub(super) async fn open_lane(
        &self,
        id: LaneId,
        partitions: &[i32],
    ) -> Result<(Arc<Lane>, u64), TakeOverError> {
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
            .map_err(|_| TakeOverError::Panicked)??;
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
        let events = log.read_tail(&setup.store).await?;
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
}
