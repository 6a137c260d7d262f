//! Writes one batch into a model schema, set-based: a handful of statements per batch whatever
//! its size (UNNEST upserts), and the consumer offsets in the same transaction.

use chrono::{DateTime, Utc};
use foldline_consumer_runtime::Parked;
use foldline_consumer_runtime::{Batch, Record};
use foldline_projections::{
    fold_batch, seller_deltas, EventCount, ProductChange, ProductRow, SellerDelta, StatsOverflow,
};
use foldline_service::position::Offsets;
use std::collections::HashMap;

use sqlx::PgConnection;

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A seller's totals would overflow: the record's data is at fault.
    #[error(transparent)]
    Stats(#[from] StatsOverflow),
}

impl ApplyError {
    /// Whether the records' data is at fault (no retry can help; the product is parked): a
    /// value PostgreSQL refuses (SQLSTATE class 22, data exception: a NUL in text, a number
    /// out of range), a broken constraint (23), a value past a limit of the server (54: an
    /// index row too large), or a sum past its column.
    pub fn is_data(&self) -> bool {
        match self {
            ApplyError::Stats(_) => true,
            ApplyError::Sql(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
            ApplyError::Sql(_) => false,
        }
    }
}

/// Where a batch goes: a model schema and the offsets key.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub schema: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub low_stock_threshold: i64,
}

/// What applying a batch did. Unlike the runtime's `Written` there is no "held back": the
/// read model never keeps records for later.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every record the schema did not hold yet is written, with the offsets.
    Done,
    /// The schema's stored offsets disagree with where the batch starts: read these
    /// partitions again from these offsets; nothing was written.
    Reseek(Offsets),
}

/// Applies `batch` inside the caller's transaction. The stored offsets are locked first; a
/// partition whose stored offset is behind the batch's start (unseen data in between) makes
/// the whole call answer `Reseek` and write nothing (the caller rolls back); records the
/// schema already holds are skipped, so a redelivered batch changes nothing.
pub async fn apply_batch(
    tx: &mut PgConnection,
    target: &Target<'_>,
    batch: &Batch,
) -> Result<Applied, ApplyError> {
    let s = target.schema;
    let partitions: Vec<i32> = batch.ranges.keys().copied().collect();
    // Rows exist before they are locked, so two instances can never both insert one.
    sqlx::query(&format!(
        "INSERT INTO {s}.consumer_offsets (consumer_group, topic, partition, next_offset)
         SELECT $1, $2, p, 0 FROM UNNEST($3::int4[]) AS p ON CONFLICT DO NOTHING"
    ))
    .bind(target.group)
    .bind(target.topic)
    .bind(&partitions)
    .execute(&mut *tx)
    .await?;
    let stored: Offsets = sqlx::query_as::<_, (i32, i64)>(&format!(
        "SELECT partition, next_offset FROM {s}.consumer_offsets
         WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
         ORDER BY partition FOR UPDATE"
    ))
    .bind(target.group)
    .bind(target.topic)
    .bind(&partitions)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    let reseek: Offsets = stored
        .iter()
        .filter(|(p, s)| !batch.continues_from(*p, *s))
        .collect();
    if !reseek.is_empty() {
        return Ok(Applied::Reseek(reseek));
    }
    let fresh = batch
        .records
        .iter()
        .filter(|r| !stored.has_seen(r.partition, r.offset));
    apply_events(tx, target, fresh).await?;
    let parked: Vec<&Parked> = batch
        .parked
        .iter()
        .filter(|p| !stored.has_seen(p.partition, p.offset))
        .collect();
    insert_parked(tx, target, &parked).await?;

    let (advanced, next): (Vec<i32>, Vec<i64>) = batch
        .next_offsets()
        .iter()
        .filter(|(p, next)| stored.get(*p).is_some_and(|s| *next > s))
        .unzip();
    sqlx::query(&format!(
        "UPDATE {s}.consumer_offsets o SET next_offset = v.next
         FROM UNNEST($3::int4[], $4::int8[]) AS v(partition, next)
         WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = v.partition"
    ))
    .bind(target.group)
    .bind(target.topic)
    .bind(&advanced)
    .bind(&next)
    .execute(&mut *tx)
    .await?;
    // Delivered at commit: wakes query APIs waiting on `?after=`.
    crate::model::notify_progress(tx).await?;
    Ok(Applied::Done)
}

/// Folds the events of `records` into the model's products, seller stats, analytics and
/// history (no offsets).
pub async fn apply_events<'r>(
    tx: &mut PgConnection,
    target: &Target<'_>,
    records: impl IntoIterator<Item = &'r Record, IntoIter: Clone> + Clone,
) -> Result<(), ApplyError> {
    let s = target.schema;
    let changes = fold_batch(records.clone().into_iter().map(|r| &r.event));
    let locked = lock_products(tx, s, &changes.products).await?;
    let after = write_products(tx, target, &changes.products, &locked).await?;
    let stored_versions: HashMap<&str, i64> = locked
        .iter()
        .map(|l| (l.row.id.as_str(), l.version))
        .collect();
    crate::history::insert_events(tx, s, records, &stored_versions).await?;
    let before: Vec<ProductRow> = locked.into_iter().map(|l| l.row).collect();
    let deltas = seller_deltas(&before, &after, target.low_stock_threshold)?;
    add_seller_deltas(tx, s, &deltas).await?;
    add_event_counts(tx, s, &changes.event_counts).await?;
    Ok(())
}

