//! Parked products: a sequenced dead letter (as Axon's). When a sink refuses a record for
//! good — a data error, not an outage — the record's product is *parked*: that record and
//! every later record of the same product are set aside, in order, and every other product
//! keeps flowing. The sink keeps the parked entries with its data (and offsets), so they
//! survive restarts exactly as the data does; the runtime keeps the set of parked products in
//! memory, loaded from the sink at start and after every rebalance or reseek.
//!
//! An operator lists them and applies them again once fixed (`retry`: read again from the
//! log, applied in order by the sink, which forgets them in the same step) or gives them up
//! (`drop`), through the consumer's ops routes (`foldline parked …`). Those requests reach
//! the consume loop through a channel and run between batches, so they never race a batch.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::Record;

/// One record set aside: where it is in the log and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parked {
    pub partition: i32,
    pub offset: i64,
    pub product_id: String,
    pub version: i64,
    pub event_type: String,
    pub reason: String,
}

/// The reason given to the records parked behind the first one of their product.
pub const BEHIND_A_PARKED_EVENT: &str = "an earlier event of this product is parked";

impl Parked {
    /// The entry of a record written by a newer schema than this build reads, parked as it
    /// is read (it cannot be decoded into a [`Record`]).
    pub fn newer(
        partition: i32,
        offset: i64,
        event: &foldline_schemas::read::NewerEvent,
    ) -> Parked {
        Parked {
            partition,
            offset,
            product_id: event.product_id.clone(),
            version: event.version,
            event_type: event.event_type.clone(),
            reason: event.to_string(),
        }
    }

    pub fn of(record: &Record, reason: impl Into<String>) -> Parked {
        Parked {
            partition: record.partition,
            offset: record.offset,
            product_id: record.event.product_id.clone(),
            version: record.event.version,
            event_type: record.event.event_type().as_str().to_owned(),
            reason: reason.into(),
        }
    }
}

/// The products this consumer has parked.
#[derive(Debug, Default)]
pub struct ParkedSet {
    products: HashSet<String>,
}

impl ParkedSet {
    pub fn replace(&mut self, entries: &[Parked]) {
        self.products = entries.iter().map(|p| p.product_id.clone()).collect();
    }

    pub fn contains(&self, product: &str) -> bool {
        self.products.contains(product)
    }

    pub fn insert(&mut self, product: &str) {
        self.products.insert(product.to_owned());
    }

    pub fn remove(&mut self, product: &str) {
        self.products.remove(product);
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }
}

/// A copy of `batch` with the records of parked products moved to its parked entries, in
/// order; `None` when it holds none. A product is parked when `parked` holds it, or from the
/// first of its records the batch parked as it was read (written by a newer schema) on.
pub fn set_aside(batch: &crate::Batch, parked: &ParkedSet) -> Option<crate::Batch> {
    let mut parked_from: HashMap<&str, i64> = HashMap::new();
    for entry in &batch.parked {
        let first = parked_from.entry(&entry.product_id).or_insert(entry.offset);
        *first = (*first).min(entry.offset);
    }
    let behind = |record: &crate::Record| {
        parked.contains(&record.event.product_id)
            || parked_from
                .get(record.event.product_id.as_str())
                .is_some_and(|first| record.offset > *first)
    };
    if (parked.is_empty() && parked_from.is_empty()) || !batch.records.iter().any(behind) {
        return None;
    }
    let mut prepared = crate::Batch {
        records: Vec::with_capacity(batch.records.len()),
        ..batch.clone()
    };
    for record in &batch.records {
        if behind(record) {
            prepared
                .parked
                .push(Parked::of(record, BEHIND_A_PARKED_EVENT));
        } else {
            prepared.records.push(record.clone());
        }
    }
    prepared.parked.sort_by_key(|p| (p.partition, p.offset));
    Some(prepared)
}

/// What an operator asks of the parked records.
#[derive(Debug)]
pub enum ParkingRequest {
    List(oneshot::Sender<Result<Vec<Parked>, String>>),
    Retry(String, oneshot::Sender<Result<Resolved, String>>),
    Drop(String, oneshot::Sender<Result<Resolved, String>>),
}

/// What a retry or drop did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub product_id: String,
    /// Records applied (retry) or given up (drop).
    pub records: usize,
    pub action: &'static str,
}

/// The ops routes: `GET /parked`, `POST /parked/{product}/retry`, `POST /parked/{product}/drop`.
/// (The ops port listens on loopback by default; see the README.)
pub fn routes(requests: mpsc::Sender<ParkingRequest>) -> Router {
    Router::new()
        .route("/parked", get(list))
        .route("/parked/{product}/retry", post(retry))
        .route("/parked/{product}/drop", post(drop_parked))
        .with_state(requests)
}

async fn ask<T: Serialize>(
    requests: &mpsc::Sender<ParkingRequest>,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> ParkingRequest,
) -> Response {
    let (reply, answer) = oneshot::channel();
    if requests.send(make(reply)).await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "the consumer is stopping");
    }
    match answer.await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(error)) => problem(StatusCode::CONFLICT, &error),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "the consumer is stopping"),
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    response
}

async fn list(State(requests): State<mpsc::Sender<ParkingRequest>>) -> Response {
    ask(&requests, ParkingRequest::List).await
}

async fn retry(
    State(requests): State<mpsc::Sender<ParkingRequest>>,
    Path(product): Path<String>,
) -> Response {
    ask(&requests, |reply| ParkingRequest::Retry(product, reply)).await
}

async fn drop_parked(
    State(requests): State<mpsc::Sender<ParkingRequest>>,
    Path(product): Path<String>,
) -> Response {
    ask(&requests, |reply| ParkingRequest::Drop(product, reply)).await
}
