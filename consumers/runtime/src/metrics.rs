//! What every consumer exposes on `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// A partition this few records behind counts as caught up: an idle consumer of a
/// transactional topic shows a lag of 1 (the last commit marker).
pub const CAUGHT_UP_LAG: i64 = 10;

#[derive(Clone)]
pub struct RuntimeMetrics {
    pub events: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub batch_records: Histogram,
    pub batch_seconds: Histogram,
    pub sink_retries: IntCounter,
    pub reseeks: IntCounter,
    /// Records set aside because their product is parked (the first refused one and every
    /// later one of the product).
    pub parked_events: IntCounter,
    /// Products this consumer keeps parked now.
    pub parked_products: IntGauge,
    /// Records behind the partition's end, from librdkafka's statistics (the broker's high
    /// watermark: right on Redpanda, unreliable on tansu).
    pub lag: IntGaugeVec,
    /// When each partition was last caught up (lag ≤ [`CAUGHT_UP_LAG`]), Unix seconds.
    pub caught_up_at: IntGaugeVec,
    /// Seconds from each record's append (its broker timestamp) until the sink made it
    /// durable: for the projector, write → visible in the read model (the SLO's measure).
    pub event_age: Histogram,
    /// The stages of a record's way through the consumer (issue 29's latency budget):
    /// `fetched` (append → received, per record), `decode` (per record), `commit` (the offset
    /// commit call, per batch). The sink's write is `consumer_batch_write_seconds`.
    pub stage: HistogramVec,
    /// `stage`'s children, resolved once: the hot path observes without a label lookup.
    pub fetched: Histogram,
    pub decode: Histogram,
    pub commit: Histogram,
}

impl RuntimeMetrics {
    pub fn new(registry: &Registry) -> RuntimeMetrics {
        let stage = HistogramVec::new(
            HistogramOpts::new(
                "consumer_stage_seconds",
                "Time spent per stage: fetched (append to received, per record), decode (per record), commit (offset commit, per batch)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            &["stage"],
        )
        .expect("valid metric");
        let metrics = RuntimeMetrics {
            fetched: stage.with_label_values(&["fetched"]),
            decode: stage.with_label_values(&["decode"]),
            commit: stage.with_label_values(&["commit"]),
            stage,
            events: IntCounter::new(
                "consumer_events_total",
                "Events handed to the sink and made durable",
            )
            .expect("valid metric"),
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "consumer_dead_lettered_total",
                    "Records sent to the dead-letter topic",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            batch_records: Histogram::with_opts(
                HistogramOpts::new("consumer_batch_records", "Records per batch").buckets(vec![
                    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
                ]),
            )
            .expect("valid metric"),
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "consumer_batch_write_seconds",
                    "Time the sink took to make a batch durable",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("valid metric"),
            sink_retries: IntCounter::new(
                "consumer_sink_retries_total",
                "Batch writes retried after a transient sink error",
            )
            .expect("valid metric"),
            reseeks: IntCounter::new(
                "consumer_reseeks_total",
                "Times the sink's stored offsets moved the consumer",
            )
            .expect("valid metric"),
            parked_events: IntCounter::new(
                "consumer_parked_events_total",
                "Records set aside because the sink refused them or an earlier record of their product",
            )
            .expect("valid metric"),
            parked_products: IntGauge::new(
                "consumer_parked_products",
                "Products whose records this consumer keeps parked",
            )
            .expect("valid metric"),
            lag: IntGaugeVec::new(
                Opts::new(
                    "consumer_lag_records",
                    "Records between the consumer's position and the partition's end",
                ),
                &["partition"],
            )
            .expect("valid metric"),
            caught_up_at: IntGaugeVec::new(
                Opts::new(
                    "consumer_caught_up_timestamp_seconds",
                    "When the partition was last caught up (lag of at most 10 records), Unix time",
                ),
                &["partition"],
            )
            .expect("valid metric"),
            event_age: Histogram::with_opts(
                HistogramOpts::new(
                    "consumer_event_age_seconds",
                    "Seconds from a record's append (broker timestamp) until the sink made it durable",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
            )
            .expect("valid metric"),
        };
        for collector in [
            Box::new(metrics.events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.dead_lettered.clone()),
            Box::new(metrics.batch_records.clone()),
            Box::new(metrics.batch_seconds.clone()),
            Box::new(metrics.sink_retries.clone()),
            Box::new(metrics.reseeks.clone()),
            Box::new(metrics.parked_events.clone()),
            Box::new(metrics.parked_products.clone()),
            Box::new(metrics.lag.clone()),
            Box::new(metrics.event_age.clone()),
            Box::new(metrics.caught_up_at.clone()),
            Box::new(metrics.stage.clone()),
        ] {
            registry.register(collector).expect("register once");
        }
        // Both reasons exported from the start at 0, so an alert's increase() counts the
        // first dead letter too.
        for reason in ["empty", "undecodable"] {
            metrics.dead_lettered.with_label_values(&[reason]);
        }
        metrics
    }
}
