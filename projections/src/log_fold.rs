//! The whole log folded in memory, for a bulk load (`foldline-projector replay`): one row per
//! product, one count per event type and hour, every seller's stats — memory in proportion to
//! products and sellers, never to events.
//!
//! It gives what the batch-by-batch projector gives on a log the write API appends: each
//! product created once, first, then events of growing versions, none after its deletion.
//! On any other log (records written around the API) the projector's own result depends on
//! where its batches happen to end — a later batch's change to a deleted product revives it,
//! a second creation keeps an older threshold — so such a record is reported, not folded
//! ([`NotAsWritten`]), and the loader rebuilds batch by batch, as the live projector writes.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use foldline_schemas::{Envelope, Payload};

use crate::sellers::{seller_deltas, ProductRow, SellerDelta, StatsOverflow};
use crate::{EventCount, ProductChange};

/// An event the write API would not have appended where it is in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAsWritten {
    #[error("product {product:?}: version {version} follows version {after}")]
    VersionNotGrowing {
        product: String,
        version: i64,
        after: i64,
    },
    #[error("product {product:?}: version {version} is not its creation but its first event")]
    NotCreatedFirst { product: String, version: i64 },
    #[error("product {product:?}: version {version} follows its deletion")]
    AfterDeletion { product: String, version: i64 },
    #[error("product {product:?}: version {version} creates it again")]
    CreatedAgain { product: String, version: i64 },
}

#[derive(Debug, Default)]
pub struct LogFold {
    products: HashMap<String, ProductChange>,
    counts: HashMap<(&'static str, DateTime<Utc>), i64>,
    /// Every seller a product was created for: the live model keeps a stats row for each,
    /// at zero once its products are gone.
    sellers: BTreeSet<String>,
}

/// The end state of the fold, ready to load.
#[derive(Debug, PartialEq)]
pub struct FoldedLog {
    /// Sorted by id (the order of the primary key: the index builds from sorted input).
    pub products: Vec<ProductChange>,
    pub sellers: Vec<(String, SellerDelta)>,
    pub event_counts: Vec<EventCount>,
}

impl LogFold {
    /// Folds one event (events of a product in log order).
    pub fn apply(&mut self, event: &Envelope) -> Result<(), NotAsWritten> {
        let hour = event
            .occurred_at
            .duration_trunc(TimeDelta::hours(1))
            .expect("an hour divides any timestamp");
        // The id is copied only into an error or a new row: this runs once per event.
        let (product, version) = (|| event.product_id.clone(), event.version);
        let creation = matches!(event.payload, Payload::ProductCreated(_));
        match self.products.get_mut(event.product_id.as_str()) {
            Some(row) if version <= row.version => {
                return Err(NotAsWritten::VersionNotGrowing {
                    product: product(),
                    version,
                    after: row.version,
                })
            }
            Some(row) if row.deleted => {
                return Err(NotAsWritten::AfterDeletion {
                    product: product(),
                    version,
                })
            }
            Some(_) if creation => {
                return Err(NotAsWritten::CreatedAgain {
                    product: product(),
                    version,
                })
            }
            Some(row) => row.apply(event),
            None if !creation => {
                return Err(NotAsWritten::NotCreatedFirst {
                    product: product(),
                    version,
                })
            }
            None => {
                let mut row = ProductChange::new(event);
                row.apply(event);
                self.products.insert(product(), row);
            }
        }
        if let Payload::ProductCreated(created) = &event.payload {
            if !self.sellers.contains(&created.seller_id) {
                self.sellers.insert(created.seller_id.clone());
            }
        }
        *self
            .counts
            .entry((event.event_type().as_str(), hour))
            .or_default() += 1;
        Ok(())
    }

    pub fn products(&self) -> usize {
        self.products.len()
    }

