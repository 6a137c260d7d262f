//! A product's history and its state as of any moment, from the `product_events` table the
//! projector fills with the read model (for ever: not limited to the recent-events window,
//! and kept for deleted products).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use foldline_projections::fold_products;
use foldline_schemas::read::{current_payload_json, payload_from_json};
use foldline_schemas::{Envelope, Payload};
use foldline_service::problem::Problem;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{bad_param, db_unavailable, not_found, wait, Answer, Position, QueryState};

/// Most events one page of history holds.
pub const MAX_HISTORY_LIMIT: i64 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    from_version: Option<i64>,
    limit: Option<i64>,
    after: Option<String>,
    timeout_ms: Option<u64>,
}

/// One row of `product_events`.
type EventRow = (
    i64,
    String,
    DateTime<Utc>,
    i32,
    i64,
    Option<String>,
    String,
    Value,
);

const EVENT_COLUMNS: &str =
    "version, event_type, occurred_at, partition, \"offset\", actor, correlation_id, payload";

fn event_json(row: &EventRow) -> Value {
    let (version, event_type, occurred_at, partition, offset, actor, correlation_id, payload) = row;
    json!({
        "version": version, "type": event_type,
        "occurred_at": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "position": Position { partition: *partition, offset: *offset }.to_string(),
        "actor": actor, "correlation_id": correlation_id,
        // Stored by whichever version projected it; served in the current shape.
        "payload": current_payload_json(event_type, payload),
    })
}

/// `GET /products/{id}/history?from_version=&limit=`: the product's events in version order,
/// from `from_version` (default 1), `limit` of them (default 100, at most 1000), and the
/// version to ask from for the next page (`null` on the last page). 404 if the product never
/// existed.
pub async fn product_history(
    State(state): State<Arc<QueryState>>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(bad_param(format!("limit must be 1 to {MAX_HISTORY_LIMIT}")));
    }
    let from = params.from_version.unwrap_or(1);
    if from < 1 {
        return Err(bad_param("from_version must be 1 or more"));
    }
    let schema = wait::until_applied(&state, params.after.as_deref(), params.timeout_ms).await?;
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM {schema}.product_events
         WHERE product_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
    ))
    .bind(&id)
    .bind(from)
    .bind(limit + 1)
    .fetch_all(&state.model.pool)
    .await
    .map_err(db_unavailable)?;
    if rows.is_empty() {
        let known: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM {schema}.product_events WHERE product_id = $1 LIMIT 1"
        ))
        .bind(&id)
        .fetch_optional(&state.model.pool)
        .await
        .map_err(db_unavailable)?;
        if known.is_none() {
            return Err(not_found(&id));
        }
    }
    let more = rows.len() as i64 > limit;
    let events: Vec<Value> = rows.iter().take(limit as usize).map(event_json).collect();
    let next = more.then(|| rows[limit as usize].0);
    Ok(Json(
        json!({ "id": id, "events": events, "next_from_version": next }),
    ))
}

/// A point in the log or in time, as `?as_of=` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Every event of the product up to and including this record (`P:O`, what a write
    /// answers as its `position`).
    Position(Position),
    /// Every event of the product that occurred at or before this time (event time).
    Time(DateTime<Utc>),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    fn from_str(text: &str) -> Result<AsOf, String> {
        if let Ok(position) = text.parse::<Position>() {
            return Ok(AsOf::Position(position));
        }
        DateTime::parse_from_rfc3339(text)
            .map(|t| AsOf::Time(t.with_timezone(&Utc)))
            .map_err(|_| format!("as_of must be an RFC 3339 time or a position P:O, not {text:?}"))
    }
}

/// The product `id` as of `as_of` in `schema`: the fold of its events up to that point, with
/// the position of the last one. 404 if it did not exist yet or was deleted by then.
pub async fn product_as_of(state: &QueryState, schema: &str, id: &str, as_of: AsOf) -> Answer {
    let (partition, offset, time) = match as_of {
        AsOf::Position(p) => (Some(p.partition), Some(p.offset), None),
        AsOf::Time(t) => (None, None, Some(t)),
    };
    // A product's events are all in one partition; a position in another partition says
    // nothing about them, and is refused rather than guessed at.
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM {schema}.product_events
         WHERE product_id = $1
           AND ($2::int4 IS NULL OR partition = $2) AND ($3::int8 IS NULL OR \"offset\" <= $3)
           AND ($4::timestamptz IS NULL OR occurred_at <= $4)
         ORDER BY version"
    ))
    .bind(id)
    .bind(partition)
    .bind(offset)
    .bind(time)
    .fetch_all(&state.model.pool)
    .await
    .map_err(db_unavailable)?;
    if let (Some(partition), true) = (partition, rows.is_empty()) {
        let elsewhere: Option<i32> = sqlx::query_scalar(&format!(
            "SELECT partition FROM {schema}.product_events WHERE product_id = $1 LIMIT 1"
        ))
        .bind(id)
        .fetch_optional(&state.model.pool)
        .await
        .map_err(db_unavailable)?;
        if let Some(theirs) = elsewhere.filter(|p| *p != partition) {
            return Err(bad_param(format!(
                "as_of names partition {partition}; the events of {id} are in partition {theirs}"
            )));
        }
    }
    let events: Vec<Envelope> = rows.iter().filter_map(|r| envelope(id, r)).collect();
    let Some(last) = rows.last() else {
        return Err(not_found(id));
    };
    let product = fold_products(&events).pop();
    match product {
        Some(p) if !p.deleted && p.name.is_some() => Ok(Json(json!({
            "id": p.id, "name": p.name, "price_cents": p.price_cents, "stock": p.stock,
            "seller_id": p.seller_id, "version": p.version,
            "updated_at": p.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "low_stock_threshold": p.low_stock_threshold,
            "position": Position { partition: last.3, offset: last.4 }.to_string(),
        }))),
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Product not found",
            format!("product {id} did not exist at that point, or was deleted by then"),
        )),
    }
}

/// The event of a history row, for the fold (its id and idempotency key are not kept).
fn envelope(id: &str, row: &EventRow) -> Option<Envelope> {
    let (version, event_type, occurred_at, _, _, actor, correlation_id, payload) = row;
    let payload: Payload = payload_from_json(event_type, payload).ok()?;
    Some(Envelope {
        event_id: uuid::Uuid::nil(),
        product_id: id.to_owned(),
        version: *version,
        occurred_at: *occurred_at,
        correlation_id: correlation_id.clone(),
        idempotency_key: None,
        command_index: None,
        payload,
        actor: actor.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_of_takes_a_position_or_an_rfc3339_time() {
        assert_eq!(
            "1:42".parse::<AsOf>(),
            Ok(AsOf::Position(Position {
                partition: 1,
                offset: 42
            }))
        );
        let AsOf::Time(t) = "2026-12-01T10:00:00+01:00".parse::<AsOf>().unwrap() else {
            panic!("a time")
        };
        assert_eq!(t.to_rfc3339(), "2026-12-01T09:00:00+00:00");
        for bad in ["", "yesterday", "1:", ":4", "2026-12-01", "1:2:3"] {
            assert!(bad.parse::<AsOf>().is_err(), "{bad}");
        }
    }
}
