//! Serve a router on a listener until `shutdown` resolves; in-flight requests finish first.

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

pub async fn serve<F>(listener: TcpListener, app: Router, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // With the peer address, for rate limits by client address.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// CORS for read-only APIs that pages on other origins call (the live page reads the query
/// API): GET from the listed origins, with a token when reads need one.
pub fn read_cors(origins: &[String]) -> anyhow::Result<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderValue, Method};
    let origins = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(HeaderValue::from_str)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("CORS origins: {e}"))?;
    Ok(tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(origins))
        .allow_methods([Method::GET])
        .allow_headers([header::AUTHORIZATION])
        .max_age(std::time::Duration::from_secs(600)))
}
