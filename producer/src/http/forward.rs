//! Forwarding a write to the instance that owns its partition (`partitions` mode).
//!
//! Only the handler knows a request's partition (it needs the body and the state), so this
//! layer keeps the body (within the body limit), lets the handler run, and when the answer
//! is the `partition-elsewhere` problem with a known owner, sends the same request there
//! and answers what the owner answered. A forwarded request carries `Foldline-Forwarded-By`
//! and is never forwarded on by the instance it reached. When that instance gave the
//! partition up meanwhile (a hand-over; it answers `partition-elsewhere` naming the next
//! owner) or does not answer (it stopped after handing over), this instance waits until its
//! own directory names another owner for that partition, then routes the request again (up to
//! [`MAX_BOUNCES`] times) — so a hand-over costs the client a slower answer, not a 503. A
//! hand-over that outlasts these waits (a SIGKILLed owner: its partitions move only after the
//! group's session timeout) is a 503 (nothing was appended) and the client retries.
//! Forwarding adds one hop on loopback or the cluster network; clients that want
//! none can send to the owner named in the problem's `owner` member.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::problem::{Problem, PARTITION_ELSEWHERE};
use crate::metrics::Metrics;
use crate::ownership::directory::Directory;
use crate::ownership::HAND_OVER_WAIT;

/// Marks a forwarded request (its value: the forwarding instance's URL).
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("foldline-forwarded-by");

pub struct Forwarder {
    client: reqwest::Client,
    me: String,
    max_body_bytes: usize,
    metrics: Metrics,
    /// Who owns which partition: waited on when an owner named does not answer.
    directory: Option<Arc<Directory>>,
}

impl Forwarder {
    pub fn new(
        me: &str,
        max_body_bytes: usize,
        timeout: Duration,
        metrics: Metrics,
        directory: Option<Arc<Directory>>,
    ) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client without TLS settings builds"),
            me: me.to_owned(),
            max_body_bytes,
            metrics,
            directory,
        })
    }
}

/// Who a `partition-elsewhere` answer names as its partition's writer.
struct Elsewhere {
    partition: i32,
    owner: String,
}

/// The owner named by a `partition-elsewhere` answer, if that is what `response` is.
async fn owner_named(response: Response) -> (Option<Elsewhere>, Response) {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE {
        return (None, response);
    }
    let (parts, body) = response.into_parts();
    // A problem body is small; anything larger is not ours to read.
    let bytes = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let named = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(|p| {
            p["type"].as_str() == Some(&format!("urn:foldline:problem:{PARTITION_ELSEWHERE}"))
        })
        .and_then(|p| {
            Some(Elsewhere {
                partition: i32::try_from(p["partition"].as_i64()?).ok()?,
                owner: p["owner"].as_str()?.to_owned(),
            })
        });
    (named, Response::from_parts(parts, Body::from(bytes)))
}

pub async fn forward(
    State(forwarder): State<Arc<Forwarder>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, forwarder.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                format!(
                    "the body must be at most {} bytes",
                    forwarder.max_body_bytes
                ),
            )
            .into_response()
        }
    };
    let forwarded = parts.headers.contains_key(&FORWARDED_BY);
    let mut bounces = 0;
    loop {
        let response = next
            .clone()
            .run(Request::from_parts(
                parts.clone(),
                Body::from(bytes.clone()),
            ))
            .await;
        if forwarded {
            return response;
        }
        let (named, response) = owner_named(response).await;
        let Some(Elsewhere { partition, owner }) = named else {
            return response;
        };
        let (answer, reached) = forwarder.send(&parts, &owner, bytes.clone()).await;
        if bounces == MAX_BOUNCES {
            return answer;
        }
        bounces += 1;
        let answer = if reached {
            let (next_owner, answer) = owner_named(answer).await;
            if next_owner.is_none() {
                // The owner's own answer (written, or refused on its merits).
                return answer;
            }
            answer
        } else {
            answer
        };
        // The instance named gave the partition up on the way (a hand-over; it names the
        // next owner) or does not answer (it stopped after handing over, or died): wait until
        // the directory here names someone else for this partition, then route again.
        let Some(directory) = forwarder.directory.as_ref() else {
            return answer;
        };
        if !directory
            .moved_from(partition, &owner, HAND_OVER_WAIT)
            .await
        {
            return answer;
        }
    }
}

/// How often one request follows a hand-over (its owner gave the partition up while the
/// request was on its way, or stopped) before the client is answered 503. Each follow waits
/// for this partition's owner to change, so a stop and a join in a row (two moves) fit.
const MAX_BOUNCES: usize = 3;

impl Forwarder {
    /// Sends the request to `owner` once: its answer (and `true`), or a 503 when it did not
    /// answer (and `false`).
    async fn send(&self, parts: &Parts, owner: &str, bytes: Bytes) -> (Response, bool) {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut outgoing = self
            .client
            .request(parts.method.clone(), format!("{owner}{path}"))
            .header(FORWARDED_BY, &self.me)
            .body(bytes);
        for (name, value) in &parts.headers {
            if name != header::HOST && name != header::CONTENT_LENGTH && name != header::CONNECTION
            {
                outgoing = outgoing.header(name, value);
            }
        }
        match outgoing.send().await {
            Ok(answer) => {
                self.metrics
                    .forwarded
                    .with_label_values(&["answered"])
                    .inc();
                let mut reply = Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    if name != header::CONTENT_LENGTH
                        && name != header::CONNECTION
                        && name != header::TRANSFER_ENCODING
                    {
                        reply = reply.header(name, value);
                    }
                }
                let reply = match answer.bytes().await {
                    Ok(body) => reply
                        .body(Body::from(body))
                        .unwrap_or_else(|_| response_lost(owner)),
                    Err(_) => response_lost(owner),
                };
                (reply, true)
            }
            Err(error) => {
                self.metrics
                    .forwarded
                    .with_label_values(&["unreachable"])
                    .inc();
                tracing::warn!(%error, %owner, "the partition's owner did not answer");
                // Nothing is known to be appended unless the owner answered: the client
                // retries with its Idempotency-Key, which finds the first answer if there
                // was one.
                let problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PARTITION_ELSEWHERE,
                    "The producer instance writing this product's partition did not answer",
                    format!("forwarding to {owner} failed ({error}); retry shortly (with the same Idempotency-Key, if the request had one)"),
                );
                (problem.into_response(), false)
            }
        }
    }
}

/// The owner answered but its body was lost on the way: the outcome is unknown to us.
fn response_lost(owner: &str) -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "outcome-unknown",
        "The owner's answer was lost",
        format!("{owner} answered but the answer could not be read; retry with the same Idempotency-Key to be safe"),
    )
    .into_response()
}
