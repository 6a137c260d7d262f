//! Serve a router on a listener until `shutdown` resolves; in-flight requests finish first.
//!
//! Every listener of every Foldline service is bounded here (issue 25):
//! - at most `FOLDLINE_MAX_CONNECTIONS` connections at once: past it the listener stops
//!   accepting (the kernel's backlog holds the rest) until one closes, so file descriptors
//!   and per-connection memory cannot be exhausted by opening sockets;
//! - a header-read timeout (`FOLDLINE_HEADER_READ_TIMEOUT_MS`): a connection that does not
//!   send a whole request head within it — slowloris, or an idle keep-alive connection — is
//!   closed. (axum's `serve` sets no timer, so hyper's own timeout never ran.)
//!
//! HTTP/1.1 only: every client of Foldline (curl, browsers' EventSource without TLS,
//! Confluent's clients) speaks it, and hyper applies its header timeout from the first byte.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

/// Bounds of a listener, from the environment (the same on every service).
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Connections at once per listener: above the notifier's default stream cap (10,000 SSE
/// clients), below the file descriptors a process gets here (20,000).
pub const DEFAULT_MAX_CONNECTIONS: usize = 12_000;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) a listener reads.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a stopping server waits for open connections before it closes them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl ListenerLimits {
    pub fn from_env() -> ListenerLimits {
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|v| *v > 0)
        };
        ListenerLimits {
            max_connections: number("FOLDLINE_MAX_CONNECTIONS")
                .map_or(DEFAULT_MAX_CONNECTIONS, |v| v as usize),
            header_read_timeout: number("FOLDLINE_HEADER_READ_TIMEOUT_MS")
                .map_or(DEFAULT_HEADER_READ_TIMEOUT, Duration::from_millis),
        }
    }
}

pub async fn serve<F>(listener: TcpListener, app: Router, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(listener, app, shutdown, ListenerLimits::from_env()).await
}

pub async fn serve_with<F>(
    listener: TcpListener,
    app: Router,
    shutdown: F,
    limits: ListenerLimits,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    tracing::info!(%addr, max_connections = limits.max_connections,
        header_read_timeout = ?limits.header_read_timeout, "listening");
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A request head past 64 KiB is refused (431) instead of buffered (hyper's default
        // allows ~400 KiB per connection).
        .max_buf_size(MAX_HEAD_BYTES);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        // The peer address, for rate limits by client address (as `into_make_service_with_connect_info`).
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().call(request)
        });
        // No upgrades: no Foldline route switches protocols.
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace; closing them");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: ListenerLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            limits,
        ));
        (addr, stop)
    }

    async fn get(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        answer
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_headers_is_closed() {
        let (addr, _stop) = start(ListenerLimits {
            max_connections: 10,
            header_read_timeout: Duration::from_millis(300),
        })
        .await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut buffer = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = slow.read(&mut buffer).await;
            let _ = idle.read(&mut buffer).await;
        })
        .await;
        assert!(closed.is_ok(), "both closed by the header-read timeout");
        assert!(get(addr).await.ends_with("ok"));
    }

    #[tokio::test]
    async fn past_the_connection_limit_new_connections_wait_for_a_free_one() {
        let (addr, _stop) = start(ListenerLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_millis(500),
        })
        .await;
        let _held: Vec<TcpStream> = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = tokio::time::Instant::now();
        // Served only once the header timeout closed a held connection.
        assert!(get(addr).await.ends_with("ok"));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
}
