//! Event analytics: how many events of each type were appended in each hour (UTC).

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use foldline_schemas::Envelope;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCount {
    pub event_type: &'static str,
    pub hour: DateTime<Utc>,
    pub events: i64,
}

/// Counts per (type, hour of `occurred_at`), to be *added* to the stored counts.
pub fn count_events<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Vec<EventCount> {
    let mut counts: BTreeMap<(&'static str, DateTime<Utc>), i64> = BTreeMap::new();
    for event in events {
        let hour = event
            .occurred_at
            .duration_trunc(TimeDelta::hours(1))
            .expect("an hour divides any timestamp");
        *counts
            .entry((event.event_type().as_str(), hour))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((event_type, hour), events)| EventCount {
            event_type,
            hour,
            events,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{event, Given};
    use chrono::TimeZone;
    use foldline_schemas::{LowStockWarning, Payload, StockAdjusted};

    #[test]
    fn given_events_in_two_hours_then_counts_per_type_and_hour() {
        let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 11, 21, h, m, 7).unwrap();
        let adjusted = Payload::StockAdjusted(StockAdjusted {
            delta: -1,
            new_stock: 4,
            reason: None,
            previous_stock: 5,
        });
        let warning = Payload::LowStockWarning(LowStockWarning {
            stock: 4,
            threshold: 5,
        });
        let mut a = event("p", 2, adjusted.clone());
        a.occurred_at = at(9, 1);
        let mut b = event("p", 3, adjusted);
        b.occurred_at = at(9, 59);
        let mut c = event("p", 4, warning);
        c.occurred_at = at(10, 0);
        let counts = Given::events([a, b, c]).count_events();
        assert_eq!(
            counts,
            vec![
                EventCount {
                    event_type: "LowStockWarning",
                    hour: at(10, 0) - TimeDelta::seconds(7),
                    events: 1
                },
                EventCount {
                    event_type: "StockAdjusted",
                    hour: at(9, 0) - TimeDelta::seconds(7),
                    events: 2
                },
            ]
        );
    }
}