/// Keeps parked entries (a redelivered one is already there).
pub(crate) async fn insert_parked(
    tx: &mut PgConnection,
    target: &Target<'_>,
    parked: &[&Parked],
) -> Result<(), sqlx::Error> {
    if parked.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Parked) -> i64| parked.iter().map(|p| f(p)).collect::<Vec<i64>>();
    let partitions: Vec<i32> = parked.iter().map(|p| p.partition).collect();
    let products: Vec<&[u8]> = parked.iter().map(|p| p.product_id.as_bytes()).collect();
    let types: Vec<&str> = parked.iter().map(|p| p.event_type.as_str()).collect();
    // An error's text may quote the refused value: no NUL may reach a text column.
    let reasons: Vec<String> = parked
        .iter()
        .map(|p| p.reason.replace('\0', "\\0"))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO {}.parked_events
             (consumer_group, topic, partition, \"offset\", product_id, version, event_type, reason)
         SELECT $1, $2, * FROM UNNEST($3::int4[], $4::int8[], $5::bytea[], $6::int8[],
                                      $7::text[], $8::text[])
         ON CONFLICT DO NOTHING",
        target.schema
    ))
    .bind(target.group)
    .bind(target.topic)
    .bind(&partitions)
    .bind(column(|p| p.offset))
    .bind(&products)
    .bind(column(|p| p.version))
    .bind(&types)
    .bind(&reasons)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A product row the batch is about to change, as it is, locked until the transaction ends.
struct LockedRow {
    row: ProductRow,
    version: i64,
    /// Where the row is: locked, it cannot move before this transaction updates it, so the
    /// update finds it without a second index probe (and without a plan that might scan).
    ctid: String,
}

/// The rows the batch is about to change, as they are, locked until the transaction ends
/// (a product's partition has one projector at a time; the lock makes that certain).
async fn lock_products(
    tx: &mut PgConnection,
    s: &str,
    changes: &[ProductChange],
) -> Result<Vec<LockedRow>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
    let rows: Vec<LockedTuple> = sqlx::query_as(&format!(
        "SELECT ctid::text, version, id, seller_id, stock, price_cents, deleted,
                    low_stock_threshold
             FROM {s}.products WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(ctid, version, id, seller_id, stock, price_cents, deleted, low)| LockedRow {
                row: product_row((id, seller_id, stock, price_cents, deleted, low)),
                version,
                ctid,
            },
        )
        .collect())
}

/// `ctid`, `version`, then a [`RowTuple`].
type LockedTuple = (
    String,
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    bool,
    Option<i64>,
);

type RowTuple = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    bool,
    Option<i64>,
);

fn product_row(
    (id, seller_id, stock, price_cents, deleted, low_stock_threshold): RowTuple,
) -> ProductRow {
    ProductRow {
        id,
        seller_id,
        stock,
        price_cents,
        deleted,
        low_stock_threshold,
    }
}

/// Writes the changed rows; returns the rows that changed, as they are now. Rows the lock
/// found are updated where they lie (by `ctid`); the rest, new products, are upserted (the
/// conflict arm only matters for a log that names one product in two partitions).
async fn write_products(
    tx: &mut PgConnection,
    target: &Target<'_>,
    changes: &[ProductChange],
    locked: &[LockedRow],
) -> Result<Vec<ProductRow>, sqlx::Error> {
    let found: HashMap<&str, &str> = locked
        .iter()
        .map(|l| (l.row.id.as_str(), l.ctid.as_str()))
        .collect();
    let (existing, new): (Vec<&ProductChange>, Vec<&ProductChange>) = changes
        .iter()
        .partition(|c| found.contains_key(c.id.as_str()));
    let ctids: Vec<&str> = existing.iter().map(|c| found[c.id.as_str()]).collect();
    // The version guard makes a stale change (already applied) a no-op.
    let mut changed = write_rows(
        tx,
        &existing,
        &format!(
            "UPDATE {s}.products AS p SET {merged}
             FROM {ROWS} AS e ({COLUMNS})
             WHERE p.ctid = ANY($10::text[]::tid[]) AND p.id = e.id AND p.version < e.version
             RETURNING {RETURNED}",
            s = target.schema,
            merged = merged_from("e"),
        ),
        Some(&ctids),
    )
    .await?;
    changed.extend(
        write_rows(
            tx,
            &new,
            &format!(
                "INSERT INTO {s}.products AS p ({COLUMNS})
                 SELECT * FROM {ROWS}
                 ON CONFLICT (id) DO UPDATE SET {merged}
                 WHERE p.version < EXCLUDED.version
                 RETURNING {RETURNED}",
                s = target.schema,
                merged = merged_from("EXCLUDED"),
            ),
            None,
        )
        .await?,
    );
    Ok(changed)
}

