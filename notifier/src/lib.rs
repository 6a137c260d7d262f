//! `foldline-notifier`: live updates over Server-Sent Events (`GET /events/stream`) and a live
//! page for people (`GET /`). Every instance reads all partitions itself (no consumer group),
//! and an event's id is a cursor over all partitions, so clients can resume on any instance
//! behind a load balancer.
//!
//! # Layout
//! - [`feed`]: the live feed — what has been read (cursor, recent events) and the broadcast
//!   to clients; [`follow`] feeds it from the log, a test feeds it by hand.
//! - [`live_event`]: one event as clients get it (decoded, as JSON, framed once).
//! - [`sse`]: one client's stream, phase by phase (missed events from memory or the hub,
//!   then live), with its cursor and filter.
//! - [`hub`]: the one shared reader for clients resuming from beyond memory.
//! - [`routes`]: the HTTP handlers; [`app`] puts them together.
//! - [`filter`]: `?type=` and `?product_id=`; equal filters share one channel of the feed.
//! - [`cursor`]: the `Last-Event-ID` format (a position per partition).

pub mod cursor;
pub mod feed;
pub mod filter;
pub mod follow;
pub mod hub;
pub mod live_event;
pub mod routes;
pub mod sse;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use foldline_service::auth::Authenticator;

pub use routes::AppState;

/// What the live page is told about where it runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PageConfig {
    /// The query API as the page's browser reaches it.
    pub query_url: String,
    pub low_stock_threshold: i64,
}

/// Every route of the notifier but the ops routes (`/health`, `/ready`, `/metrics`). With
/// `readers`, the event routes need a reader's token; the page itself stays open.
pub fn app(state: Arc<AppState>, readers: Option<Arc<Authenticator>>, page: PageConfig) -> Router {
    let events = Router::new()
        .route("/events/stream", get(routes::stream))
        .route("/events/recent", get(routes::recent))
        .with_state(state);
    let page = Arc::new(page);
    foldline_service::auth::guard_reads(events, readers)
        .route("/", get(routes::page))
        .route(
            "/page-config.json",
            get(move || {
                let page = page.clone();
                async move { axum::Json((*page).clone()) }
            }),
        )
}

#[cfg(test)]
mod tests;
