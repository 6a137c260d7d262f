//! The items of one event (CONTRACT.md, "DynamoDB recent events"): a pure mapping, so a
//! redelivered event produces the very same items and overwrites itself.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{Duration, SecondsFormat};
use foldline_consumer_runtime::Record;

pub type Item = HashMap<String, AttributeValue>;

/// DynamoDB's most items per BatchWriteItem.
pub const ITEMS_PER_REQUEST: usize = 25;

/// The event's two items: under `product#<id>` and under `day#<YYYY-MM-DD>` (UTC). The sort
/// key is `<time>#<version>#<event id>`: the event time (ISO 8601, milliseconds, UTC: sorts as
/// text), then the product version (zero-padded; events of one command share their
/// millisecond, and a product's items must still come in version order), then the event id,
/// so it is unique per event and the same on every redelivery and after a restore. `ttl` counts from the event time, not from when
/// it was written, so a rewrite does not extend it.
pub fn items_for(record: &Record, ttl: Duration) -> [Item; 2] {
    let event = &record.event;
    let at = event.occurred_at;
    let sort_key = format!(
        "{}#{:019}#{}",
        at.to_rfc3339_opts(SecondsFormat::Millis, true),
        event.version,
        event.event_id
    );
    let data = serde_json::to_value(&event.payload)
        .ok()
        .and_then(|mut tagged| tagged.get_mut("payload").map(serde_json::Value::take))
        .unwrap_or(serde_json::Value::Null);
    let s = |v: String| AttributeValue::S(v);
    let n = |v: i64| AttributeValue::N(v.to_string());
    let mut item: Item = HashMap::from([
        ("sk".to_owned(), s(sort_key)),
        ("event_id".to_owned(), s(event.event_id.to_string())),
        ("event_type".to_owned(), s(event.event_type().to_string())),
        ("product_id".to_owned(), s(event.product_id.clone())),
        ("version".to_owned(), n(event.version)),
        (
            "occurred_at".to_owned(),
            s(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        ),
        (
            "position".to_owned(),
            s(format!("{}:{}", record.partition, record.offset)),
        ),
        ("data".to_owned(), s(data.to_string())),
        ("ttl".to_owned(), n((at + ttl).timestamp())),
    ]);
    let mut by_day = item.clone();
    item.insert("pk".to_owned(), s(format!("product#{}", event.product_id)));
    by_day.insert(
        "pk".to_owned(),
        s(format!("day#{}", at.date_naive().format("%Y-%m-%d"))),
    );
    [item, by_day]
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use foldline_schemas::{Envelope, Payload, StockAdjusted};

    use super::*;

    fn record(millis: i64, event_id: u128) -> Record {
        Record {
            partition: 2,
            offset: 41,
            key: Some("p-1".into()),
            timestamp_ms: None,
            event: Envelope {
                actor: None,
                event_id: uuid::Uuid::from_u128(event_id),
                product_id: "p-1".into(),
                version: 3,
                occurred_at: Utc.timestamp_millis_opt(millis).unwrap(),
                correlation_id: "c".into(),
                idempotency_key: None,
                command_index: None,
                payload: Payload::StockAdjusted(StockAdjusted {
                    delta: -2,
                    new_stock: 3,
                    reason: Some("sold".into()),
                    previous_stock: 5,
                }),
            },
        }
    }

    fn text(item: &Item, name: &str) -> String {
        match &item[name] {
            AttributeValue::S(s) | AttributeValue::N(s) => s.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn given_an_event_then_one_item_per_product_and_one_per_utc_day() {
        // 2026-11-21T23:59:59.999Z
        let [product, day] = items_for(&record(1_795_305_599_999, 7), Duration::days(30));
        assert_eq!(text(&product, "pk"), "product#p-1");
        assert_eq!(text(&day, "pk"), "day#2026-11-21");
        for item in [&product, &day] {
            assert_eq!(
                text(item, "sk"),
                "2026-11-21T23:59:59.999Z#0000000000000000003#00000000-0000-0000-0000-000000000007"
            );
            assert_eq!(text(item, "event_type"), "StockAdjusted");
            assert_eq!(text(item, "version"), "3");
            assert_eq!(text(item, "position"), "2:41");
            assert_eq!(text(item, "ttl"), (1_795_305_599 + 30 * 86_400).to_string());
            let data: serde_json::Value = serde_json::from_str(&text(item, "data")).unwrap();
            assert_eq!(
                data,
                serde_json::json!({"delta": -2, "new_stock": 3, "reason": "sold", "previous_stock": 5})
            );
        }
    }

    #[test]
    fn given_the_same_event_twice_then_the_same_items() {
        let a = items_for(&record(1_795_305_599_999, 7), Duration::days(30));
        let b = items_for(&record(1_795_305_599_999, 7), Duration::days(30));
        assert_eq!(a, b);
    }

    #[test]
    fn sort_keys_order_by_time_and_differ_per_event() {
        let earlier = items_for(&record(1_795_305_599_998, 9), Duration::days(30));
        let later = items_for(&record(1_795_305_599_999, 1), Duration::days(30));
        let same_time_other_event = items_for(&record(1_795_305_599_999, 2), Duration::days(30));
        assert!(text(&earlier[1], "sk") < text(&later[1], "sk"));
        assert_ne!(text(&later[1], "sk"), text(&same_time_other_event[1], "sk"));
    }
}
