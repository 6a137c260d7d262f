//! The producer's errors as `application/problem+json` (the type is shared by every service).

use axum::http::StatusCode;
pub use foldline_service::problem::Problem;

use crate::domain::DomainError;
use crate::handler::WriteError;
use crate::writer::AppendError;

impl From<DomainError> for Problem {
    fn from(error: DomainError) -> Self {
        let detail = error.to_string();
        match error {
            DomainError::Invalid { field, .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rule-broken",
                "A rule of the product was broken",
                detail,
            )
            .with("field", field),
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
            DomainError::Forbidden { .. } => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Not allowed for this token",
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

/// The problem type of a request whose partition another instance writes; the forwarding
/// layer (`crate::http::forward`) looks for it.
pub const PARTITION_ELSEWHERE: &str = "partition-elsewhere";

impl From<WriteError> for Problem {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Rejected { index, error } => {
                Problem::from(error).with("command_index", index)
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
            WriteError::Elsewhere { partition, owner } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                PARTITION_ELSEWHERE,
                "Another producer instance writes this product's partition",
                match &owner {
                    Some(owner) => format!("partition {partition} is written by {owner}; nothing was appended, retry (or send it there)"),
                    None => format!("partition {partition} is moving between producer instances; nothing was appended, retry shortly"),
                },
            )
            .with("partition", partition)
            .with("owner", owner),
            WriteError::SpansPartitions(partitions) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch-spans-partitions",
                "The batch touches products written by separate transactions",
                format!("the commands name products of partitions {partitions:?}; with FOLDLINE_PRODUCER_OWNERSHIP=partitions a batch is one transaction of one partition, so send these commands as separate requests (a batch's new products are always created in its partition)"),
            )
            .with("partitions", partitions),
            WriteError::NewerSchema { product, reason } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "newer-schema",
                "This producer is older than an event of the product",
                format!("nothing was appended; product {product:?}: {reason}. Retry once this producer is upgraded (or with an upgraded instance)"),
            ),
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
