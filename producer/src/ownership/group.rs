//! Partition ownership by a Kafka consumer group: every producer instance joins the group
//! over the events topic (`group.id` = the transactional id's prefix, so one fleet is one
//! group), and the assignor's answer is who writes which partition. The member never reads a
//! record — its partitions are paused as soon as they are assigned; the group is only the
//! lease. `cooperative-sticky` moves only the partitions that must move (a joining or dying
//! member does not stop the others' writes); a member that stops heartbeating loses its
//! partitions after `session.timeout.ms`.
//!
//! The rebalance callbacks run on this module's own thread: giving partitions up (revoke)
//! blocks the rebalance until the commits in flight are answered, as the protocol intends;
//! taking them over (assign) starts in the background.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use super::Lanes;

/// How long a silent member keeps its partitions: the failover time is about this plus the
/// take-over (fence, snapshot, tail).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

struct OwnersContext {
    lanes: Arc<Lanes>,
    runtime: tokio::runtime::Handle,
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for OwnersContext {}

impl ConsumerContext for OwnersContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partitions_of(list);
            tracing::info!(?partitions, "partitions revoked: finishing their commits");
            self.runtime.block_on(self.lanes.revoked(&partitions));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                if let Err(error) = consumer.pause(list) {
                    tracing::warn!(%error, "could not pause the assigned partitions");
                }
                tracing::info!(?partitions, "partitions assigned: taking them over");
                // Take-overs run as tasks of the runtime; this is the group's own thread.
                let _runtime = self.runtime.enter();
                self.lanes.assigned(&partitions);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "producers' group rebalance failed"),
        }
    }
}

/// Why joining the producers' group failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the producers' group consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("starting the group's thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Joins the producers' group on a thread of its own until `stop` is cancelled; then leaves
/// it (giving every partition up, so the survivors take them without waiting for the session
/// timeout). The returned handle finishes once the group has been left.
pub fn join(
    lanes: Arc<Lanes>,
    brokers: &str,
    topic: &str,
    group_id: &str,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, JoinError> {
    let context = OwnersContext {
        lanes: lanes.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let consumer: BaseConsumer<OwnersContext> =
        foldline_service::kafka::base_config(brokers, "foldline-producer-owner")
            .set("group.id", group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            // A rebalance (an instance leaving or joining) reaches the others at their next
            // heartbeat: a short interval keeps the hand-over short.
            .set("heartbeat.interval.ms", "250")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .create_with_context(context)?;
    consumer.subscribe(&[topic])?;
    let thread = std::thread::Builder::new()
        .name("foldline-owner".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                if let Some(Err(error)) = consumer.poll(Duration::from_millis(200)) {
                    tracing::warn!(%error, "producers' group");
                }
            }
            // Leave: the revoke callback gives every partition up (commits finish, snapshots
            // are stored), then the group moves them to the others at once.
            consumer.unsubscribe();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                let _ = consumer.poll(Duration::from_millis(100));
            }
            drop(consumer);
            tracing::info!("left the producers' group");
        })?;
    Ok(thread)
}
