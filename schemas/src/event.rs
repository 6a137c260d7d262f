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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum Payload {
    ProductCreated(ProductCreated),
    ProductUpdated(ProductUpdated),
    StockAdjusted(StockAdjusted),
    LowStockWarning(LowStockWarning),
    ProductDeleted(ProductDeleted),
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::ProductCreated(_) => EventType::ProductCreated,
            Payload::ProductUpdated(_) => EventType::ProductUpdated,
            Payload::StockAdjusted(_) => EventType::StockAdjusted,
            Payload::LowStockWarning(_) => EventType::LowStockWarning,
            Payload::ProductDeleted(_) => EventType::ProductDeleted,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    ProductCreated,
    ProductUpdated,
    StockAdjusted,
    LowStockWarning,
    ProductDeleted,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::ProductCreated,
        EventType::ProductUpdated,
        EventType::StockAdjusted,
        EventType::LowStockWarning,
        EventType::ProductDeleted,
    ];

    /// The Avro record name, also used as the `event-type` header and SSE `event:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ProductCreated => "ProductCreated",
            EventType::ProductUpdated => "ProductUpdated",
            EventType::StockAdjusted => "StockAdjusted",
            EventType::LowStockWarning => "LowStockWarning",
            EventType::ProductDeleted => "ProductDeleted",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        // Accept a namespaced Avro full name as well as the short name.
        let short = name.rsplit('.').next().unwrap_or(name);
        EventType::ALL.into_iter().find(|t| t.as_str() == short)
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
