//! # Layout
//! The event contract of the `products` topic.
//! - `avro/products-value.avsc`: the source of truth, registered as subject `products-value`.
//! - [`event`]: the Rust types of the envelope and its five payloads (serde for JSON views).
//! - [`avro`]: mapping between those types and Avro values.
//! - [`read`]: the one function every read path decodes through: any schema version to the
//!   current shape, or "written by a newer schema".
//! - [`wire`]: encode/decode in the Confluent wire format through the schema registry.
//! - [`compat`]: Confluent-style compatibility checks (BACKWARD and friends).
//! - [`limits`]: the limits of every field (lengths, characters, ranges) that the write API
//!   enforces so every sink can hold every accepted event.

pub mod avro;
pub mod compat;
pub mod event;
pub mod limits;
pub mod read;
pub mod wire;

pub use event::{
    Envelope, EventType, LowStockThresholdSet, LowStockWarning, Payload, ProductCreated,
    ProductDeleted, ProductUpdated, StockAdjusted,
};

/// The envelope schema as committed in `schemas/avro/`.
pub const PRODUCTS_VALUE_SCHEMA: &str = include_str!("../avro/products-value.avsc");

/// The registry subject of the topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}
