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
