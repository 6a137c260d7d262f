//! The OpenAPI 3.1 document of the write API, served at `GET /openapi.json`, generated from
//! the handlers' annotations and the body types (utoipa), so it cannot drift from the code.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::bodies::{BatchBody, BatchCommand, CreateBody, StockBody, ThresholdBody, UpdateBody};
use crate::answer::Answer;

/// An error answer (RFC 9457, `application/problem+json`).
#[derive(ToSchema)]
#[allow(dead_code)] // the schema of what `Problem` serializes
pub struct ProblemDoc {
    /// `urn:foldline:problem:<slug>`.
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    /// In a batch: the index of the refused command.
    command_index: Option<u32>,
}

/// The error answers every write can give (each route adds its own 404/409/412).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents what `Problem` answers
pub enum WriteErrors {
    #[response(
        status = 400,
        description = "Malformed JSON or a bad header",
        content_type = "application/problem+json"
    )]
    BadRequest(ProblemDoc),
    #[response(
        status = 401,
        description = "No valid bearer token",
        content_type = "application/problem+json"
    )]
    Unauthorized(ProblemDoc),
    #[response(
        status = 403,
        description = "A seller acting on another seller's product",
        content_type = "application/problem+json"
    )]
    Forbidden(ProblemDoc),
    #[response(
        status = 413,
        description = "Body too large",
        content_type = "application/problem+json"
    )]
    TooLarge(ProblemDoc),
    #[response(
        status = 415,
        description = "Not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(ProblemDoc),
    #[response(
        status = 422,
        description = "Wrong types or a broken rule",
        content_type = "application/problem+json"
    )]
    Unprocessable(ProblemDoc),
    #[response(
        status = 429,
        description = "Rate limited (Retry-After)",
        content_type = "application/problem+json"
    )]
    RateLimited(ProblemDoc),
    #[response(
        status = 503,
        description = "Broker or registry unavailable; nothing appended",
        content_type = "application/problem+json"
    )]
    Unavailable(ProblemDoc),
}

/// The answer of `POST /commands`: every command's answer, and the last one's at the top.
#[derive(ToSchema)]
#[allow(dead_code)] // the schema of the JSON `batch` builds
pub struct BatchAnswerDoc {
    id: String,
    version: i64,
    position: String,
    results: Vec<Answer>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Foldline producer",
        description = "Commands in, Avro events appended to the products topic. Every write needs a bearer JWT (claims `sub`, `role` = admin|seller, `seller_id`)."
    ),
    paths(
        super::create,
        super::update,
        super::adjust_stock,
        super::set_threshold,
        super::remove,
        super::batch
    ),
    components(schemas(
        CreateBody,
        UpdateBody,
        StockBody,
        ThresholdBody,
        BatchBody,
        BatchCommand,
        Answer,
        BatchAnswerDoc,
        ProblemDoc
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json`.
pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
