use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use foldline_producer::http::bodies::{BatchBody, CreateBody};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:18999")]
    listen: String,
    /// Answers each request at the next tick of a shared cycle of this many microseconds
    /// instead of at once: the shape of the producer's group commit (requests wait, then
    /// one signal wakes them all) with none of its work. 0: answer at once.
    #[arg(long, default_value_t = 0)]
    cycle_us: u64,
}

/// Parses the producer's own body types (the same JSON work) and answers, at once or at the
/// next tick of the cycle. The held floor serves the producer's rate with its concurrency,
/// so its CPU per request is the floor of a request that waits (the wake-ups are not shared
/// by as many requests as at full speed).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (tick, ticks) = watch::channel(0u64);
    if args.cycle_us > 0 {
        let cycle = Duration::from_micros(args.cycle_us);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(cycle);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                tick.send_modify(|n| *n += 1);
            }
        });
    }
    let held = (args.cycle_us > 0).then_some(ticks);
    let app = Router::new()
        .route("/products", post(create))
        .route("/commands", post(batch))
        .with_state(held);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

type Held = Option<watch::Receiver<u64>>;

async fn next_tick(held: Held) {
    if let Some(mut ticks) = held {
        ticks.borrow_and_update();
        let _ = ticks.changed().await;
    }
}

fn answer() -> Value {
    json!({"id": uuid::Uuid::new_v4().to_string(), "version": 1, "position": "0:0"})
}

async fn create(
    State(held): State<Held>,
    Json(_body): Json<CreateBody>,
) -> (StatusCode, Json<Value>) {
    next_tick(held).await;
    (StatusCode::CREATED, Json(answer()))
}

async fn batch(State(held): State<Held>, Json(body): Json<BatchBody>) -> Json<Value> {
    next_tick(held).await;
    let results: Vec<Value> = (0..body.len()).map(|_| answer()).collect();
    Json(json!({"id": "x", "version": 1, "position": "0:0", "results": results}))
}
