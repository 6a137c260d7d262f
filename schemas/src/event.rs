//! The events of a product's life, as Rust types.
//!
//! JSON form (SSE, CLI, DynamoDB `data`): the envelope fields plus `event_type` and `payload`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub product_id: String,
    pub version: i64,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
    pub idempotency_key: Option<String>,
    pub command_index: Option<i64>,
    #[serde(flatten)]
    pub payload: Payload,
    /// The JWT subject that issued the command (`None` before authentication existed).
    #[serde(default)]
    pub actor: Option<String>,
}

impl Envelope {
    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }
}

/// Every event type is one variant here, and only here: [`EventType`] (its list and names)
/// is derived from it, and the Avro mapping (`avro.rs`) matches it exhaustively, so adding a
/// variant makes the compiler list every place to extend. The variants are in the order of
/// the committed schema's `payload` union (`avro/products-value.avsc`; checked by a test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::EnumDiscriminants)]
#[serde(tag = "event_type", content = "payload")]
#[strum_discriminants(
    name(EventType),
    derive(
        Hash,
        Serialize,
        Deserialize,
        strum::EnumIter,
        strum::IntoStaticStr,
        strum::EnumString,
        strum::VariantArray
    )
)]
pub enum Payload {
    ProductCreated(ProductCreated),
    ProductUpdated(ProductUpdated),
    StockAdjusted(StockAdjusted),
    LowStockWarning(LowStockWarning),
    ProductDeleted(ProductDeleted),
    LowStockThresholdSet(LowStockThresholdSet),
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        EventType::from(self)
    }

    /// The event's own fields as a JSON object, without the type tag (the history API's
    /// `payload`). Written straight from the variant: the projector makes one per event, and
    /// going through a `serde_json::Value` of the tagged enum cost a tree and a deep copy.
    pub fn fields_json(&self) -> String {
        let json = match self {
            Payload::ProductCreated(fields) => serde_json::to_string(fields),
            Payload::ProductUpdated(fields) => serde_json::to_string(fields),
            Payload::StockAdjusted(fields) => serde_json::to_string(fields),
            Payload::LowStockWarning(fields) => serde_json::to_string(fields),
            Payload::ProductDeleted(fields) => serde_json::to_string(fields),
            Payload::LowStockThresholdSet(fields) => serde_json::to_string(fields),
        };
        json.expect("structs of strings and numbers always serialize")
    }
}

impl EventType {
    /// Every event type, in the order of the schema's `payload` union.
    pub const ALL: &'static [EventType] = <EventType as strum::VariantArray>::VARIANTS;

    /// The Avro record name, also used as the `event-type` header and SSE `event:` field.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The type named `name`: the short Avro record name or a namespaced full name.
    pub fn parse(name: &str) -> Option<EventType> {
        let short = name.rsplit('.').next().unwrap_or(name);
        short.parse().ok()
    }

    /// The index of this type's branch in the committed schema's `payload` union.
    pub fn branch_index(self) -> u32 {
        self as u32
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub seller_id: String,
    /// The product's own low-stock threshold (`None`: the producer's default). Added with
    /// the schema of 2026-12-07; older events have none.
    #[serde(default)]
    pub low_stock_threshold: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductUpdated {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockAdjusted {
    pub delta: i64,
    pub new_stock: i64,
    pub reason: Option<String>,
    /// The stock before the change. Events written before the schema of 2026-12-07 do not
    /// hold it: every reader upcasts them to `new_stock - delta` (`crate::read`).
    pub previous_stock: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LowStockWarning {
    pub stock: i64,
    pub threshold: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProductDeleted {}

/// The product's own low-stock threshold changed (schema of 2026-12-07).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LowStockThresholdSet {
    pub threshold: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_each_event_type_then_its_fields_json_is_the_tagged_forms_payload() {
        let payloads = [
            Payload::ProductCreated(ProductCreated {
                name: "Lamp \"A\"\n".into(),
                price_cents: 2599,
                stock: 12,
                seller_id: "s-1".into(),
                low_stock_threshold: Some(3),
            }),
            Payload::ProductUpdated(ProductUpdated {
                name: None,
                price_cents: Some(i64::MAX),
            }),
            Payload::StockAdjusted(StockAdjusted {
                delta: -3,
                new_stock: 9,
                reason: Some("sold".into()),
                previous_stock: 12,
            }),
            Payload::LowStockWarning(LowStockWarning {
                stock: 1,
                threshold: 5,
            }),
            Payload::ProductDeleted(ProductDeleted {}),
            Payload::LowStockThresholdSet(LowStockThresholdSet { threshold: 8 }),
        ];
        assert_eq!(payloads.len(), EventType::ALL.len());
        for payload in payloads {
            let tagged = serde_json::to_value(&payload).unwrap();
            let fields: serde_json::Value = serde_json::from_str(&payload.fields_json()).unwrap();
            assert_eq!(fields, tagged["payload"], "{payload:?}");
        }
    }
}
