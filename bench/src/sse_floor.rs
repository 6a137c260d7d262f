//! `sse-floor`: the floor under the notifier's fan-out. A bare broadcast server with the same
//! frames (an `id:` cursor over three partitions, `event:`, the event as JSON with its
//! `occurred_at`) and the same clients, but no Kafka, no registry, no cursor per client and no
//! filters: `POST /products` makes the frame once and broadcasts it; `GET /events/stream` sends
//! each client what the channel holds for it, batched like the notifier's. A client that falls
//! behind the channel is dropped (it has no way to resume here).

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    listen: String,
    /// Frames a client may fall behind (the notifier's `FOLDLINE_SSE_BUFFER` default).
    #[arg(long, default_value_t = 4096)]
    buffer: usize,
}

struct Floor {
    frames: broadcast::Sender<Bytes>,
    next: AtomicI64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let floor = Arc::new(Floor {
        frames: broadcast::channel(args.buffer).0,
        next: AtomicI64::new(0),
    });
    let app = Router::new()
        .route("/events/stream", get(stream))
        .route("/products", post(publish))
        .route("/ready", get(|| async { "ready" }))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The event as the notifier would send it: its frame, made once.
async fn publish(State(floor): State<Arc<Floor>>, body: Bytes) -> impl IntoResponse {
    let Ok(command) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let n = floor.next.fetch_add(1, Ordering::Relaxed);
    let product_id = uuid::Uuid::new_v4().to_string();
    let data = serde_json::json!({
        "event_id": uuid::Uuid::new_v4(),
        "product_id": product_id,
        "version": 1,
        "occurred_at": chrono::Utc::now().timestamp_millis(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "command_index": 0,
        "actor": "bench",
        "type": "ProductCreated",
        "payload": command,
        "position": format!("{}:{}", n % 3, n / 3),
    });
    let id = format!("0:{},1:{},2:{}", (n + 2) / 3, (n + 1) / 3, n / 3);
    let frame = format!("id: {id}\nevent: ProductCreated\ndata: {data}\n\n");
    let _ = floor.frames.send(Bytes::from(frame));
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"product_id": product_id})),
    )
        .into_response()
}

async fn stream(State(floor): State<Arc<Floor>>) -> impl IntoResponse {
    let receiver = floor.frames.subscribe();
    let connected = futures::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b": connected\nretry: 2000\n\n"))
    });
    let frames = futures::stream::unfold(receiver, |mut receiver| async move {
        let first = receiver.recv().await.ok()?;
        let Ok(second) = receiver.try_recv() else {
            return Some((Ok(first), receiver));
        };
        let mut batch = BytesMut::with_capacity(first.len() * 64);
        batch.extend_from_slice(&first);
        batch.extend_from_slice(&second);
        for _ in 2..64 {
            match receiver.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        Some((Ok(batch.freeze()), receiver))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(futures::StreamExt::chain(connected, frames)),
    )
}
