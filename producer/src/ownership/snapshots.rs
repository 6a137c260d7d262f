//! The lanes' snapshots: when giving a lane up, after a long take-over, periodically while
//! the state moves, and at shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Lane, Lanes, GIVE_UP_WAIT};
use crate::snapshot_store;

/// Periodic snapshots take at most 1/this of the time (see `spawn_periodic_snapshots`).
const SNAPSHOT_DUTY_DIVISOR: u32 = 20;

impl Lanes {
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
                tracing::warn!(%error, "no snapshot stored");
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
