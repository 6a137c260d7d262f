//! The Postgres read model of CONTRACT.md.
//!
//! - [`model`]: model schemas (live and shadow), their migrations, and the `active_model`
//!   pointer readers follow.
//! - [`apply`]: writes one batch set-based (a handful of statements whatever its size), with
//!   the consumer offsets in the same transaction.
//! - [`history`]: every event of every product (`product_events`), written with its batch.
//! - [`sink`]: the projector's sink on the shared consumer runtime.
//! - [`bulk`] and [`copy`]: a rebuild's bulk load: the log folded in memory and written
//!   with binary `COPY`, keys and indexes built after the rows.
//! - [`rebuild`]: rebuilds the model into a shadow schema and swaps it in atomically.
//! - [`leftovers`]: the model schemas killed rebuilds left behind, dropped by the next one.
//! - [`compare`]: what the rebuild checks before the swap: the new model equals the live one,
//!   the bulk at a snapshot outside the swap lock, what changed since under it.
//!
//! The projector binary is `consumers/projector`; the query API over this model is
//! `consumers/query`.

pub mod apply;
pub mod bulk;
pub mod compare;
pub mod copy;
pub mod history;
pub mod leftovers;
pub mod model;
pub mod rebuild;
pub mod sink;

/// The projector's consumer group.
pub const DEFAULT_GROUP: &str = "foldline-postgres-projector";
