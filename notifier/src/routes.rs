//! The notifier's routes: `GET /events/stream` (one client's SSE stream, see [`crate::sse`]),
//! `GET /events/recent`, the live page and its configuration.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use foldline_service::problem::Problem;
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::cursor::Cursor;
use crate::feed::Feed;
use crate::hub;
use crate::sse::{self, Filter};

/// What every request of the notifier shares.
pub struct AppState {
    pub feed: Feed,
    /// Recent events `GET /events/recent` may ask for.
    pub history: usize,
    /// One permit per open stream.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// The one reader of what resuming clients missed beyond memory.
    pub hub: hub::BacklogHub,
    /// Frames sent, shared or made per client.
    pub deliveries: Arc<sse::Deliveries>,
    /// Where each partition of the log ends for a read_committed reader, asked of the broker
    /// only for a cursor past what the feed has read.
    pub log_ends: LogEnds,
}

/// Asks the log where each partition ends (the next offset after its last committed record).
pub type LogEnds = Arc<dyn Fn() -> BoxFuture<'static, Result<Cursor, String>> + Send + Sync>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    #[serde(rename = "type")]
    types: Option<String>,
    product_id: Option<String>,
    /// For clients that cannot send the `Last-Event-ID` header.
    last_event_id: Option<String>,
    /// For clients that cannot send `Authorization` (EventSource); checked by the read guard.
    #[allow(dead_code)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecentParams {
    #[serde(rename = "type")]
    types: Option<String>,
    product_id: Option<String>,
    /// How many events (default 50, at most the history the notifier keeps).
    limit: Option<usize>,
    #[allow(dead_code)]
    access_token: Option<String>,
}

pub async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id);
    let resume = match last.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(text.parse::<Cursor>().map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-last-event-id",
                "Invalid Last-Event-ID",
                e,
            )
        })?),
    };
    let filter = Filter::new(params.types.as_deref(), params.product_id);
    // Until the feed has read up to the log's end it broadcasts nothing, while a client's
    // read-back stops at the end the log had when it started: events written in between would
    // reach the client by neither path. So streams open only once the feed follows the log
    // (EventSource retries a 503 after `retry`/`Retry-After`).
    if !state.feed.caught_up.load(Ordering::Acquire) {
        return Ok(catching_up());
    }
    if let Some(cursor) = &resume {
        check_cursor(cursor, &state.feed.partitions())?;
        check_not_past_the_end(cursor, &state).await?;
    }
    let Ok(stream_permit) = state.streams.clone().try_acquire_owned() else {
        return Ok(busy(
            "the notifier serves as many streams as it may; retry shortly",
        ));
    };
    let (cursor, live, start) = match resume {
        None => {
            let (live_cursor, live) = state.feed.subscribe(&filter);
            (live_cursor, live, sse::Start::Live)
        }
        Some(from) => match state.feed.resume(&from, &filter) {
            Some(resumed) => (from, resumed.live, sse::Start::Memory(resumed.missed)),
            None => {
                // Subscribed before joining: what the pass reads up to the log's end and
                // what the live feed sends from here overlap, and the cursor skips doubles.
                let (_, live) = state.feed.subscribe(&filter);
                let Some(membership) = state.hub.join(from.clone()) else {
                    return Ok(busy(
                        "too many clients are reading back older events; retry shortly",
                    ));
                };
                (from, live, sse::Start::Broker(membership))
            }
        },
    };
    let frames = sse::client_stream(
        cursor,
        live,
        start,
        filter,
        state.deliveries.clone(),
        stream_permit,
    );
    // The frames are made by the feed and shared between clients (axum's `Sse` would build
    // each client's own copy), so the body is the byte stream itself.
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies must not buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(frames),
    )
        .into_response())
}

/// A cursor must fit the topic: partitions it has, offsets that can exist. A cursor naming
/// other partitions would be echoed back in every message's `id:`.
fn check_cursor(cursor: &Cursor, partitions: &[i32]) -> Result<(), Problem> {
    for (partition, offset) in cursor.iter() {
        if !partitions.contains(&partition) || offset < 0 {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-last-event-id",
                "Invalid Last-Event-ID",
                format!(
                    "the cursor names {partition}:{offset}; the topic has partitions 0 to {}",
                    partitions.len().saturating_sub(1)
                ),
            ));
        }
    }
    Ok(())
}

/// A cursor past a partition's end names events that do not exist: a stream opened there
/// would wait for ever, then skip the events written below it. The feed may lag the log by
/// the events in flight (another notifier instance may have sent them already), so the log
/// itself is asked before a cursor past the feed is refused.
async fn check_not_past_the_end(cursor: &Cursor, state: &AppState) -> Result<(), Problem> {
    let read = state.feed.cursor();
    let ahead: Vec<(i32, i64)> = cursor
        .iter()
        .filter(|&(partition, offset)| offset > read.get(partition).unwrap_or(0))
        .collect();
    if ahead.is_empty() {
        return Ok(());
    }
    let ends = (state.log_ends)().await.map_err(|error| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "The log's end could not be read",
            format!("the cursor is past what this notifier has read, and the broker did not answer: {error}"),
        )
    })?;
    for (partition, offset) in ahead {
        let end = ends.get(partition).unwrap_or(0);
        if offset > end {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-last-event-id",
                "Invalid Last-Event-ID",
                format!(
                    "the cursor names {partition}:{offset}, past the end of partition {partition} ({partition}:{end}): resume from a cursor the stream sent, or connect without one"
                ),
            ));
        }
    }
    Ok(())
}

/// 503 with `Retry-After` past a cap.
fn busy(detail: &str) -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "The notifier is busy",
        detail,
    )
    .into_response()
}

/// 503 until the feed follows the log's end.
fn catching_up() -> Response {
    let mut response = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "catching-up",
        "The notifier is catching up with the log",
        "streams open once the notifier has read the topic to its end; retry shortly",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, "1".parse().expect("valid header"));
    response
}

/// `GET /events/recent`: the last events (oldest first) and the cursor after them; open
/// `/events/stream` with that cursor as `Last-Event-ID` to continue with no gap and no
/// duplicate.
pub async fn recent(
    State(state): State<Arc<AppState>>,
    params: Result<Query<RecentParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(50);
    if limit > state.history {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid parameter",
            format!("limit is at most {} (FOLDLINE_LIVE_HISTORY)", state.history),
        ));
    }
    if !state.feed.caught_up.load(Ordering::Acquire) {
        return Ok(catching_up());
    }
    let filter = Filter::new(params.types.as_deref(), params.product_id);
    let (cursor, events) = state.feed.recent(limit, |e| filter.matches(e));
    let events: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(&e.data).ok())
        .collect();
    Ok(
        axum::Json(serde_json::json!({"cursor": cursor.to_string(), "events": events}))
            .into_response(),
    )
}

pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
