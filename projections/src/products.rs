//! The `products` table: one merged change per product and batch.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use foldline_schemas::{Envelope, Payload};

/// What a batch changes on one product row. `None` fields keep the row's current value, so
/// a change can be applied to a row the batch never saw created (`COALESCE` in SQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductChange {
    pub id: String,
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
    pub seller_id: Option<String>,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
    /// The product's own low-stock threshold, once one was given.
    pub low_stock_threshold: Option<i64>,
}

impl ProductChange {
    pub(crate) fn new(event: &Envelope) -> ProductChange {
        ProductChange {
            id: event.product_id.clone(),
            name: None,
            price_cents: None,
            stock: None,
            seller_id: None,
            version: event.version,
            updated_at: event.occurred_at,
            deleted: false,
            low_stock_threshold: None,
        }
    }

    /// Applies one event; events not newer than the change so far are ignored, so a
    /// redelivered stretch of the log changes nothing.
    pub fn apply(&mut self, event: &Envelope) {
        if event.version < self.version {
            return;
        }
        self.version = event.version;
        self.updated_at = event.occurred_at;
        match &event.payload {
            Payload::ProductCreated(created) => {
                self.name = Some(created.name.clone());
                self.price_cents = Some(created.price_cents);
                self.stock = Some(created.stock);
                self.seller_id = Some(created.seller_id.clone());
                self.deleted = false;
                self.low_stock_threshold = created.low_stock_threshold;
            }
            Payload::ProductUpdated(updated) => {
                if let Some(name) = &updated.name {
                    self.name = Some(name.clone());
                }
                if let Some(price) = updated.price_cents {
                    self.price_cents = Some(price);
                }
            }
            Payload::StockAdjusted(adjusted) => self.stock = Some(adjusted.new_stock),
            // The warning is derived from stock, which the row already has.
            Payload::LowStockWarning(_) => {}
            Payload::ProductDeleted(_) => self.deleted = true,
            Payload::LowStockThresholdSet(set) => self.low_stock_threshold = Some(set.threshold),
        }
    }
}

/// One change per product touched by `events`, ordered by product id (a stable lock order
/// for the upsert).
pub fn fold_products<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Vec<ProductChange> {
    let mut changes: BTreeMap<&str, ProductChange> = BTreeMap::new();
    for event in events {
        changes
            .entry(event.product_id.as_str())
            .or_insert_with(|| ProductChange::new(event))
            .apply(event);
    }
    changes.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{event, Given};
    use foldline_schemas::{ProductCreated, ProductDeleted, ProductUpdated, StockAdjusted};

    #[test]
    fn given_a_creation_and_changes_in_one_batch_then_one_full_row() {
        let changes = Given::events([
            event(
                "p1",
                1,
                Payload::ProductCreated(ProductCreated {
                    name: "Lamp".into(),
                    price_cents: 100,
                    stock: 10,
                    seller_id: "s1".into(),
                    low_stock_threshold: None,
                }),
            ),
            event(
                "p1",
                2,
                Payload::ProductUpdated(ProductUpdated {
                    name: None,
                    price_cents: Some(250),
                }),
            ),
            event(
                "p1",
                3,
                Payload::StockAdjusted(StockAdjusted {
                    delta: -7,
                    new_stock: 3,
                    reason: None,
                    previous_stock: 10,
                }),
            ),
        ])
        .fold_products();
        assert_eq!(changes.len(), 1);
        let p = &changes[0];
        assert_eq!(p.name.as_deref(), Some("Lamp"));
        assert_eq!(p.price_cents, Some(250));
        assert_eq!(p.stock, Some(3));
        assert_eq!(p.seller_id.as_deref(), Some("s1"));
        assert_eq!((p.version, p.deleted), (3, false));
    }

    #[test]
    fn given_only_an_update_then_untouched_fields_stay_unknown() {
        let changes = Given::events([event(
            "p1",
            4,
            Payload::ProductUpdated(ProductUpdated {
                name: Some("New".into()),
                price_cents: None,
            }),
        )])
        .fold_products();
        assert_eq!(changes[0].name.as_deref(), Some("New"));
        assert_eq!(
            changes[0].price_cents, None,
            "COALESCE keeps the row's price"
        );
        assert_eq!(changes[0].stock, None);
    }

    #[test]
    fn given_a_deletion_then_the_row_is_marked_deleted() {
        let changes = Given::events([
            event(
                "p1",
                5,
                Payload::StockAdjusted(StockAdjusted {
                    delta: 1,
                    new_stock: 2,
                    reason: None,
                    previous_stock: 1,
                }),
            ),
            event("p1", 6, Payload::ProductDeleted(ProductDeleted {})),
        ])
        .fold_products();
        assert!(changes[0].deleted);
        assert_eq!(changes[0].version, 6);
    }

    #[test]
    fn given_a_redelivered_older_event_then_it_changes_nothing() {
        let changes = Given::events([
            event(
                "p1",
                3,
                Payload::StockAdjusted(StockAdjusted {
                    delta: -1,
                    new_stock: 4,
                    reason: None,
                    previous_stock: 5,
                }),
            ),
            event(
                "p1",
                2,
                Payload::StockAdjusted(StockAdjusted {
                    delta: -1,
                    new_stock: 5,
                    reason: None,
                    previous_stock: 6,
                }),
            ),
        ])
        .fold_products();
        assert_eq!(changes[0].stock, Some(4));
        assert_eq!(changes[0].version, 3);
    }

    #[test]
    fn given_several_products_then_one_change_each_ordered_by_id() {
        let adjust = |id: &str| {
            event(
                id,
                2,
                Payload::StockAdjusted(StockAdjusted {
                    delta: 1,
                    new_stock: 1,
                    reason: None,
                    previous_stock: 0,
                }),
            )
        };
        let changes = Given::events([adjust("b"), adjust("a"), adjust("b")]).fold_products();
        let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
