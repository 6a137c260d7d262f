//! The query API over the live read model (CONTRACT.md): products, seller stats, analytics,
//! and `?after=P:O` read-your-writes on every read.

mod history;
pub mod progress;
mod wait;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use foldline_service::problem::Problem;
use serde::Deserialize;
use serde_json::{json, Value};

use foldline_postgres::model::ReadModel;
pub use wait::Position;

pub struct QueryState {
    pub model: ReadModel,
    /// How far the live model has got (see [`progress`]).
    pub progress: tokio::sync::watch::Receiver<std::sync::Arc<progress::Progress>>,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    /// One permit per request waiting on `?after=`: waiters are bounded.
    pub waiters: Arc<tokio::sync::Semaphore>,
    /// The DynamoDB recent-events table, for `GET /products/{id}/events`.
    pub recent_events: foldline_recent_events::read::RecentEventsTable,
    /// How long reads with `?after=` waited for the model (`query_after_wait_seconds`): the
    /// last stage of write → visible.
    pub after_wait: prometheus::Histogram,
}

pub fn routes(state: Arc<QueryState>) -> Router {
    Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
        .route("/products/{id}/events", get(product_events))
        .route("/products/{id}/history", get(history::product_history))
        .route("/sellers/{seller_id}/stats", get(seller_stats))
        .route("/analytics/summary", get(analytics_summary))
        .route("/progress", get(read_progress))
        .with_state(state)
}

/// `?after=P:O&timeout_ms=N`, accepted by every read.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    after: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    seller_id: Option<String>,
    /// Only products with less stock than this (the low-stock list).
    stock_below: Option<i64>,
    limit: Option<i64>,
    cursor: Option<String>,
    after: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    limit: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyticsParams {
    hours: Option<i64>,
    after: Option<String>,
    timeout_ms: Option<u64>,
}

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

type Answer = Result<Json<Value>, Problem>;

/// `GET /products/{id}`: `?after=`, `?timeout_ms=` and `?as_of=` (see [`history::AsOf`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProductParams {
    after: Option<String>,
    timeout_ms: Option<u64>,
    as_of: Option<String>,
}

fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Product not found",
        format!("no product {id}"),
    )
}

fn db_unavailable(error: sqlx::Error) -> Problem {
    // A parameter PostgreSQL cannot take (SQLSTATE class 22: a NUL in text, a number out of
    // range) is the request's fault, not the database's.
    if let sqlx::Error::Database(db) = &error {
        if db.code().is_some_and(|c| c.starts_with("22")) {
            return bad_param(
                "a value of the request cannot be stored or compared (a NUL character, a number out of range)",
            );
        }
    }
    tracing::warn!(%error, "read model query failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database-unavailable",
        "The read model is unavailable",
        "the database did not answer; retry shortly",
    )
}

fn bad_param(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query parameter",
        detail,
    )
}

type ProductRow = (
    String,
    String,
    i64,
    i64,
    String,
    i64,
    DateTime<Utc>,
    Option<i64>,
);

/// A product as the contract gives it, plus `low_stock_threshold` (its own; `null`: the
/// default), added with the schema of 2026-12-07.
fn product_json(row: ProductRow) -> Value {
    let (id, name, price_cents, stock, seller_id, version, updated_at, threshold) = row;
    json!({
        "id": id, "name": name, "price_cents": price_cents, "stock": stock,
        "seller_id": seller_id, "version": version,
        "updated_at": updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "low_stock_threshold": threshold,
    })
}

const PRODUCT_COLUMNS: &str =
    "id, name, price_cents, stock, seller_id, version, updated_at, low_stock_threshold";

