//! # Layout
//! Shared plumbing for every Foldline binary, so each service only writes its own logic:
//! - [`config`]: settings shared by several binaries (brokers, registry, topic).
//! - [`telemetry`]: tracing subscriber set-up (text or JSON, `RUST_LOG` filter).
//! - [`ops`]: the `/health`, `/ready` and `/metrics` routes with the contract's health shape,
//!   and a per-route HTTP metrics layer labelled by the matched route.
//! - [`problem`]: `application/problem+json` error responses.
//! - [`shutdown`]: a future that resolves on SIGINT or SIGTERM.
//! - [`kafka`]: client settings that work on both tansu (local) and Redpanda.
//! - [`serve`]: bind and serve a router with graceful shutdown.
//! - `auth` (feature `auth`): bearer tokens (HS256 secret or JWKS), for writes and gated reads.
//! - `aws` (feature `aws`): AWS SDK settings for S3- and DynamoDB-compatible servers.

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "aws")]
pub mod aws;
pub mod config;
pub mod kafka;
pub mod ops;
pub mod position;
pub mod problem;
pub mod retry;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
