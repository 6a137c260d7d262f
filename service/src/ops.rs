//! The operational routes every binary serves, with the contract's health body:
//! `GET /health` → `{"success": true, "service", "status": "healthy", "version"}`,
//! `GET /ready` → 200 only when the service's dependencies answer, `GET /metrics`.
//!
//! Every `/metrics` also answers `service_ready` (the readiness check, run at the scrape, at
//! most [`READY_AT_SCRAPE`]) and `service_info{service, version}`: alert rules and
//! `foldline status` tell a service that is up but cannot work from one that works.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{header, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// How long a scrape waits for the readiness check before it reports not ready.
pub const READY_AT_SCRAPE: Duration = Duration::from_secs(2);
use serde_json::json;

/// Answers whether the service can do its work now; `Err` carries the reason shown on `/ready`.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Wraps an async check into a [`ReadinessCheck`].
pub fn readiness<F, Fut>(check: F) -> ReadinessCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

#[derive(Clone)]
pub struct Ops {
    pub service: &'static str,
    pub version: &'static str,
    pub registry: Registry,
    pub readiness: ReadinessCheck,
    http: HttpMetrics,
}

#[derive(Clone)]
struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    ready: IntGauge,
}

impl Ops {
    pub fn new(service: &'static str, version: &'static str, readiness: ReadinessCheck) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by matched route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP latency by matched route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("register once");
        registry
            .register(Box::new(latency.clone()))
            .expect("register once");
        let ready = IntGauge::new(
            "service_ready",
            "1 when the service's readiness check passed at this scrape, else 0",
        )
        .expect("valid metric");
        registry
            .register(Box::new(ready.clone()))
            .expect("register once");
        let info = IntGaugeVec::new(
            Opts::new("service_info", "The service and its version (always 1)"),
            &["service", "version"],
        )
        .expect("valid metric");
        info.with_label_values(&[service, version]).set(1);
        registry.register(Box::new(info)).expect("register once");
        Ops {
            service,
            version,
            registry,
            readiness,
            http: HttpMetrics {
                requests,
                latency,
                ready,
            },
        }
    }

    /// `/health`, `/ready`, `/metrics`, to be merged into the service's router.
    pub fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Wraps a router so every request is counted by its matched route (bounded labels).
    pub fn instrument(&self, router: Router) -> Router {
        let metrics = self.http.clone();
        router.layer(axum::middleware::from_fn(
            move |req: Request<Body>, next: Next| {
                let metrics = metrics.clone();
                async move {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".to_owned());
                    // A fixed set: any other method would be a new series per request.
                    let method = match req.method().as_str() {
                        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
                        _ => "other",
                    }
                    .to_owned();
                    let started = Instant::now();
                    let response = next.run(req).await;
                    metrics
                        .latency
                        .with_label_values(&[&method, &route])
                        .observe(started.elapsed().as_secs_f64());
                    metrics
                        .requests
                        .with_label_values(&[&method, &route, response.status().as_str()])
                        .inc();
                    response
                }
            },
        ))
    }
}

async fn health(State(ops): State<Ops>) -> impl IntoResponse {
    Json(json!({
        "success": true,
        "service": ops.service,
        "status": "healthy",
        "version": ops.version,
    }))
}

async fn ready(State(ops): State<Ops>) -> Response {
    match (ops.readiness)().await {
        Ok(()) => Json(json!({"success": true, "service": ops.service, "status": "ready"}))
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "success": false,
                "service": ops.service,
                "status": "not ready",
                "detail": reason,
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let ready = matches!(
        tokio::time::timeout(READY_AT_SCRAPE, (ops.readiness)()).await,
        Ok(Ok(()))
    );
    ops.http.ready.set(ready as i64);
    let mut buffer = Vec::new();
    let families = ops.registry.gather();
    if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
        tracing::error!(%error, "failed to encode metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        buffer,
    )
        .into_response()
}
