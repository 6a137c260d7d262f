//! What the read model must hold, folded from the log by the write side's own fold.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use foldline_consumer_runtime::Record;
use foldline_producer::domain::{evolve, Product};

/// The fold of the events before the cut.
#[derive(Default)]
pub struct Expected {
    /// Events folded.
    pub events: u64,
    /// Every product that had an event, as the log leaves it (deleted ones too).
    pub products: BTreeMap<String, Product>,
    /// Events per (type, UTC hour).
    pub counts: BTreeMap<(String, DateTime<Utc>), i64>,
    /// Per product: how many events, and the last version.
    pub histories: BTreeMap<String, (i64, i64)>,
}

impl Expected {
    pub fn apply(&mut self, record: &Record) {
        let event = &record.event;
        self.events += 1;
        let current = self.products.remove(&event.product_id);
        if let Some(next) = evolve(current, event) {
            self.products.insert(event.product_id.clone(), next);
        }
        let hour = event
            .occurred_at
            .duration_trunc(TimeDelta::hours(1))
            .unwrap_or(event.occurred_at);
        *self
            .counts
            .entry((event.event_type().to_string(), hour))
            .or_default() += 1;
        let history = self.histories.entry(event.product_id.clone()).or_default();
        history.0 += 1;
        history.1 = history.1.max(event.version);
    }

    /// Per seller: products, total stock, stock value, products below their own threshold,
    /// else `threshold` — over
    /// the products not deleted; a seller whose products are all deleted has zeros.
    pub fn sellers(&self, threshold: i64) -> BTreeMap<String, [i64; 4]> {
        let mut sellers: BTreeMap<String, [i64; 4]> = BTreeMap::new();
        for product in self.products.values() {
            let entry = sellers.entry(product.seller_id.clone()).or_default();
            if !product.deleted {
                entry[0] += 1;
                entry[1] += product.stock;
                entry[2] += product.stock * product.price_cents;
                entry[3] += i64::from(product.stock < product.threshold(threshold));
            }
        }
        sellers
    }
}
