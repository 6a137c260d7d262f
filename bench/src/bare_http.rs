use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:18999")]
    listen: String,
}

/// The same shape the producer accepts on `POST /products`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CreateBody {
    name: String,
    price_cents: i64,
    stock: i64,
    seller_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    commands: Vec<BatchCommand>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code)]
enum BatchCommand {
    Create {
        name: String,
        price_cents: i64,
        stock: i64,
        seller_id: String,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/products", post(create))
        .route("/commands", post(batch));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn create(Json(_body): Json<CreateBody>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({"id": uuid::Uuid::new_v4().to_string(), "version": 1, "position": "0:0"})),
    )
}

async fn batch(Json(body): Json<BatchBody>) -> Json<Value> {
    let results: Vec<Value> = body
        .commands
        .iter()
        .map(|_| json!({"id": uuid::Uuid::new_v4().to_string(), "version": 1, "position": "0:0"}))
        .collect();
    Json(json!({"id": "x", "version": 1, "position": "0:0", "results": results }))
}
