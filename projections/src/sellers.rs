//! Seller stats kept by increments: what a batch's product rows add to and take from each
//! seller's counts, from the rows before and after the batch. Recomputing a seller's stats
//! from all its products instead costs time in proportion to the seller's catalogue, on every
//! batch that touches it — a seller with 300,000 products made every batch scan 300,000 rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A product row as stored, as far as seller stats are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRow {
    pub id: String,
    pub seller_id: Option<String>,
    pub stock: Option<i64>,
    pub price_cents: Option<i64>,
    pub deleted: bool,
    /// The product's own low-stock threshold (`None`: the default one).
    pub low_stock_threshold: Option<i64>,
}

/// What to add to one seller's stats (negative: take away).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SellerDelta {
    pub products: i64,
    pub total_stock: i64,
    pub stock_value_cents: i64,
    pub low_stock_products: i64,
}

/// A seller's totals would leave the 64-bit range the read model keeps them in: the events of
/// the product are past the write API's limits (see `foldline_schemas::limits`), so the
/// consumer parks the product instead of storing a wrong sum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stats of seller {seller:?} would overflow a 64-bit integer (product {product:?}: stock {stock:?}, price_cents {price_cents:?})")]
pub struct StatsOverflow {
    pub seller: String,
    pub product: String,
    pub stock: Option<i64>,
    pub price_cents: Option<i64>,
}

impl SellerDelta {
    /// Adds (`sign` 1) or takes away (-1) one product row; `None` on overflow.
    fn add(&mut self, row: &ProductRow, sign: i64, threshold: i64) -> Option<()> {
        if row.deleted {
            return Some(());
        }
        let stock = row.stock.unwrap_or(0);
        let value = match row.stock.zip(row.price_cents) {
            Some((s, p)) => s.checked_mul(p)?,
            None => 0,
        };
        self.products = self.products.checked_add(sign)?;
        self.total_stock = self.total_stock.checked_add(stock.checked_mul(sign)?)?;
        self.stock_value_cents = self
            .stock_value_cents
            .checked_add(value.checked_mul(sign)?)?;
        let threshold = row.low_stock_threshold.unwrap_or(threshold);
        self.low_stock_products += sign * i64::from(row.stock.is_some_and(|s| s < threshold));
        Some(())
    }

    fn is_zero(&self) -> bool {
        *self == SellerDelta::default()
    }
}

