//! The REST commands of the contract: `POST /products`, `PATCH /products/{id}`,
//! `POST /products/{id}/stock`, `DELETE /products/{id}` and the batch `POST /commands`.

pub mod bodies;
pub mod forward;
pub mod gate;
mod headers;
pub mod openapi;
pub mod problem;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{middleware, Extension, Json, Router};
use serde_json::json;

use crate::answer::Answer;
use crate::domain::{Actor, Command};
use crate::handler::{CommandHandler, PlannedCommand};
use crate::http::forward::Forwarder;
use crate::http::gate::{CommandCharge, Gate};
use bodies::{BatchBody, BatchCommand, CreateBody, StockBody, ThresholdBody, UpdateBody};
use openapi::{BatchAnswerDoc, ProblemDoc, WriteErrors};
use problem::Problem;

/// Most commands one `POST /commands` may carry.
pub const MAX_BATCH_COMMANDS: usize = 1000;

/// The write routes; every one passes the [`Gate`] (rate limit, bearer token) before its body
/// is read, then, with a `forwarder` (`partitions` mode), the forwarding layer.
pub fn routes(
    service: Arc<CommandHandler>,
    gate: Arc<Gate>,
    forwarder: Option<Arc<Forwarder>>,
) -> Router {
    let mut writes = Router::new()
        .route("/products", post(create))
        .route("/products/{id}", patch(update).delete(remove))
        .route("/products/{id}/stock", post(adjust_stock))
        .route("/products/{id}/low-stock-threshold", put(set_threshold))
        .route("/commands", post(batch));
    if let Some(forwarder) = forwarder {
        writes = writes.route_layer(middleware::from_fn_with_state(
            forwarder,
            crate::http::forward::forward,
        ));
    }
    writes
        .route_layer(middleware::from_fn_with_state(
            gate,
            crate::http::gate::gate,
        ))
        .with_state(service)
        .route("/openapi.json", get(openapi::document))
}

fn answer_response(status: StatusCode, answer: &Answer, location: bool) -> Response {
    let mut response = (status, Json(json!(answer))).into_response();
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", answer.version)) {
        headers.insert(header::ETAG, etag);
    }
    if location {
        if let Ok(value) = HeaderValue::from_str(&format!("/products/{}", answer.id)) {
            headers.insert(header::LOCATION, value);
        }
    }
    response
}

async fn run_single(
    service: &Arc<CommandHandler>,
    (actor, headers): (Actor, &HeaderMap),
    product_id: Option<String>,
    command: Command,
    op: &'static str,
) -> Result<Answer, Problem> {
    let meta = headers::request_meta(actor, headers)?;
    let planned = PlannedCommand {
        product_id,
        command,
        expected_version: headers::if_match(headers)?,
    };
    let result = service.execute(vec![planned], meta).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    service
        .metrics
        .commands
        .with_label_values(&[op, outcome])
        .inc();
    let mut answers = result?;
    Ok(answers.remove(0))
}

/// Create a product.
#[utoipa::path(post, path = "/products", request_body = CreateBody,
    params(        ("Idempotency-Key" = Option<String>, Header, description = "The same key again returns the first answer and appends nothing"),
        ("X-Correlation-ID" = Option<String>, Header, description = "Carried into the events' headers")),
    responses(
        (status = 201, description = "Created", body = Answer),
        WriteErrors
    ))]
async fn create(
    State(service): State<Arc<CommandHandler>>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body?;
    let command = Command::Create {
        name: body.name,
        price_cents: body.price_cents,
        stock: body.stock,
        seller_id: body.seller_id,
        low_stock_threshold: body.low_stock_threshold,
    };
    let answer = run_single(&service, (actor, &headers), None, command, "create").await?;
    Ok(answer_response(StatusCode::CREATED, &answer, true))
}

/// Change a product's name and/or price.
#[utoipa::path(patch, path = "/products/{id}", request_body = UpdateBody,
    params(("id" = String, Path, description = "Product id"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key again returns the first answer and appends nothing"),
        ("X-Correlation-ID" = Option<String>, Header, description = "Carried into the events' headers"),
        ("If-Match" = Option<String>, Header, description = "Quoted version; a mismatch is 412")),
    responses(
        (status = 200, description = "Changed", body = Answer),
        (status = 404, description = "Unknown or deleted product", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemDoc, content_type = "application/problem+json"),
        WriteErrors
    ))]
async fn update(
    State(service): State<Arc<CommandHandler>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body?;
    let command = Command::Update {
        name: body.name,
        price_cents: body.price_cents,
    };
    let answer = run_single(&service, (actor, &headers), Some(id), command, "update").await?;
    Ok(answer_response(StatusCode::OK, &answer, false))
}

