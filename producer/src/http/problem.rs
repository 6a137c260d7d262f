//! `application/problem+json` errors (RFC 9457). The client gets a stable `type`, a title
//! and a detail it can act on; internal causes are logged, never echoed.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::DomainError;
use crate::service::WriteError;
use crate::writer::AppendError;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// For batch requests: the index of the command that was refused.
    pub index: Option<usize>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            index: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("urn:foldline:problem:{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(index) = self.index {
            body["command_index"] = json!(index);
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::JsonSyntaxError(e) => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                e.body_text(),
            ),
            JsonRejection::JsonDataError(e) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "The body does not have the expected fields and types",
                e.body_text(),
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                other.body_text(),
            ),
            other => Problem::new(
                other.status(),
                "bad-request",
                "Bad request",
                other.body_text(),
            ),
        }
    }
}

impl From<DomainError> for Problem {
    fn from(error: DomainError) -> Self {
        let detail = error.to_string();
        match error {
            DomainError::Invalid { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rule-broken",
                "A rule of the product was broken",
                detail,
            ),
            DomainError::NotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Product not found",
                detail,
            ),
            DomainError::InsufficientStock { .. } => Problem::new(
                StatusCode::CONFLICT,
                "insufficient-stock",
                "Not enough stock",
                detail,
            ),
            DomainError::VersionMismatch { .. } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version-mismatch",
                "If-Match does not match the current version",
                detail,
            ),
        }
    }
}

impl From<WriteError> for Problem {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Rejected { index, error } => {
                let mut problem = Problem::from(error);
                problem.index = Some(index);
                problem
            }
            WriteError::Append(AppendError::OutcomeUnknown(cause)) => {
                tracing::error!(%cause, "commit outcome unknown");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome-unknown",
                    "The broker failed during the commit",
                    "the write may or may not have been appended; retry with the same Idempotency-Key to be safe",
                )
            }
            WriteError::Append(error) => {
                tracing::warn!(%error, "append failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker-unavailable",
                    "The event log is unavailable",
                    "nothing was appended; retry later",
                )
            }
            WriteError::Codec(error) => {
                tracing::warn!(%error, "encoding failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registry-unavailable",
                    "The schema registry is unavailable",
                    "nothing was appended; retry later",
                )
            }
        }
    }
}
