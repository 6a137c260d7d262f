//! The soak's latency budget (issue 29): each stage's p50/p99 over the last minute, from the
//! services' own histograms (`/metrics`), so write → visible is explained stage by stage.
//! Quantiles are estimated from the minute's bucket counts (the difference of two scrapes) the
//! way Prometheus's `histogram_quantile` does: linear within the bucket.

use std::collections::BTreeMap;

use prometheus_parse::{Scrape, Value};

/// A stage: its name in the report, the service it is measured at, the histogram and (for a
/// labelled histogram) the `stage` label it is read with.
pub struct Stage {
    pub name: &'static str,
    pub service: &'static str,
    pub metric: &'static str,
    pub label: Option<&'static str>,
}

/// In the order a write goes: producer, broker → consumer, projector, query API; the
/// notifier's delivery beside the query's.
pub const STAGES: &[Stage] = &[
    Stage {
        name: "producer_commit_wait",
        service: "producer",
        metric: "producer_commit_wait_seconds",
        label: None,
    },
    Stage {
        name: "producer_commit",
        service: "producer",
        metric: "producer_transaction_seconds",
        label: None,
    },
    Stage {
        name: "projector_fetched",
        service: "projector",
        metric: "consumer_stage_seconds",
        label: Some("fetched"),
    },
    Stage {
        name: "projector_decode",
        service: "projector",
        metric: "consumer_stage_seconds",
        label: Some("decode"),
    },
    Stage {
        name: "projector_write",
        service: "projector",
        metric: "consumer_batch_write_seconds",
        label: None,
    },
    Stage {
        name: "projector_visible",
        service: "projector",
        metric: "consumer_event_age_seconds",
        label: None,
    },
    Stage {
        name: "query_after_wait",
        service: "query",
        metric: "query_after_wait_seconds",
        label: None,
    },
    Stage {
        name: "notifier_delivery",
        service: "notifier",
        metric: "sse_delivery_delay_seconds",
        label: None,
    },
];

/// Cumulative bucket counts (upper bound, count) per stage name, from one scrape.
pub type Buckets = BTreeMap<&'static str, Vec<(f64, f64)>>;

/// Reads every stage's buckets from `services` (name → base URL); stages of services not
/// given, or not answering, are left out.
pub async fn scrape(client: &reqwest::Client, services: &BTreeMap<String, String>) -> Buckets {
    let mut buckets = Buckets::new();
    for (service, url) in services {
        let Ok(response) = client.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        let Ok(scrape) = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else {
            continue;
        };
        for stage in STAGES.iter().filter(|s| s.service == service) {
            let found = scrape.samples.iter().find(|sample| {
                sample.metric == stage.metric
                    && stage
                        .label
                        .is_none_or(|l| sample.labels.get("stage") == Some(l))
            });
            if let Some(Value::Histogram(counts)) = found.map(|s| &s.value) {
                let mut pairs: Vec<(f64, f64)> =
                    counts.iter().map(|c| (c.less_than, c.count)).collect();
                pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
                buckets.insert(stage.name, pairs);
            }
        }
    }
    buckets
}

/// Each stage's p50 and p99 (ms) and count between two scrapes.
pub fn budget(before: &Buckets, after: &Buckets) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, now) in after {
        let then = before.get(name);
        let delta: Vec<(f64, f64)> = now
            .iter()
            .enumerate()
            .map(|(i, (le, count))| {
                let earlier = then.and_then(|t| t.get(i)).map_or(0.0, |(_, c)| *c);
                (*le, (count - earlier).max(0.0))
            })
            .collect();
        let total = delta.last().map_or(0.0, |(_, c)| *c);
        let ms = |q: f64| quantile(&delta, q).map(|s| (s * 1000.0 * 100.0).round() / 100.0);
        out.insert(
            (*name).into(),
            serde_json::json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99), "count": total}),
        );
    }
    out.into()
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), linear within a bucket;
/// `None` without observations. Past the last finite bound: that bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, count) in buckets {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            let share = if within > 0.0 {
                (rank - lower.1) / within
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (*le, *count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        // 100 observations: 50 in (0, 0.01], 40 in (0.01, 0.1], 10 in (0.1, 1].
        let buckets = [
            (0.01, 50.0),
            (0.1, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&buckets, 0.5), Some(0.01));
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        // Beyond the last finite bound: that bound (as histogram_quantile does).
        assert_eq!(
            quantile(&[(1.0, 0.0), (f64::INFINITY, 5.0)], 0.5),
            Some(1.0)
        );
    }

    #[test]
    fn the_budget_is_the_difference_of_two_scrapes() {
        let before: Buckets = [("s", vec![(0.01, 10.0), (f64::INFINITY, 10.0)])].into();
        let after: Buckets = [("s", vec![(0.01, 10.0), (f64::INFINITY, 20.0)])].into();
        let budget = budget(&before, &after);
        assert_eq!(budget["s"]["count"], 10.0);
        assert_eq!(
            budget["s"]["p50_ms"], 10.0,
            "all ten after the minute began were slow"
        );
    }
}
