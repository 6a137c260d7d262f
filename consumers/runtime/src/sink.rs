use std::collections::BTreeMap;
use std::future::Future;

use crate::Batch;

/// Where a consumer puts its batches.
pub trait Sink: Send + 'static {
    /// Makes `batch` durable. Called again with the same batch after a transient error, so it
    /// must be idempotent (or check stored offsets, which makes it so).
    fn write(&mut self, batch: &Batch) -> impl Future<Output = Result<Written, SinkError>> + Send;

    /// Whether the sink's own dependency answers now (for `/ready`).
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The batch (or the part of it the sink did not hold yet) is durable.
    Done,
    /// The sink's stored offsets say the consumer must read these partitions from these
    /// offsets instead; nothing of the batch was written.
    Reseek(BTreeMap<i32, i64>),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The dependency is down or overloaded: retried with backoff, nothing skipped.
    #[error("sink unavailable: {0}")]
    Transient(anyhow::Error),
    /// Retrying cannot help (a bug or a broken invariant): the consumer stops.
    #[error("sink failed: {0}")]
    Fatal(anyhow::Error),
}
