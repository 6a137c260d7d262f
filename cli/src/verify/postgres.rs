//! The read model's side of `foldline verify`: its rows and offsets read in one snapshot,
//! and the comparison with the fold of the log.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use chrono::{DateTime, Utc};
use foldline_service::position::Offsets;
use sqlx::{Connection, PgConnection};

use super::{Difference, Expected};

/// The read model at its cut.
pub struct Model {
    /// The stored offsets: the model holds every event before them.
    pub cut: Offsets,
    /// Records the projector set aside, and their products.
    pub parked_at: BTreeSet<(i32, i64)>,
    pub parked_products: BTreeSet<String>,
    /// id → (name, price, stock, seller, version, deleted)
    products: BTreeMap<String, ProductRow>,
    sellers: BTreeMap<String, [i64; 4]>,
    counts: BTreeMap<(String, DateTime<Utc>), i64>,
    histories: BTreeMap<String, (i64, i64)>,
}

/// A `products` row as selected: the id, then a [`ProductRow`].
type ProductRowWithId = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
    bool,
    Option<i64>,
);

/// name, price, stock, seller, version, deleted, own low-stock threshold.
type ProductRow = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
    bool,
    Option<i64>,
);

/// Reads the live model of `topic` as the projector `group` left it, in one REPEATABLE READ
/// snapshot: its offsets and its rows agree, whatever the projector writes meanwhile.
pub async fn read(database_url: &str, topic: &str, group: &str) -> anyhow::Result<Model> {
    let mut conn = PgConnection::connect(database_url).await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let schema: String = sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
        .fetch_one(&mut *tx)
        .await
        .context("no read model yet (the projector has not started)")?;
    let digits = schema.strip_prefix("model_").unwrap_or("");
    anyhow::ensure!(
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()),
        "unexpected model schema {schema:?}"
    );
    let cut: Offsets = sqlx::query_as::<_, (i32, i64)>(&format!(
        "SELECT partition, next_offset FROM {schema}.consumer_offsets
         WHERE consumer_group = $1 AND topic = $2"
    ))
    .bind(group)
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let parked: Vec<(i32, i64, Vec<u8>)> = sqlx::query_as(&format!(
        "SELECT partition, \"offset\", product_id FROM {schema}.parked_events
         WHERE consumer_group = $1 AND topic = $2"
    ))
    .bind(group)
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    let products: Vec<ProductRowWithId> = sqlx::query_as(&format!(
        "SELECT id, name, price_cents, stock, seller_id, version, deleted, low_stock_threshold
         FROM {schema}.products"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let sellers: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT seller_id, products, total_stock, stock_value_cents, low_stock_products
         FROM {schema}.seller_stats"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let counts: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(&format!(
        "SELECT event_type, hour, events FROM {schema}.event_counts"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let histories: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT product_id, count(*)::int8, max(version) FROM {schema}.product_events
         GROUP BY product_id"
    ))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Model {
        cut,
        parked_at: parked.iter().map(|(p, o, _)| (*p, *o)).collect(),
        parked_products: parked
            .iter()
            .map(|(_, _, id)| String::from_utf8_lossy(id).into_owned())
            .collect(),
        products: products
            .into_iter()
            .map(
                |(id, name, price, stock, seller, version, deleted, threshold)| {
                    (
                        id,
                        (name, price, stock, seller, version, deleted, threshold),
                    )
                },
            )
            .collect(),
        sellers: sellers
            .into_iter()
            .map(|(s, a, b, c, d)| (s, [a, b, c, d]))
            .collect(),
        counts: counts.into_iter().map(|(t, h, n)| ((t, h), n)).collect(),
        histories: histories
            .into_iter()
            .map(|(id, n, v)| (id, (n, v)))
            .collect(),
    })
}

/// What the comparison found.
#[derive(Default)]
pub struct Report {
    pub products: usize,
    pub sellers: usize,
    pub counts: usize,
    pub histories: usize,
    pub differences: Vec<Difference>,
}

/// Compares the model with the fold; parked products, and the stats of their sellers, are
/// left out (the model holds only part of their events, by design).
pub fn compare(model: &Model, expected: &Expected, threshold: i64) -> Report {
    let mut report = Report::default();
    let parked = &model.parked_products;
    let mut differ = |what: String, model: String, log: String| {
        report.differences.push(Difference { what, model, log })
    };
    let ids: BTreeSet<&String> = model
        .products
        .keys()
        .chain(expected.products.keys())
        .collect();
    let mut compared = 0;
    for id in ids.into_iter().filter(|id| !parked.contains(*id)) {
        compared += 1;
        let row = model.products.get(id);
        let want = expected.products.get(id).map(|p| {
            (
                Some(p.name.clone()),
                Some(p.price_cents),
                Some(p.stock),
                Some(p.seller_id.clone()),
                p.version,
                p.deleted,
                p.low_stock_threshold,
            )
        });
        if row != want.as_ref() {
            differ(
                format!("product {id}"),
                format!("{row:?}"),
                format!("{want:?}"),
            );
        }
        let history = model.histories.get(id.as_str());
        let want = expected.histories.get(id.as_str());
        if history != want {
            differ(
                format!("history of product {id} (events, last version)"),
                format!("{history:?}"),
                format!("{want:?}"),
            );
        }
    }
    let skipped_sellers: BTreeSet<&str> = model
        .products
        .iter()
        .filter(|(id, _)| parked.contains(*id))
        .filter_map(|(_, row)| row.3.as_deref())
        .collect();
    let want_sellers = expected.sellers(threshold);
    let sellers: BTreeSet<&String> = model.sellers.keys().chain(want_sellers.keys()).collect();
    let mut sellers_compared = 0;
    for seller in sellers
        .into_iter()
        .filter(|s| !skipped_sellers.contains(s.as_str()))
    {
        sellers_compared += 1;
        let got = model.sellers.get(seller);
        let want = want_sellers.get(seller);
        if got != want {
            differ(
                format!("seller {seller} (products, total stock, stock value, low stock)"),
                format!("{got:?}"),
                format!("{want:?}"),
            );
        }
    }
    let keys: BTreeSet<&(String, DateTime<Utc>)> =
        model.counts.keys().chain(expected.counts.keys()).collect();
    let counts = keys.len();
    for key in keys {
        let got = model.counts.get(key);
        let want = expected.counts.get(key);
        if got != want {
            differ(
                format!(
                    "event count {} at {}",
                    key.0,
                    key.1.format("%Y-%m-%dT%H:00Z")
                ),
                format!("{got:?}"),
                format!("{want:?}"),
            );
        }
    }
    report.products = compared;
    report.histories = compared;
    report.sellers = sellers_compared;
    report.counts = counts;
    report
}
