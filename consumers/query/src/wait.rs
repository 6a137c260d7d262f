//! `?after=P:O`: wait until the projection has applied that position, then read.

use std::time::Duration;

use axum::http::StatusCode;
use foldline_service::problem::Problem;

use super::{bad_param, db_unavailable, QueryState};

pub use foldline_service::position::Position;

/// Waits until the live model's stored offset of the partition is past `after` (woken by the
/// progress watcher, no query per waiter), then returns the live schema to read from. 504 when
/// `timeout_ms` passes first.
pub async fn until_applied(
    state: &QueryState,
    after: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<String, Problem> {
    let timeout = timeout_ms.map_or(state.default_timeout, Duration::from_millis);
    if timeout > state.max_timeout {
        return Err(bad_param(format!(
            "timeout_ms is at most {}",
            state.max_timeout.as_millis()
        )));
    }
    let Some(after) = after else {
        // The watcher knows the live schema (a swap notifies it), so a plain read costs no
        // extra round trip; only before its first read does it ask the database.
        let known = state.progress.borrow().schema.clone();
        if !known.is_empty() {
            return Ok(known);
        }
        return state.model.active().await.map_err(db_unavailable);
    };
    let position: Position = after
        .parse()
        .map_err(|e: String| bad_param(format!("after: {e}")))?;
    let mut progress = state.progress.clone();
    if progress
        .borrow()
        .applied(position.partition, position.offset)
    {
        state.after_wait.observe(0.0);
        return Ok(progress.borrow().schema.clone());
    }
    let waiting_since = std::time::Instant::now();
    let Ok(_waiting) = state.waiters.clone().try_acquire_owned() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-waiters",
            "Too many requests are waiting for the read model",
            "retry shortly, or read without ?after=",
        ));
    };
    let reached = tokio::time::timeout(timeout, async {
        loop {
            {
                let current = progress.borrow_and_update();
                if current.applied(position.partition, position.offset) {
                    return Some(current.schema.clone());
                }
            }
            if progress.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    state
        .after_wait
        .observe(waiting_since.elapsed().as_secs_f64());
    match reached {
        Ok(Some(schema)) => Ok(schema),
        Ok(None) => Err(db_unavailable(sqlx::Error::PoolClosed)),
        Err(_) => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "not-yet-applied",
            "The read model has not reached that position yet",
            format!(
                "position {}:{} not applied within {} ms",
                position.partition,
                position.offset,
                timeout.as_millis()
            ),
        )),
    }
}
