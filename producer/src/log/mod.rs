//! What the request path and ownership need from the log, as a trait: append a request's
//! events and tell the outcome, and read the tail of the lane's partitions into the state.
//! [`kafka::KafkaLaneLog`] is the adapter over the transactional producer; tests run the
//! same code over a scripted log (`scripted`, tests only).
//!
//! "Reading the tail" is the one name for reading the log again: after fencing (taking a
//! lane over) and after a commit whose outcome is unknown.

pub mod kafka;
#[cfg(test)]
pub mod scripted;
pub mod tail;

use std::sync::Arc;
use std::time::Duration;

use foldline_schemas::wire::CodecError;
use foldline_schemas::Envelope;
use foldline_service::kafka::SetupError;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
pub use crate::writer::{AppendError, Position};

/// Why an append did not happen (or may not have).
#[derive(Debug, thiserror::Error)]
pub enum AppendFailed {
    #[error(transparent)]
    Append(#[from] AppendError),
    /// An event could not be encoded (the registry refused or is unreachable): nothing was
    /// appended.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What every record of a request carries besides its event.
#[derive(Debug, Clone)]
pub struct Trace {
    pub correlation_id: String,
    pub traceparent: String,
}

/// The log of one lane (a set of partitions written through one transactional id).
pub trait LaneLog: Send + Sync + 'static {
    /// Ok while the lane takes writes; why not otherwise (fenced, reconnecting, reading
    /// the tail after an unknown outcome).
    fn status(&self) -> Result<(), AppendError>;

    /// Appends `events` atomically, each to its product's partition; their positions once
    /// committed. [`AppendError::OutcomeUnknown`] means they may be in the log: the lane
    /// then refuses writes until its tail was read ([`keep_reading_the_tail`]).
    fn append<'a>(
        &'a self,
        events: &'a [Envelope],
        trace: &'a Trace,
    ) -> BoxFuture<'a, Result<Vec<Position>, AppendFailed>>;

    /// Resolves when the state must read the tail before writes go on.
    fn tail_wanted(&self) -> BoxFuture<'_, ()>;

    /// Folds the committed events of the lane's partitions after the store's offsets into
    /// `store`; how many were read. Only correct after fencing (see [`tail`]).
    fn read_tail<'a>(&'a self, store: &'a Store) -> BoxFuture<'a, Result<u64, SetupError>>;

    /// Lets writes go on after the tail was read.
    fn resume(&self);
}

/// Reads the lane's tail whenever its log asks (after a commit with an unknown outcome),
/// then lets writes go on; until `closed`. Driven by the log, not by the request that saw
/// the failure: that request may have timed out meanwhile.
pub async fn keep_reading_the_tail(
    log: Arc<dyn LaneLog>,
    store: Arc<Store>,
    closed: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = log.tail_wanted() => {}
        }
        tracing::info!("reading the tail of the log after a commit with an unknown outcome");
        loop {
            match log.read_tail(&store).await {
                Ok(events) => {
                    tracing::info!(events, "tail read after a commit with an unknown outcome");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the tail failed, retrying");
                    tokio::select! {
                        _ = closed.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        log.resume();
    }
}
