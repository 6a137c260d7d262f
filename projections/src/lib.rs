//! Pure folds of product events into read-model changes.
//!
//! A consumer batch is folded here into *set-based* changes (one row per product touched, one
//! count per event type and hour), which a sink then writes in a handful of statements. No
//! I/O happens here, so every rule of the read model is tested without a database.

pub mod analytics;
pub mod log_fold;
pub mod products;
pub mod sellers;

pub use analytics::{count_events, EventCount};
pub use log_fold::{FoldedLog, LogFold, NotAsWritten};
pub use products::{fold_products, ProductChange};
pub use sellers::{seller_deltas, ProductRow, SellerDelta, StatsOverflow};

use foldline_schemas::Envelope;

/// Everything one batch changes in the Postgres read model.
#[derive(Debug, Default, PartialEq)]
pub struct ReadModelChanges {
    pub products: Vec<ProductChange>,
    pub event_counts: Vec<EventCount>,
}

/// Folds a batch (in log order per partition) into the changes to write.
pub fn fold_batch<'a>(events: impl IntoIterator<Item = &'a Envelope> + Clone) -> ReadModelChanges {
    ReadModelChanges {
        products: fold_products(events.clone()),
        event_counts: count_events(events),
    }
}

#[cfg(test)]
mod tests {
    use foldline_schemas::{Envelope, Payload};

    pub fn event(product: &str, version: i64, payload: Payload) -> Envelope {
        Envelope {
            actor: None,
            event_id: Default::default(),
            product_id: product.into(),
            version,
            occurred_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            correlation_id: "c".into(),
            idempotency_key: None,
            command_index: None,
            payload,
        }
    }

    /// Given these events (one batch, log order), when folded …
    pub struct Given(Vec<Envelope>);

    impl Given {
        pub fn events(events: impl IntoIterator<Item = Envelope>) -> Given {
            Given(events.into_iter().collect())
        }
        pub fn fold_products(&self) -> Vec<super::ProductChange> {
            super::fold_products(&self.0)
        }
        pub fn count_events(&self) -> Vec<super::EventCount> {
            super::count_events(&self.0)
        }
    }
}
