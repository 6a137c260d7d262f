//! Reading a product's recent events back: one Query on its `product#<id>` partition, newest
//! first (the sort key starts with the event time). The inverse of [`crate::items`], kept
//! beside it so the item layout is known in one crate.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use foldline_service::aws::CallError;
use serde_json::{json, Value};

use crate::items::Item;

/// The table to read, and the client to read it with.
#[derive(Clone)]
pub struct RecentEventsTable {
    pub client: Client,
    pub table: String,
}

impl RecentEventsTable {
    /// Up to `limit` of the product's events, newest first, as JSON like the SSE `data` (the
    /// envelope's fields the table keeps, with its `position`, the payload under `payload`).
    pub async fn product_events(
        &self,
        product_id: &str,
        limit: i32,
    ) -> Result<Vec<Value>, CallError> {
        product_events(&self.client, &self.table, product_id, limit).await
    }
}

async fn product_events(
    client: &Client,
    table: &str,
    product_id: &str,
    limit: i32,
) -> Result<Vec<Value>, CallError> {
    let answer = client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("product#{product_id}")))
        .scan_index_forward(false)
        .limit(limit)
        .send()
        .await
        .map_err(|e| CallError::classify("query", e))?;
    Ok(answer.items().iter().map(event_json).collect())
}

fn event_json(item: &Item) -> Value {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let version = item
        .get("version")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<i64>().ok());
    // As in the SSE `data` (the envelope's Avro timestamp): epoch milliseconds.
    let occurred_at = text("occurred_at")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.timestamp_millis());
    let event_type = text("event_type");
    // Stored by whichever version wrote the item; served in the current shape.
    let payload = text("data")
        .and_then(|d| serde_json::from_str::<Value>(&d).ok())
        .map(|stored| {
            foldline_schemas::read::current_payload_json(
                event_type.as_deref().unwrap_or(""),
                &stored,
            )
        })
        .unwrap_or(Value::Null);
    json!({
        "event_id": text("event_id"),
        "event_type": event_type,
        "product_id": text("product_id"),
        "version": version,
        "occurred_at": occurred_at,
        "position": text("position"),
        "payload": payload,
    })
}
