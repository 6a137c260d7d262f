//! The Confluent REST API over the [`Registry`]: bodies, status codes and error codes as
//! Confluent's clients expect them.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use foldline_schemas::compat::CompatibilityLevel;
use foldline_service::auth::Authenticator;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{Mutex, RwLock};

use crate::log::SchemaLog;
pub use errors::ApiError;
use errors::{backend_error, require_admin};

mod errors;
use crate::model::{parse, Registered, Registry, RegistryError};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub struct AppState {
    pub registry: RwLock<Registry>,
    pub log: SchemaLog,
    /// Serializes writes so ids and versions are assigned in log order.
    pub write_lock: Mutex<()>,
}

pub type Shared = Arc<AppState>;

pub fn routes(state: Shared, auth: Arc<Authenticator>) -> Router {
    let admin = axum::middleware::from_fn_with_state(auth, require_admin);
    Router::new()
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(never_delete))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).merge(post(register).route_layer(admin.clone())),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(never_delete),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_raw_schema))
        .route("/schemas/ids/{id}/versions", get(get_schema_versions))
        .route("/schemas/types", get(schema_types))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/config",
            get(get_global_config).merge(put(put_global_config).route_layer(admin.clone())),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config).merge(put(put_subject_config).route_layer(admin)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Confluent's soft and hard deletes of a subject or a version: refused, whoever asks. Events
/// are kept for ever and name their schema by id (records in the topic, files in the
/// archive), so a deleted schema would make them unreadable; a schema no longer wanted is
/// simply no longer used.
async fn never_delete() -> errors::ApiError {
    errors::ApiError {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        code: 42205,
        message: "Operation not permitted: schemas are never deleted, because events in the \
                  log and the archive refer to them by id for ever"
            .into(),
    }
}

/// A request body: a schema at its limit, escaped as JSON text, fits with room.
pub const MAX_BODY_BYTES: usize = 4 * MAX_SCHEMA_BYTES;

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

type ApiResult = Result<Response, ApiError>;

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// The largest schema accepted, in bytes of its text (the project's own is a few kB).
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// The most branches a union may have: a compatibility check compares unions branch by
/// branch, so this bounds its cost whatever the input.
pub const MAX_UNION_BRANCHES: usize = 256;

impl SchemaBody {
    fn avro(self) -> Result<String, RegistryError> {
        match self.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => return Err(RegistryError::UnsupportedSchemaType(other.to_owned())),
        }
        if self.schema.len() > MAX_SCHEMA_BYTES {
            return Err(RegistryError::InvalidSchema(format!(
                "the schema has {} bytes; at most {MAX_SCHEMA_BYTES} are accepted",
                self.schema.len()
            )));
        }
        if let Ok(json) = serde_json::from_str::<Value>(&self.schema) {
            if let Some(widest) = widest_array(&json).filter(|w| *w > MAX_UNION_BRANCHES) {
                return Err(RegistryError::InvalidSchema(format!(
                    "a union has {widest} branches; at most {MAX_UNION_BRANCHES} are accepted"
                )));
            }
        }
        Ok(self.schema)
    }
}

/// The length of the longest JSON array anywhere in `value` (unions are arrays).
fn widest_array(value: &Value) -> Option<usize> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(widest_array)
            .chain([items.len()])
            .max(),
        Value::Object(fields) => fields.values().filter_map(widest_array).max(),
        _ => None,
    }
}

fn registered(r: &Registered) -> Value {
    json!({"subject": r.subject, "version": r.version, "id": r.id, "schema": r.schema})
}

async fn list_subjects(State(state): State<Shared>) -> ApiResult {
    Ok(ok(json!(state.registry.read().await.subjects())))
}

async fn list_versions(State(state): State<Shared>, Path(subject): Path<String>) -> ApiResult {
    Ok(ok(json!(state.registry.read().await.versions(&subject)?)))
}

async fn get_version(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = state.registry.read().await.version(&subject, &version)?;
    Ok(ok(registered(&found)))
}

async fn get_version_schema(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = state.registry.read().await.version(&subject, &version)?;
    Ok(ok(
        serde_json::from_str(&found.schema).unwrap_or(Value::String(found.schema))
    ))
}

async fn get_schema(State(state): State<Shared>, Path(id): Path<u32>) -> ApiResult {
    let registry = state.registry.read().await;
    Ok(ok(json!({"schema": registry.schema_by_id(id)?})))
}

async fn get_raw_schema(State(state): State<Shared>, Path(id): Path<u32>) -> ApiResult {
    let registry = state.registry.read().await;
    let schema = registry.schema_by_id(id)?;
    Ok(ok(serde_json::from_str(schema).unwrap_or(Value::Null)))
}

