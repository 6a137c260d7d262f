use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use foldline_producer::http::bodies::{BatchBody, CreateBody};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:18999")]
    listen: String,
}

/// Parses the producer's own body types (the same JSON work) and answers at once.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/products", post(create))
        .route("/commands", post(batch));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn answer() -> Value {
    json!({"id": uuid::Uuid::new_v4().to_string(), "version": 1, "position": "0:0"})
}

async fn create(Json(_body): Json<CreateBody>) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(answer()))
}

async fn batch(Json(body): Json<BatchBody>) -> Json<Value> {
    let results: Vec<Value> = (0..body.len()).map(|_| answer()).collect();
    Json(json!({"id": "x", "version": 1, "position": "0:0", "results": results}))
}
