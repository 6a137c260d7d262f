//! What a successful command answers (the HTTP body of a write, and what an
//! Idempotency-Key remembers).

use serde::{Deserialize, Serialize};

/// The product, its version and the position of the last event the command appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Answer {
    pub id: String,
    pub version: i64,
    pub position: String,
}