async fn get_schema_versions(State(state): State<Shared>, Path(id): Path<u32>) -> ApiResult {
    let registry = state.registry.read().await;
    registry.schema_by_id(id)?;
    let usages: Vec<Value> = registry
        .usages(id)
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(json!(usages)))
}

async fn schema_types() -> ApiResult {
    Ok(ok(json!(["AVRO"])))
}

async fn register(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    body: Result<Json<SchemaBody>, JsonRejection>,
) -> ApiResult {
    let schema = body?.0.avro()?;
    let _write = state.write_lock.lock().await;
    let plan = state
        .registry
        .read()
        .await
        .plan_register(&subject, &schema)?;
    let record = match plan {
        Err(existing_id) => return Ok(ok(json!({"id": existing_id}))),
        Ok(record) => record,
    };
    state.log.append(&record).await.map_err(backend_error)?;
    let id = match &record {
        crate::model::LogRecord::Schema { id, .. } => *id,
        crate::model::LogRecord::Config { .. } => unreachable!("plan_register makes schemas"),
    };
    tracing::info!(subject, id, "schema registered");
    state.registry.write().await.apply(record);
    Ok(ok(json!({"id": id})))
}

async fn lookup(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    body: Result<Json<SchemaBody>, JsonRejection>,
) -> ApiResult {
    let schema = body?.0.avro()?;
    let found = state.registry.read().await.lookup(&subject, &schema)?;
    Ok(ok(registered(&found)))
}

/// Confluent's Python client sends `verbose=True`: booleans are read case-insensitively.
fn flag(value: &Option<String>) -> bool {
    value
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[derive(Deserialize)]
struct VerboseQuery {
    verbose: Option<String>,
}

fn compatibility_answer(errors: Vec<String>, verbose: bool) -> Response {
    if verbose {
        ok(json!({"is_compatible": errors.is_empty(), "messages": errors}))
    } else {
        ok(json!({"is_compatible": errors.is_empty()}))
    }
}

async fn check_version(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<VerboseQuery>,
    body: Result<Json<SchemaBody>, JsonRejection>,
) -> ApiResult {
    let (parsed, _) = parse(&body?.0.avro()?)?;
    let registry = state.registry.read().await;
    let upto = match registry.version(&subject, &version) {
        Ok(found) => Some(found.version),
        // Like Confluent: checking against a subject with no versions is trivially compatible.
        Err(RegistryError::SubjectNotFound(_)) => Some(0),
        Err(e) => return Err(e.into()),
    };
    let errors = registry.compatibility_errors(&subject, &parsed, upto);
    Ok(compatibility_answer(errors, flag(&query.verbose)))
}

async fn check_all(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Query(query): Query<VerboseQuery>,
    body: Result<Json<SchemaBody>, JsonRejection>,
) -> ApiResult {
    let (parsed, _) = parse(&body?.0.avro()?)?;
    let errors = state
        .registry
        .read()
        .await
        .compatibility_errors(&subject, &parsed, None);
    Ok(compatibility_answer(errors, flag(&query.verbose)))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

#[derive(Deserialize)]
struct ConfigQuery {
    #[serde(rename = "defaultToGlobal")]
    default_to_global: Option<String>,
}

fn parse_level(
    body: Result<Json<ConfigBody>, JsonRejection>,
) -> Result<CompatibilityLevel, ApiError> {
    let text = body?.0.compatibility;
    text.parse().map_err(|message: String| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: 42203,
        message: format!("Invalid compatibility level: {message}"),
    })
}

async fn get_global_config(State(state): State<Shared>) -> ApiResult {
    let level = state.registry.read().await.global_level();
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

async fn get_subject_config(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Query(query): Query<ConfigQuery>,
) -> ApiResult {
    let registry = state.registry.read().await;
    let level = match (
        registry.subject_level(&subject),
        flag(&query.default_to_global),
    ) {
        (Some(level), _) => level,
        (None, true) => registry.global_level(),
        (None, false) => return Err(RegistryError::SubjectConfigNotFound(subject).into()),
    };
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

async fn put_config(
    state: &AppState,
    subject: Option<String>,
    level: CompatibilityLevel,
) -> ApiResult {
    let record = crate::model::LogRecord::Config { subject, level };
    let _write = state.write_lock.lock().await;
    state.log.append(&record).await.map_err(backend_error)?;
    state.registry.write().await.apply(record);
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn put_global_config(
    State(state): State<Shared>,
    body: Result<Json<ConfigBody>, JsonRejection>,
) -> ApiResult {
    let level = parse_level(body)?;
    put_config(&state, None, level).await
}

async fn put_subject_config(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    body: Result<Json<ConfigBody>, JsonRejection>,
) -> ApiResult {
    let level = parse_level(body)?;
    put_config(&state, Some(subject), level).await
}
