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
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        EventType::from(self)
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LowStockWarning {
    pub stock: i64,
    pub threshold: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProductDeleted {}
