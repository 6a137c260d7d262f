//! librdkafka callbacks: statistics (for the lag gauge) and rebalances (for logs and `/ready`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;

use crate::RuntimeMetrics;

pub struct RuntimeContext {
    pub topic: String,
    pub metrics: RuntimeMetrics,
    /// True once the group gave this instance its partitions (possibly none).
    pub joined: Arc<AtomicBool>,
    /// Bumped on every rebalance: where the consumer reads from is then unknown again.
    pub generation: Arc<AtomicU64>,
}

impl ClientContext for RuntimeContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, stats) in &topic.partitions {
            if *partition >= 0 && stats.consumer_lag >= 0 {
                let label = partition.to_string();
                self.metrics
                    .lag
                    .with_label_values(&[&label])
                    .set(stats.consumer_lag);
                // "Behind for how long" = now − the last time it was caught up (the first
                // time it was seen, when it has not been yet).
                let caught_up = self.metrics.caught_up_at.with_label_values(&[&label]);
                if stats.consumer_lag <= crate::metrics::CAUGHT_UP_LAG || caught_up.get() == 0 {
                    caught_up.set(chrono::Utc::now().timestamp());
                }
            }
        }
    }
}

impl ConsumerContext for RuntimeContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(?assigned, "partitions assigned");
                self.joined.store(true, Ordering::Release);
            }
            Rebalance::Revoke(partitions) => {
                let revoked: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(?revoked, "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}