/// How a change merges into the row `p` it updates (the columns' `SET` list), the change's
/// values read from `change` (a joined row or `EXCLUDED`): a value the change does not carry
/// keeps the row's.
fn merged_from(change: &str) -> String {
    format!(
        "name = COALESCE({change}.name, p.name),
         price_cents = COALESCE({change}.price_cents, p.price_cents),
         stock = COALESCE({change}.stock, p.stock),
         seller_id = COALESCE({change}.seller_id, p.seller_id),
         version = {change}.version,
         updated_at = {change}.updated_at,
         deleted = {change}.deleted,
         low_stock_threshold = COALESCE({change}.low_stock_threshold, p.low_stock_threshold)"
    )
}

/// The changes as rows: `$1` … `$9`, in [`COLUMNS`] order.
const ROWS: &str = "UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[],
                           $6::int8[], $7::timestamptz[], $8::bool[], $9::int8[])";
const COLUMNS: &str =
    "id, name, price_cents, stock, seller_id, version, updated_at, deleted, low_stock_threshold";
const RETURNED: &str =
    "p.id, p.seller_id, p.stock, p.price_cents, p.deleted, p.low_stock_threshold";

/// Runs `sql` with `changes` bound as [`ROWS`] (and `ctids` as `$10`); the rows it returns.
async fn write_rows(
    tx: &mut PgConnection,
    changes: &[&ProductChange],
    sql: &str,
    ctids: Option<&[&str]>,
) -> Result<Vec<ProductRow>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
    let names: Vec<Option<&str>> = changes.iter().map(|c| c.name.as_deref()).collect();
    let prices: Vec<Option<i64>> = changes.iter().map(|c| c.price_cents).collect();
    let stocks: Vec<Option<i64>> = changes.iter().map(|c| c.stock).collect();
    let sellers: Vec<Option<&str>> = changes.iter().map(|c| c.seller_id.as_deref()).collect();
    let versions: Vec<i64> = changes.iter().map(|c| c.version).collect();
    let updated: Vec<DateTime<Utc>> = changes.iter().map(|c| c.updated_at).collect();
    let deleted: Vec<bool> = changes.iter().map(|c| c.deleted).collect();
    let thresholds: Vec<Option<i64>> = changes.iter().map(|c| c.low_stock_threshold).collect();
    let mut query = sqlx::query_as::<_, RowTuple>(sql)
        .bind(&ids)
        .bind(&names)
        .bind(&prices)
        .bind(&stocks)
        .bind(&sellers)
        .bind(&versions)
        .bind(&updated)
        .bind(&deleted)
        .bind(&thresholds);
    if let Some(ctids) = ctids {
        query = query.bind(ctids);
    }
    let changed = query.fetch_all(&mut *tx).await?;
    Ok(changed.into_iter().map(product_row).collect())
}

/// Adds each seller's delta to its stats row (created at zero if missing). Additions commute,
/// so instances that touch one seller at the same time need no lock beyond the row's own;
/// sellers come sorted, so two transactions take those row locks in one order.
pub(crate) async fn add_seller_deltas(
    tx: &mut PgConnection,
    s: &str,
    deltas: &[(String, SellerDelta)],
) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&SellerDelta) -> i64| deltas.iter().map(|(_, d)| f(d)).collect::<Vec<_>>();
    let sellers: Vec<&str> = deltas.iter().map(|(s, _)| s.as_str()).collect();
    sqlx::query(&format!(
        "INSERT INTO {s}.seller_stats AS st
             (seller_id, products, total_stock, stock_value_cents, low_stock_products)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])
         ON CONFLICT (seller_id) DO UPDATE SET
             products = st.products + EXCLUDED.products,
             total_stock = st.total_stock + EXCLUDED.total_stock,
             stock_value_cents = st.stock_value_cents + EXCLUDED.stock_value_cents,
             low_stock_products = st.low_stock_products + EXCLUDED.low_stock_products"
    ))
    .bind(&sellers)
    .bind(column(|d| d.products))
    .bind(column(|d| d.total_stock))
    .bind(column(|d| d.stock_value_cents))
    .bind(column(|d| d.low_stock_products))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn add_event_counts(
    tx: &mut PgConnection,
    s: &str,
    counts: &[EventCount],
) -> Result<(), sqlx::Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = counts.iter().map(|c| c.event_type).collect();
    let hours: Vec<DateTime<Utc>> = counts.iter().map(|c| c.hour).collect();
    let events: Vec<i64> = counts.iter().map(|c| c.events).collect();
    sqlx::query(&format!(
        "INSERT INTO {s}.event_counts AS c (event_type, hour, events)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[])
         ON CONFLICT (event_type, hour) DO UPDATE SET events = c.events + EXCLUDED.events"
    ))
    .bind(&types)
    .bind(&hours)
    .bind(&events)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