/// Add to or take from a product's stock.
#[utoipa::path(post, path = "/products/{id}/stock", request_body = StockBody,
    params(("id" = String, Path, description = "Product id"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key again returns the first answer and appends nothing"),
        ("X-Correlation-ID" = Option<String>, Header, description = "Carried into the events' headers"),
        ("If-Match" = Option<String>, Header, description = "Quoted version; a mismatch is 412")),
    responses(
        (status = 200, description = "Adjusted", body = Answer),
        (status = 404, description = "Unknown or deleted product", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Stock would go below zero", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemDoc, content_type = "application/problem+json"),
        WriteErrors
    ))]
async fn adjust_stock(
    State(service): State<Arc<CommandHandler>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<StockBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body?;
    let command = Command::AdjustStock {
        delta: body.delta,
        reason: body.reason,
    };
    let answer = run_single(
        &service,
        (actor, &headers),
        Some(id),
        command,
        "adjust_stock",
    )
    .await?;
    Ok(answer_response(StatusCode::OK, &answer, false))
}

/// Set a product's own low-stock threshold (a `LowStockWarning` follows when its stock is
/// now below it and was not before).
#[utoipa::path(put, path = "/products/{id}/low-stock-threshold", request_body = ThresholdBody,
    params(("id" = String, Path, description = "Product id"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key again returns the first answer and appends nothing"),
        ("X-Correlation-ID" = Option<String>, Header, description = "Carried into the events' headers"),
        ("If-Match" = Option<String>, Header, description = "Quoted version; a mismatch is 412")),
    responses(
        (status = 200, description = "Set", body = Answer),
        (status = 404, description = "Unknown or deleted product", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemDoc, content_type = "application/problem+json"),
        WriteErrors
    ))]
async fn set_threshold(
    State(service): State<Arc<CommandHandler>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ThresholdBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body?;
    let command = Command::SetLowStockThreshold {
        threshold: body.threshold,
    };
    let answer = run_single(
        &service,
        (actor, &headers),
        Some(id),
        command,
        "set_low_stock_threshold",
    )
    .await?;
    Ok(answer_response(StatusCode::OK, &answer, false))
}

/// Delete a product.
#[utoipa::path(delete, path = "/products/{id}",
    params(("id" = String, Path, description = "Product id"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key again returns the first answer and appends nothing"),
        ("X-Correlation-ID" = Option<String>, Header, description = "Carried into the events' headers"),
        ("If-Match" = Option<String>, Header, description = "Quoted version; a mismatch is 412")),
    responses(
        (status = 200, description = "Deleted", body = Answer),
        (status = 404, description = "Unknown or deleted product", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemDoc, content_type = "application/problem+json"),
        WriteErrors
    ))]
async fn remove(
    State(service): State<Arc<CommandHandler>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let answer = run_single(
        &service,
        (actor, &headers),
        Some(id),
        Command::Delete,
        "delete",
    )
    .await?;
    Ok(answer_response(StatusCode::OK, &answer, false))
}

/// Several commands, applied in order, atomically (all or none), each answered.
#[utoipa::path(post, path = "/commands", request_body = BatchBody,
    params(        ("Idempotency-Key" = Option<String>, Header, description = "The same key again returns the first answer and appends nothing"),
        ("X-Correlation-ID" = Option<String>, Header, description = "Carried into the events' headers")),
    responses(
        (status = 200, description = "Every command applied", body = BatchAnswerDoc),
        (status = 404, description = "A command names an unknown product", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "A stock change would go below zero", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "An if_match does not match", body = ProblemDoc, content_type = "application/problem+json"),
        WriteErrors
    ))]
async fn batch(
    State(service): State<Arc<CommandHandler>>,
    Extension(actor): Extension<Actor>,
    charge: Option<Extension<CommandCharge>>,
    headers: HeaderMap,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body?;
    if body.commands.is_empty() || body.commands.len() > MAX_BATCH_COMMANDS {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule-broken",
            "A rule of the request was broken",
            format!(
                "a batch holds 1 to {MAX_BATCH_COMMANDS} commands, got {}",
                body.commands.len()
            ),
        ));
    }
    if let Some(Extension(charge)) = charge {
        // The gate charged one command for the request; the rest of the batch counts too.
        if let Err(refused) = charge.charge(body.commands.len() as u32 - 1) {
            return Ok(refused);
        }
    }
    let meta = headers::request_meta(actor, &headers)?;
    let planned: Vec<PlannedCommand> = body.commands.into_iter().map(BatchCommand::plan).collect();
    let result = service.execute(planned, meta).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    service
        .metrics
        .commands
        .with_label_values(&["batch", outcome])
        .inc();
    let answers = result?;
    let last = answers.last().cloned().expect("a batch has commands");
    let mut response = answer_response(StatusCode::OK, &last, false);
    let body = json!({
        "id": last.id,
        "version": last.version,
        "position": last.position,
        "results": answers,
    });
    *response.body_mut() = axum::body::Body::from(body.to_string());
    Ok(response)
}
