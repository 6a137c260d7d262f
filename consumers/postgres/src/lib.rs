//! The Postgres read model of CONTRACT.md.
//!
//! - [`model`]: model schemas (live and shadow), their migrations, and the `active_model`
//!   pointer readers follow.
//! - [`apply`]: writes one batch set-based (UNNEST upserts), with the consumer offsets in the
//!   same transaction.
//! - [`sink`]: the projector's sink on the shared consumer runtime.
//! - [`query`]: the query API (`:8082`).
//! - [`replay`]: rebuilds the model into a shadow schema and swaps it in atomically.

pub mod apply;
pub mod model;
pub mod query;
pub mod replay;
pub mod sink;

/// The projector's consumer group.
pub const DEFAULT_GROUP: &str = "foldline-postgres-projector";
