use std::future::Future;

use foldline_service::position::Offsets;
use foldline_service::retry::Transient;

use crate::error::{chain, BoxError};
use crate::parking::Parked;
use crate::{Batch, Record};

/// Where a consumer puts its batches.
pub trait Sink: Send + 'static {
    /// Makes `batch` durable. Called again with the same batch after a transient error, so it
    /// must be idempotent (or check stored offsets, which makes it so).
    fn write(&mut self, batch: &Batch) -> impl Future<Output = Result<Written, SinkError>> + Send;

    /// Called when no record arrived for the idle interval (`why` = [`Flush::Idle`]) and once
    /// before shutdown ([`Flush::Shutdown`]). A sink that holds records back to write bigger
    /// objects (answering [`Written::Partly`]) makes what is due durable here and returns the
    /// next offsets that are now durable, per partition; they are committed to the group.
    fn flush(&mut self, why: Flush) -> impl Future<Output = Result<Offsets, SinkError>> + Send {
        let _ = why;
        async { Ok(Offsets::new()) }
    }

    /// Adds the sink's own metrics to the consumer's `/metrics`.
    fn register_metrics(&self, registry: &prometheus::Registry) {
        let _ = registry;
    }

    /// Whether this sink parks: it keeps [`Batch::parked`] durably with the batch's data and
    /// implements [`Sink::parked`] and [`Sink::unpark`]. A sink that does not park must never
    /// answer [`SinkError::Data`] (the runtime stops on it: nothing would keep the record).
    fn parks(&self) -> bool {
        false
    }

    /// Every record this sink keeps parked, in log order per product.
    fn parked(&mut self) -> impl Future<Output = Result<Vec<Parked>, SinkError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Forgets the parked records of `product`: first applying `records` (they are those
    /// records, read again from the log, in order) when given — a retry — or applying nothing
    /// — a drop. In one step where the sink can, so a retry applies each record exactly once;
    /// a [`SinkError::Data`] leaves the product parked.
    fn unpark(
        &mut self,
        product: &str,
        records: Option<&[Record]>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = (product, records);
        async { Err(SinkError::Fatal("this sink does not park".into())) }
    }

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
    Reseek(Offsets),
    /// The sink holds (part of) the batch back: only offsets below these next offsets, per
    /// partition, are durable and may be committed. The rest is made durable by a later
    /// `write` or `flush`; if the process dies first it is read again from the group's offsets.
    Partly(Offsets),
}

/// Why [`Sink::flush`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing arrived for a while: write out what is due by age.
    Idle,
    /// The consumer is stopping: write out everything held.
    Shutdown,
}

impl SinkError {
    /// The one place an error becomes a retry or a stop, for errors that know which they are.
    pub fn classify<E>(error: E) -> SinkError
    where
        E: Transient + Into<BoxError>,
    {
        let transient = error.is_transient();
        SinkError::new(error, transient)
    }

    /// `transient`: whether trying the same batch again can succeed.
    pub fn new(error: impl Into<BoxError>, transient: bool) -> SinkError {
        if transient {
            SinkError::Transient(error.into())
        } else {
            SinkError::Fatal(error.into())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The dependency is down or overloaded: retried with backoff, nothing skipped.
    #[error("sink unavailable: {}", chain(.0.as_ref()))]
    Transient(BoxError),
    /// The batch holds a record the sink can never apply (a value its store refuses, a sum
    /// past its column): the runtime finds the record and parks its product.
    #[error("sink refused the data: {}", chain(.0.as_ref()))]
    Data(BoxError),
    /// Retrying cannot help (a bug or a broken invariant): the consumer stops.
    #[error("sink failed: {}", chain(.0.as_ref()))]
    Fatal(BoxError),
}