    /// The rows, the sellers' stats (`threshold`: the default low-stock threshold) and the
    /// counts. Fails as the projector would park: a seller's sums past 64 bits.
    pub fn finish(self, threshold: i64) -> Result<FoldedLog, StatsOverflow> {
        let mut products: Vec<ProductChange> = self.products.into_values().collect();
        products.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let rows: Vec<ProductRow> = products.iter().map(ProductRow::from).collect();
        let mut stats: HashMap<String, SellerDelta> =
            seller_deltas(&[], &rows, threshold)?.into_iter().collect();
        let sellers = self
            .sellers
            .into_iter()
            .map(|seller| {
                let delta = stats.remove(&seller).unwrap_or_default();
                (seller, delta)
            })
            .collect();
        let mut event_counts: Vec<EventCount> = self
            .counts
            .into_iter()
            .map(|((event_type, hour), events)| EventCount {
                event_type,
                hour,
                events,
            })
            .collect();
        event_counts.sort_unstable_by_key(|c| (c.event_type, c.hour));
        Ok(FoldedLog {
            products,
            sellers,
            event_counts,
        })
    }
}

impl From<&ProductChange> for ProductRow {
    fn from(change: &ProductChange) -> ProductRow {
        ProductRow {
            id: change.id.clone(),
            seller_id: change.seller_id.clone(),
            stock: change.stock,
            price_cents: change.price_cents,
            deleted: change.deleted,
            low_stock_threshold: change.low_stock_threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::event;
    use crate::{count_events, fold_products};
    use foldline_schemas::{ProductCreated, ProductDeleted, StockAdjusted};

    fn created(seller: &str, stock: i64) -> Payload {
        Payload::ProductCreated(ProductCreated {
            name: "Lamp".into(),
            price_cents: 100,
            stock,
            seller_id: seller.into(),
            low_stock_threshold: None,
        })
    }

    fn adjusted(new_stock: i64) -> Payload {
        Payload::StockAdjusted(StockAdjusted {
            delta: 0,
            new_stock,
            reason: None,
            previous_stock: 0,
        })
    }

    fn fold(events: &[Envelope]) -> Result<FoldedLog, NotAsWritten> {
        let mut fold = LogFold::default();
        for e in events {
            fold.apply(e)?;
        }
        Ok(fold.finish(5).expect("no overflow"))
    }

    #[test]
    fn given_a_log_then_the_same_rows_and_counts_as_one_batch_of_the_projector() {
        let events = vec![
            event("p2", 1, created("s1", 10)),
            event("p1", 1, created("s1", 2)),
            event("p2", 2, adjusted(3)),
            event("p1", 2, adjusted(8)),
        ];
        let folded = fold(&events).unwrap();
        assert_eq!(folded.products, fold_products(&events));
        assert_eq!(folded.event_counts, count_events(&events));
        let stats = &folded.sellers;
        assert_eq!(stats.len(), 1);
        assert_eq!(
            stats[0].1,
            SellerDelta {
                products: 2,
                total_stock: 11,
                stock_value_cents: 1100,
                low_stock_products: 1,
            }
        );
    }

    #[test]
    fn given_a_seller_whose_products_are_all_deleted_then_its_stats_row_is_kept_at_zero() {
        let events = vec![
            event("p1", 1, created("s1", 2)),
            event("p1", 2, Payload::ProductDeleted(ProductDeleted {})),
        ];
        let folded = fold(&events).unwrap();
        assert_eq!(folded.sellers, vec![("s1".into(), SellerDelta::default())]);
        assert!(folded.products[0].deleted);
    }

    #[test]
    fn given_a_version_that_does_not_grow_then_it_is_reported_not_folded() {
        let events = vec![
            event("p1", 1, created("s1", 2)),
            event("p1", 2, adjusted(1)),
            event("p1", 2, adjusted(9)),
        ];
        assert_eq!(
            fold(&events).unwrap_err(),
            NotAsWritten::VersionNotGrowing {
                product: "p1".into(),
                version: 2,
                after: 2
            }
        );
    }

    #[test]
    fn given_events_the_api_would_refuse_then_each_is_reported_not_folded() {
        let deleted = Payload::ProductDeleted(ProductDeleted {});
        let cases = [
            (
                vec![event("p1", 1, adjusted(1))],
                NotAsWritten::NotCreatedFirst {
                    product: "p1".into(),
                    version: 1,
                },
            ),
            (
                vec![
                    event("p1", 1, created("s1", 2)),
                    event("p1", 2, deleted),
                    event("p1", 3, adjusted(4)),
                ],
                NotAsWritten::AfterDeletion {
                    product: "p1".into(),
                    version: 3,
                },
            ),
            (
                vec![
                    event("p1", 1, created("s1", 2)),
                    event("p1", 2, created("s2", 3)),
                ],
                NotAsWritten::CreatedAgain {
                    product: "p1".into(),
                    version: 2,
                },
            ),
        ];
        for (events, want) in cases {
            assert_eq!(fold(&events).unwrap_err(), want);
        }
    }

    #[test]
    fn given_a_sellers_sums_past_64_bits_then_the_fold_refuses() {
        let mut fold = LogFold::default();
        for (id, stock) in [("p1", i64::MAX), ("p2", 1)] {
            fold.apply(&event(id, 1, created("s1", stock))).unwrap();
        }
        assert!(fold.finish(5).is_err());
    }
}