/// The change to each seller's stats when the rows `before` (as they were; a product missing
/// there did not exist) became the rows `after` (only the rows that changed). A live product
/// counts once for its seller, with its stock, stock × price, and whether its stock is below
/// its own threshold, else `threshold`; a deleted product or one without a seller counts nowhere. Sellers in order
/// (the writer updates their rows in this order: no deadlock between instances); sellers
/// whose stats do not change are left out, but for the sellers of products new in `after`
/// (their row is created, at zero if the product is already gone).
pub fn seller_deltas(
    before: &[ProductRow],
    after: &[ProductRow],
    threshold: i64,
) -> Result<Vec<(String, SellerDelta)>, StatsOverflow> {
    let overflow = |seller: &str, row: &ProductRow| StatsOverflow {
        seller: seller.to_owned(),
        product: row.id.clone(),
        stock: row.stock,
        price_cents: row.price_cents,
    };
    let before: HashMap<&str, &ProductRow> = before.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut deltas: BTreeMap<String, SellerDelta> = BTreeMap::new();
    // Sellers of products new in this batch: their row must exist (a seller's stats answer
    // 404 only when it never listed a product), even when the product is gone again by the
    // batch's end and adds nothing.
    let mut listed: BTreeSet<&str> = BTreeSet::new();
    for new in after {
        if !before.contains_key(new.id.as_str()) {
            if let Some(seller) = &new.seller_id {
                listed.insert(seller);
            }
        }
        if let Some(old) = before.get(new.id.as_str()) {
            if let Some(seller) = &old.seller_id {
                deltas
                    .entry(seller.clone())
                    .or_default()
                    .add(old, -1, threshold)
                    .ok_or_else(|| overflow(seller, old))?;
            }
        }
        if let Some(seller) = &new.seller_id {
            deltas
                .entry(seller.clone())
                .or_default()
                .add(new, 1, threshold)
                .ok_or_else(|| overflow(seller, new))?;
        }
    }
    Ok(deltas
        .into_iter()
        .filter(|(seller, d)| !d.is_zero() || listed.contains(seller.as_str()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, seller: &str, stock: i64, price: i64, deleted: bool) -> ProductRow {
        ProductRow {
            id: id.into(),
            seller_id: Some(seller.into()),
            stock: Some(stock),
            price_cents: Some(price),
            deleted,
            low_stock_threshold: None,
        }
    }

    fn delta(products: i64, total_stock: i64, value: i64, low: i64) -> SellerDelta {
        SellerDelta {
            products,
            total_stock,
            stock_value_cents: value,
            low_stock_products: low,
        }
    }

    #[test]
    fn given_a_new_product_then_its_seller_gains_it() {
        let after = [row("p1", "s1", 3, 100, false)];
        assert_eq!(
            seller_deltas(&[], &after, 5).unwrap(),
            vec![("s1".into(), delta(1, 3, 300, 1))]
        );
    }

    #[test]
    fn given_stock_crossing_the_threshold_then_low_stock_moves_and_value_follows() {
        let before = [row("p1", "s1", 6, 100, false)];
        let after = [row("p1", "s1", 4, 100, false)];
        assert_eq!(
            seller_deltas(&before, &after, 5).unwrap(),
            vec![("s1".into(), delta(0, -2, -200, 1))]
        );
        // And back above it.
        assert_eq!(
            seller_deltas(&after, &before, 5).unwrap(),
            vec![("s1".into(), delta(0, 2, 200, -1))]
        );
    }

    #[test]
    fn given_a_deletion_then_the_product_leaves_its_seller() {
        let before = [row("p1", "s1", 2, 50, false)];
        let after = [row("p1", "s1", 2, 50, true)];
        assert_eq!(
            seller_deltas(&before, &after, 5).unwrap(),
            vec![("s1".into(), delta(-1, -2, -100, -1))]
        );
    }

    #[test]
    fn given_rows_that_do_not_change_the_stats_then_no_seller_is_touched() {
        // A rename: same stock and price.
        let before = [row("p1", "s1", 9, 50, false)];
        assert!(seller_deltas(&before, &before.clone(), 5)
            .unwrap()
            .is_empty());
        // A product without a seller (its create not applied yet) counts nowhere.
        let orphan = ProductRow {
            seller_id: None,
            ..row("p2", "x", 1, 1, false)
        };
        assert!(seller_deltas(&[], &[orphan], 5).unwrap().is_empty());
    }

    #[test]
    fn given_many_products_of_several_sellers_then_deltas_add_up_per_seller_in_order() {
        let before = [row("a", "s2", 10, 1, false), row("b", "s1", 1, 1, false)];
        let after = [
            row("a", "s2", 7, 1, false),
            row("b", "s1", 1, 2, false),
            row("c", "s2", 1, 10, false),
        ];
        assert_eq!(
            seller_deltas(&before, &after, 5).unwrap(),
            vec![
                ("s1".into(), delta(0, 0, 1, 0)),
                ("s2".into(), delta(1, -2, 7, 1)),
            ]
        );
    }

    #[test]
    fn given_a_product_worth_more_than_a_bigint_then_an_overflow_not_a_wrong_sum() {
        let huge = row("p1", "s1", i64::MAX / 2, 4, false);
        let error = seller_deltas(&[], &[huge], 5).unwrap_err();
        assert_eq!(error.seller, "s1");
        assert_eq!(error.product, "p1");
    }

    #[test]
    fn given_a_product_created_and_deleted_in_one_batch_then_its_seller_gets_a_row_at_zero() {
        let after = [row("p1", "s1", 3, 100, true)];
        assert_eq!(
            seller_deltas(&[], &after, 5).unwrap(),
            vec![("s1".into(), delta(0, 0, 0, 0))]
        );
        // A product already known whose change adds nothing leaves its seller out.
        let before = [row("p1", "s1", 3, 100, false)];
        let renamed = [row("p1", "s1", 3, 100, false)];
        assert_eq!(seller_deltas(&before, &renamed, 5).unwrap(), vec![]);
    }
}
