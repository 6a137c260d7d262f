//! Request headers the commands use: `If-Match`, `Idempotency-Key`, `X-Correlation-ID` and
//! W3C `traceparent` (kept when valid, started otherwise) which travel into the Kafka headers.

use axum::http::{HeaderMap, StatusCode};
use foldline_schemas::limits;
use rand::Rng;
use uuid::Uuid;

use super::problem::Problem;
use crate::domain::Actor;
use crate::handler::RequestMeta;

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-header",
        "Invalid header",
        detail,
    )
}

/// `If-Match: "<version>"` (also `W/"<version>"` or a bare number). A value that names no
/// version can never match, so it fails the precondition like a wrong version.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = headers.get("if-match") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    match text.parse::<i64>() {
        Ok(version) => Ok(Some(version)),
        Err(_) => Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "version-mismatch",
            "If-Match does not match the current version",
            format!("If-Match must be a quoted version such as \"3\", got {text:?}"),
        )),
    }
}

fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
}

fn new_traceparent() -> String {
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>() | 1,
        rng.random::<u64>() | 1
    )
}

pub fn request_meta(actor: Actor, headers: &HeaderMap) -> Result<RequestMeta, Problem> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| bad("Idempotency-Key must be visible ASCII"))?
                .trim();
            limits::check_idempotency_key(key).map_err(|v| bad(v.to_string()))?;
            Some(key.to_owned())
        }
    };
    let correlation_id = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| limits::check_correlation_id(v).is_ok())
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| valid_traceparent(v))
        .map(str::to_owned)
        .unwrap_or_else(new_traceparent);
    Ok(RequestMeta {
        actor,
        idempotency_key,
        correlation_id,
        traceparent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn test_actor() -> Actor {
        Actor {
            subject: "tests".into(),
            role: crate::domain::Role::Admin,
        }
    }

    #[test]
    fn if_match_accepts_quoted_weak_and_bare_versions() {
        for (text, expected) in [("\"3\"", 3), ("W/\"4\"", 4), ("5", 5)] {
            let mut headers = HeaderMap::new();
            headers.insert("if-match", HeaderValue::from_static(text));
            assert_eq!(if_match(&headers).unwrap(), Some(expected));
        }
        let mut headers = HeaderMap::new();
        headers.insert("if-match", HeaderValue::from_static("\"abc\""));
        assert_eq!(
            if_match(&headers).unwrap_err().status,
            StatusCode::PRECONDITION_FAILED
        );
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_started_when_not() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(valid));
        assert_eq!(
            request_meta(test_actor(), &headers).unwrap().traceparent,
            valid
        );
        headers.insert("traceparent", HeaderValue::from_static("garbage"));
        let started = request_meta(test_actor(), &headers).unwrap().traceparent;
        assert!(valid_traceparent(&started), "{started}");
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert_eq!(
            request_meta(test_actor(), &headers).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
