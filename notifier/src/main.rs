//! `foldline-notifier`: live updates over Server-Sent Events (`GET /events/stream`) and a live
//! page for people (`GET /`). Every instance reads all partitions itself (no consumer group),
//! and an event's id is a cursor over all partitions, so clients can resume on any instance
//! behind a load balancer.

mod cursor;
mod feed;
mod hub;
mod sse;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use foldline_schemas::wire::EventCodec;
use foldline_service::ops::Ops;
use foldline_service::problem::Problem;
use serde::Deserialize;

use cursor::Cursor;
use feed::Feed;
use sse::{Backlog, Filter};

#[derive(Parser)]
#[command(
    name = "foldline-notifier",
    version,
    about = "Live product events over Server-Sent Events, with a live page"
)]
struct Cli {
    #[command(flatten)]
    log: foldline_service::config::EventLog,
    #[arg(
        long,
        env = "FOLDLINE_NOTIFIER_LISTEN",
        default_value = "127.0.0.1:8083"
    )]
    listen: String,
    /// Events a client may fall behind the live feed before it is told to reconnect.
    #[arg(long, env = "FOLDLINE_SSE_BUFFER", default_value_t = 4096)]
    buffer: usize,
    /// SSE streams served at once; past it `GET /events/stream` answers 503 with
    /// `Retry-After` (EventSource retries by itself).
    #[arg(long, env = "FOLDLINE_SSE_MAX_STREAMS", default_value_t = 10_000)]
    max_streams: usize,
    /// Resuming clients waiting for the shared reader at once, when what they missed is older
    /// than the notifier's memory (`FOLDLINE_SSE_BUFFER` events); past it 503 `Retry-After`.
    #[arg(long, env = "FOLDLINE_SSE_MAX_BACKLOG_CLIENTS", default_value_t = 1000)]
    max_backlog_clients: usize,
    /// Recent events kept for `GET /events/recent` (the live page's history on arrival).
    #[arg(long, env = "FOLDLINE_LIVE_HISTORY", default_value_t = 200)]
    history: usize,
    /// The query API as the live page's browser reaches it (totals, chart, low stock).
    #[arg(
        long,
        env = "FOLDLINE_QUERY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    query_url: String,
    /// Stock below this is low (the producer's and projector's setting); the page lists those.
    #[arg(long, env = "LOW_STOCK_THRESHOLD", default_value_t = 5)]
    low_stock_threshold: i64,
    /// Whether the stream needs a token (the page itself stays open).
    #[command(flatten)]
    reads: foldline_service::auth::ReadAccess,
}

struct AppState {
    feed: Feed,
    history: usize,
    /// One permit per open stream.
    streams: Arc<tokio::sync::Semaphore>,
    /// The one reader of what resuming clients missed beyond memory.
    hub: hub::BacklogHub,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamParams {
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
struct RecentParams {
    #[serde(rename = "type")]
    types: Option<String>,
    product_id: Option<String>,
    /// How many events (default 50, at most the history the notifier keeps).
    limit: Option<usize>,
    #[allow(dead_code)]
    access_token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("info,rdkafka::client=off");
    let cli = Cli::parse();
    let readers = cli.reads.authenticator()?;
    let codec = Arc::new(EventCodec::new(&cli.log.registry_url, &cli.log.topic)?);
    let feed = feed::start(
        cli.log.brokers.clone(),
        cli.log.topic.clone(),
        codec.clone(),
        cli.buffer,
        cli.history,
    );
    let readiness = {
        let caught_up = feed.caught_up.clone();
        foldline_service::ops::readiness(move || {
            let ready = caught_up.load(Ordering::Acquire);
            async move {
                if ready {
                    Ok(())
                } else {
                    Err("reading the topic up to its end".to_owned())
                }
            }
        })
    };
    let ops = Ops::new("notifier", env!("CARGO_PKG_VERSION"), readiness);
    let clients = prometheus::IntGauge::new("sse_clients", "Connected SSE clients")?;
    ops.registry.register(Box::new(clients.clone()))?;
    let backlog = Arc::new(Backlog {
        brokers: cli.log.brokers,
        topic: cli.log.topic,
        codec,
    });
    let hub = hub::BacklogHub::start(backlog, cli.max_backlog_clients);
    let passes = prometheus::IntCounter::new(
        "sse_backlog_passes_total",
        "Reads of the log for resuming clients beyond memory (one reader each, shared by the clients waiting)",
    )?;
    ops.registry.register(Box::new(passes.clone()))?;
    let state = Arc::new(AppState {
        feed,
        history: cli.history,
        streams: Arc::new(tokio::sync::Semaphore::new(cli.max_streams.max(1))),
        hub: hub.clone(),
    });
    {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                clients.set(state.feed.clients() as i64);
                let done = state.hub.passes.load(std::sync::atomic::Ordering::Relaxed);
                passes.inc_by(done.saturating_sub(passes.get()));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let stream_routes = Router::new()
        .route("/events/stream", get(stream))
        .route("/events/recent", get(recent))
        .with_state(state);
    let page_config = Arc::new(serde_json::json!({
        "query_url": cli.query_url,
        "low_stock_threshold": cli.low_stock_threshold,
    }));
    let app = foldline_service::auth::guard_reads(stream_routes, readers)
        .route("/", get(page))
        .route(
            "/page-config.json",
            get(move || {
                let config = page_config.clone();
                async move { axum::Json((*config).clone()) }
            }),
        )
        .merge(ops.routes());
    let app = ops.instrument(app);
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    foldline_service::serve::serve(listener, app, foldline_service::shutdown::signal()).await?;
    Ok(())
}

async fn stream(
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
    }
    let Ok(stream_permit) = state.streams.clone().try_acquire_owned() else {
        return Ok(busy(
            "the notifier serves as many streams as it may; retry shortly",
        ));
    };
    let (cursor, live, start) = match resume {
        None => {
            let (live_cursor, live) = state.feed.subscribe();
            (live_cursor, live, sse::Start::Live)
        }
        Some(from) => match state.feed.resume(&from) {
            Some(resumed) => (from, resumed.live, sse::Start::Memory(resumed.missed)),
            None => {
                // Subscribed before joining: what the pass reads up to the log's end and
                // what the live feed sends from here overlap, and the cursor skips doubles.
                let (_, live) = state.feed.subscribe();
                let Some(membership) = state.hub.join(from.clone()) else {
                    return Ok(busy(
                        "too many clients are reading back older events; retry shortly",
                    ));
                };
                (from, live, sse::Start::Broker(membership))
            }
        },
    };
    let events = sse::client_stream(cursor, live, start, filter, stream_permit);
    let mut response = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("heartbeat"),
        )
        .into_response();
    // Proxies must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", "no".parse().expect("valid header"));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        "no-cache".parse().expect("valid header"),
    );
    Ok(response)
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
async fn recent(
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

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
