//! The consumer runtime shared by every Foldline consumer.
//!
//! A consumer is a [`Sink`] plus a [`RuntimeConfig`]. The runtime polls the topic in a consumer
//! group, decodes each record through the schema registry (schemas cached by id), collects a
//! [`Batch`] bounded by count, bytes and time, sends undecodable records to the dead-letter
//! topic, and hands the batch to the sink. Offsets advance only after the sink has made the
//! batch durable:
//! - sinks that store offsets with their data (Postgres) check them in the same transaction and
//!   answer [`Written::Reseek`] when the consumer is behind or ahead of them, so the effect is
//!   exactly-once whatever the group's committed offsets say;
//! - the group's offsets in Kafka are committed after every durable batch, as the place a
//!   restarted or newly assigned consumer starts reading from.
//!
//! A sink may also hold records back to write bigger objects (the S3 archive): it answers
//! [`Written::Partly`] with what is durable, and the runtime calls [`Sink::flush`] when the
//! topic is idle and before shutdown, committing only what the sink reports durable.
//!
//! A transient sink error pauses the assigned partitions and retries with exponential backoff
//! and jitter; nothing is skipped. A data error (a record the sink can never apply) parks that
//! record's product and the product's later records ([`parking`]); everything else flows.
//! Graceful shutdown finishes the batch in flight.

mod batch;
mod context;
mod dead_letter;
pub mod error;
pub mod history;
mod metrics;
pub mod parking;
mod pipeline;
mod runner;
mod sink;
mod source;

pub use batch::{Batch, Record};
pub use error::{BoxError, ConsumerError, RunError};
pub use metrics::RuntimeMetrics;
pub use parking::Parked;
pub use runner::{run, run_until_signal, Consumer, RuntimeConfig};
pub use sink::{Flush, Sink, SinkError, Written};
