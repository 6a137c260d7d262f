//! Writes one batch into a model schema, set-based: a handful of statements per batch whatever
//! its size (UNNEST upserts), and the consumer offsets in the same transaction.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use foldline_consumer_runtime::Batch;
use foldline_projections::{fold_batch, EventCount, ProductChange};
use sqlx::PgConnection;

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
    Reseek(BTreeMap<i32, i64>),
}

/// Applies `batch` inside the caller's transaction. The stored offsets are locked first; a
/// partition whose stored offset is behind the batch's start (unseen data in between) makes
/// the whole call answer `Reseek` and write nothing (the caller rolls back); records the
/// schema already holds are skipped, so a redelivered batch changes nothing.
pub async fn apply_batch(
    tx: &mut PgConnection,
    target: &Target<'_>,
    batch: &Batch,
) -> Result<Applied, sqlx::Error> {
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
    let stored: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(&format!(
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

    let reseek: BTreeMap<i32, i64> = stored
        .iter()
        .filter(|(p, s)| !batch.continues_from(**p, **s))
        .map(|(p, s)| (*p, *s))
        .collect();
    if !reseek.is_empty() {
        return Ok(Applied::Reseek(reseek));
    }
    let fresh = batch
        .records
        .iter()
        .filter(|r| r.offset >= stored[&r.partition])
        .map(|r| &r.event);
    let changes = fold_batch(fresh);
    let sellers = upsert_products(tx, target, &changes.products).await?;
    refresh_seller_stats(tx, target, sellers).await?;
    add_event_counts(tx, s, &changes.event_counts).await?;

    let (advanced, next): (Vec<i32>, Vec<i64>) = batch
        .next_offsets()
        .into_iter()
        .filter(|(p, next)| *next > stored[p])
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
    crate::query::progress::notify(tx).await?;
    Ok(Applied::Done)
}

/// Upserts the changed rows; returns the sellers of the rows that changed (the ones whose
/// stats need recomputing), in one round trip.
async fn upsert_products(
    tx: &mut PgConnection,
    target: &Target<'_>,
    changes: &[ProductChange],
) -> Result<BTreeSet<String>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(BTreeSet::new());
    }
    let s = target.schema;
    let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
    let names: Vec<Option<&str>> = changes.iter().map(|c| c.name.as_deref()).collect();
    let prices: Vec<Option<i64>> = changes.iter().map(|c| c.price_cents).collect();
    let stocks: Vec<Option<i64>> = changes.iter().map(|c| c.stock).collect();
    let sellers: Vec<Option<&str>> = changes.iter().map(|c| c.seller_id.as_deref()).collect();
    let versions: Vec<i64> = changes.iter().map(|c| c.version).collect();
    let updated: Vec<DateTime<Utc>> = changes.iter().map(|c| c.updated_at).collect();
    let deleted: Vec<bool> = changes.iter().map(|c| c.deleted).collect();
    // The version guard makes a stale change (already applied) a no-op.
    let changed: Vec<Option<String>> = sqlx::query_scalar(&format!(
        "INSERT INTO {s}.products AS p
             (id, name, price_cents, stock, seller_id, version, updated_at, deleted)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[],
                              $6::int8[], $7::timestamptz[], $8::bool[])
         ON CONFLICT (id) DO UPDATE SET
             name = COALESCE(EXCLUDED.name, p.name),
             price_cents = COALESCE(EXCLUDED.price_cents, p.price_cents),
             stock = COALESCE(EXCLUDED.stock, p.stock),
             seller_id = COALESCE(EXCLUDED.seller_id, p.seller_id),
             version = EXCLUDED.version,
             updated_at = EXCLUDED.updated_at,
             deleted = EXCLUDED.deleted
         WHERE p.version < EXCLUDED.version
         RETURNING p.seller_id"
    ))
    .bind(&ids)
    .bind(&names)
    .bind(&prices)
    .bind(&stocks)
    .bind(&sellers)
    .bind(&versions)
    .bind(&updated)
    .bind(&deleted)
    .fetch_all(&mut *tx)
    .await?;
    Ok(changed.into_iter().flatten().collect())
}

/// Recomputes the stats of every seller whose products the batch changed.
async fn refresh_seller_stats(
    tx: &mut PgConnection,
    target: &Target<'_>,
    sellers: BTreeSet<String>,
) -> Result<(), sqlx::Error> {
    if sellers.is_empty() {
        return Ok(());
    }
    let s = target.schema;
    // Sorted (a BTreeSet): every instance takes the locks below in the same order.
    let sellers: Vec<String> = sellers.into_iter().collect();
    // Instances owning other partitions may touch the same seller at the same time. Taking
    // a lock per seller (in one order: no deadlock) before counting makes the count statement
    // see their committed products, so the last writer's stats are complete.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(s, 17)) FROM UNNEST($1::text[]) AS s",
    )
    .bind(&sellers)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {s}.seller_stats AS st
             (seller_id, products, total_stock, stock_value_cents, low_stock_products)
         SELECT t.seller_id, count(p.id), COALESCE(sum(p.stock), 0)::bigint,
                COALESCE(sum(p.stock * p.price_cents), 0)::bigint,
                count(p.id) FILTER (WHERE p.stock < $2)
         FROM UNNEST($1::text[]) AS t(seller_id)
         LEFT JOIN {s}.products p ON p.seller_id = t.seller_id AND NOT p.deleted
         GROUP BY t.seller_id
         ON CONFLICT (seller_id) DO UPDATE SET
             products = EXCLUDED.products,
             total_stock = EXCLUDED.total_stock,
             stock_value_cents = EXCLUDED.stock_value_cents,
             low_stock_products = EXCLUDED.low_stock_products"
    ))
    .bind(&sellers)
    .bind(target.low_stock_threshold)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn add_event_counts(
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
