//! Producer metrics, registered in the service's Prometheus registry.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    commits: IntCounterVec,
    commit_seconds: Histogram,
    /// A request's wait from its hand-over to the committer until its commit cycle starts.
    pub commit_wait: Histogram,
    commit_requests: Histogram,
    commit_records: Histogram,
    pub commands: IntCounterVec,
    pub replayed_events: IntCounter,
    pub undecodable_events: IntCounter,
    pub snapshots: IntCounterVec,
    pub snapshot_bytes: IntGauge,
    /// When the last snapshot was stored (Unix seconds): "no snapshot for too long" alerts.
    pub snapshot_stored_at: IntGauge,
    /// When the last transaction committed (Unix seconds).
    committed_at: IntGauge,
    pub snapshot_seconds: Histogram,
    pub forwarded: IntCounterVec,
    pub partitions_served: IntGauge,
    pub partition_served: IntGaugeVec,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}

impl Metrics {
    pub fn new(registry: &Registry) -> Metrics {
        let sizes = vec![
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
        ];
        let metrics = Metrics {
            commits: IntCounterVec::new(
                Opts::new(
                    "producer_transactions_total",
                    "Kafka transactions by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            commit_seconds: histogram(
                "producer_transaction_seconds",
                "Time to append and commit one group of requests",
                prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets"),
            ),
            commit_wait: histogram(
                "producer_commit_wait_seconds",
                "Time a request waited for its commit cycle to start (the cycle before it was still committing)",
                prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
            ),
            commit_requests: histogram(
                "producer_transaction_requests",
                "Requests committed together in one transaction (group commit)",
                sizes.clone(),
            ),
            commit_records: histogram(
                "producer_transaction_records",
                "Records appended in one transaction",
                sizes,
            ),
            commands: IntCounterVec::new(
                Opts::new(
                    "producer_commands_total",
                    "Commands by operation and outcome",
                ),
                &["op", "outcome"],
            )
            .expect("valid metric"),
            replayed_events: IntCounter::new(
                "producer_log_events_replayed_total",
                "Events folded from the log at start-up or resync",
            )
            .expect("valid metric"),
            undecodable_events: IntCounter::new(
                "producer_log_events_undecodable_total",
                "Records in the topic the producer could not decode (skipped)",
            )
            .expect("valid metric"),
            snapshots: IntCounterVec::new(
                Opts::new(
                    "producer_snapshots_total",
                    "Snapshots of the state written to S3, by outcome (stored, failed)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            committed_at: IntGauge::new(
                "producer_last_commit_timestamp_seconds",
                "When the last transaction committed (Unix time)",
            )
            .expect("valid metric"),
            snapshot_stored_at: IntGauge::new(
                "producer_snapshot_last_stored_timestamp_seconds",
                "When the last snapshot was stored (Unix time)",
            )
            .expect("valid metric"),
            snapshot_bytes: IntGauge::new(
                "producer_snapshot_bytes",
                "Size of the last stored snapshot (compressed)",
            )
            .expect("valid metric"),
            snapshot_seconds: histogram(
                "producer_snapshot_seconds",
                "Time to take and store one snapshot (grows with the state, not the log)",
                prometheus::exponential_buckets(0.01, 2.0, 12).expect("valid buckets"),
            ),
            forwarded: IntCounterVec::new(
                Opts::new(
                    "producer_forwarded_requests_total",
                    "Requests forwarded to the instance owning their partition, by outcome (answered, unreachable, no_owner)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            partitions_served: IntGauge::new(
                "producer_partitions_served",
                "Partitions of the topic this instance writes now",
            )
            .expect("valid metric"),
            partition_served: IntGaugeVec::new(
                Opts::new(
                    "producer_partition_served",
                    "1 while this instance writes the partition, 0 once it gave it up",
                ),
                &["partition"],
            )
            .expect("valid metric"),
        };
        registry
            .register(Box::new(metrics.commits.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.commit_seconds.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.commit_requests.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.commit_wait.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.commit_records.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.commands.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.replayed_events.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.undecodable_events.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.snapshots.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.snapshot_bytes.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.snapshot_stored_at.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.committed_at.clone()))
            .expect("once");
        // Every outcome exported from the start at 0: an alert's increase() then counts the
        // first failure too (a series that appears at 1 has no increase).
        for outcome in ["committed", "failed"] {
            metrics.commits.with_label_values(&[outcome]);
        }
        for outcome in ["stored", "failed"] {
            metrics.snapshots.with_label_values(&[outcome]);
        }
        registry
            .register(Box::new(metrics.snapshot_seconds.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.forwarded.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.partitions_served.clone()))
            .expect("once");
        registry
            .register(Box::new(metrics.partition_served.clone()))
            .expect("once");
        metrics
    }

    pub fn observe_commit(&self, requests: usize, records: usize, elapsed: Duration, ok: bool) {
        let outcome = if ok { "committed" } else { "failed" };
        if ok {
            self.committed_at.set(chrono::Utc::now().timestamp());
        }
        self.commits.with_label_values(&[outcome]).inc();
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_requests.observe(requests as f64);
        self.commit_records.observe(records as f64);
    }
}