async fn list_products(
    State(state): State<Arc<QueryState>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_param(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let schema = wait::until_applied(&state, params.after.as_deref(), params.timeout_ms).await?;
    // Keyset pagination by id: the cursor is the last id of the previous page.
    let rows: Vec<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM {schema}.products
         WHERE NOT deleted AND name IS NOT NULL
           AND ($1::text IS NULL OR seller_id = $1) AND ($2::text IS NULL OR id > $2)
           AND ($4::bigint IS NULL OR stock < $4)
         ORDER BY id LIMIT $3"
    ))
    .bind(&params.seller_id)
    .bind(&params.cursor)
    .bind(limit + 1)
    .bind(params.stock_below)
    .fetch_all(&state.model.pool)
    .await
    .map_err(db_unavailable)?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Value> = rows
        .into_iter()
        .take(limit as usize)
        .map(product_json)
        .collect();
    let next_cursor = if more {
        items.last().map(|p| p["id"].clone())
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// `GET /progress`: the next offset the live read model will apply, per partition. Compared
/// with the log's end it says how far the model is behind (the live page shows it).
async fn read_progress(State(state): State<Arc<QueryState>>) -> Answer {
    let progress = state.progress.borrow().clone();
    let next: BTreeMap<String, i64> = progress
        .next
        .iter()
        .map(|(partition, offset)| (partition.to_string(), offset))
        .collect();
    Ok(Json(json!({ "next_offsets": next })))
}

async fn get_product(
    State(state): State<Arc<QueryState>>,
    Path(id): Path<String>,
    params: Result<Query<ProductParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(c) = params?;
    let as_of: Option<history::AsOf> = c
        .as_of
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(bad_param)?;
    let schema = wait::until_applied(&state, c.after.as_deref(), c.timeout_ms).await?;
    if let Some(as_of) = as_of {
        return history::product_as_of(&state, &schema, &id, as_of).await;
    }
    let row: Option<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM {schema}.products
         WHERE id = $1 AND NOT deleted AND name IS NOT NULL"
    ))
    .bind(&id)
    .fetch_optional(&state.model.pool)
    .await
    .map_err(db_unavailable)?;
    row.map(|r| Json(product_json(r)))
        .ok_or_else(|| not_found(&id))
}

/// `GET /products/{id}/events?limit=N`: the product's recent events, newest first, from the
/// DynamoDB recent-events table (what the recent-events consumer has written; items expire
/// after their TTL). An unknown product has none: `{"items": []}`.
async fn product_events(
    State(state): State<Arc<QueryState>>,
    Path(id): Path<String>,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad_param("limit must be 1 to 100"));
    }
    let items = state
        .recent_events
        .product_events(&id, limit)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "recent-events query failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "recent-events-unavailable",
                "The recent-events table is unavailable",
                "DynamoDB did not answer; retry shortly",
            )
        })?;
    Ok(Json(json!({ "items": items })))
}

async fn seller_stats(
    State(state): State<Arc<QueryState>>,
    Path(seller_id): Path<String>,
    consistency: Result<Query<Consistency>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(c) = consistency?;
    let schema = wait::until_applied(&state, c.after.as_deref(), c.timeout_ms).await?;
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT products, total_stock, stock_value_cents, low_stock_products
         FROM {schema}.seller_stats WHERE seller_id = $1"
    ))
    .bind(&seller_id)
    .fetch_optional(&state.model.pool)
    .await
    .map_err(db_unavailable)?;
    let (products, total_stock, stock_value_cents, low_stock_products) = row.ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Seller not found",
            format!("no products were ever listed by seller {seller_id}"),
        )
    })?;
    Ok(Json(json!({
        "products": products, "total_stock": total_stock,
        "stock_value_cents": stock_value_cents, "low_stock_products": low_stock_products,
    })))
}

async fn analytics_summary(
    State(state): State<Arc<QueryState>>,
    params: Result<Query<AnalyticsParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(params) = params?;
    let hours = params.hours.unwrap_or(24);
    if !(1..=24 * 366).contains(&hours) {
        return Err(bad_param("hours must be 1 to 8784"));
    }
    let schema = wait::until_applied(&state, params.after.as_deref(), params.timeout_ms).await?;
    let by_type: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT event_type, sum(events)::bigint FROM {schema}.event_counts GROUP BY event_type"
    ))
    .fetch_all(&state.model.pool)
    .await
    .map_err(db_unavailable)?;
    let hourly: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(&format!(
        "SELECT hour, sum(events)::bigint FROM {schema}.event_counts
         WHERE hour >= date_trunc('hour', now()) - make_interval(hours => $1::int - 1)
         GROUP BY hour ORDER BY hour"
    ))
    .bind(hours as i32)
    .fetch_all(&state.model.pool)
    .await
    .map_err(db_unavailable)?;
    let events_by_type: BTreeMap<String, i64> = by_type.into_iter().collect();
    Ok(Json(json!({
        "total_events": events_by_type.values().sum::<i64>(),
        "events_by_type": events_by_type,
        "hourly": hourly.into_iter().map(|(hour, events)| json!({
            "hour": hour.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "events": events,
        })).collect::<Vec<_>>(),
    })))
}
