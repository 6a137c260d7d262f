//! Errors as Confluent's clients expect them, and the admin check every write passes.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use foldline_service::auth::{Authenticator, Role};
use serde_json::json;

use super::{CONTENT_TYPE, MAX_BODY_BYTES};
use crate::model::RegistryError;

/// A Confluent error: `{"error_code": n, "message": "..."}` with the matching HTTP status.
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: u32,
    pub(super) message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let (status, code) = match &error {
            RegistryError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            RegistryError::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            RegistryError::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            RegistryError::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            RegistryError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            RegistryError::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            RegistryError::UnsupportedSchemaType(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
        };
        ApiError {
            status,
            code,
            message: error.to_string(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: 413,
                message: format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            };
        }
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: 422,
            message: format!("Unrecognized request body: {}", rejection.body_text()),
        }
    }
}

/// Writes (register, config) need an admin token; reads stay open for Confluent's clients.
pub(super) async fn require_admin(
    State(auth): State<Arc<Authenticator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match auth.authenticate(request.headers()).await {
        Ok(actor) if actor.role == Role::Admin => next.run(request).await,
        Ok(actor) => ApiError {
            status: StatusCode::FORBIDDEN,
            code: 40301,
            message: format!(
                "{} may not change the registry: an admin token is needed",
                actor.subject
            ),
        }
        .into_response(),
        Err(error) => {
            let mut response = ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: 40101,
                message: format!("changing the registry needs an admin bearer token: {error}"),
            }
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"foldline\""),
            );
            response
        }
    }
}

pub(super) fn backend_error(error: String) -> ApiError {
    tracing::error!(%error, "failed to append to the schemas topic");
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: 50001,
        message: "Error in the backend data store: the broker did not acknowledge the write; retry"
            .into(),
    }
}
