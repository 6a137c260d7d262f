//! The `product_events` table: every event of every product, with where it is in the log,
//! written with the batch that applies it (see the migration for why).

use std::collections::{HashMap, HashSet};

use foldline_consumer_runtime::Record;
use sqlx::PgConnection;

/// Inserts the events of `records` (a redelivered one is already there). A PostgreSQL
/// payload it cannot hold (a NUL in a string: SQLSTATE 22P05) is a data error: the product is
/// parked, as for the rows.
///
/// `stored_versions` are the products' versions before the batch, as locked. A row's version
/// past its product's stored version cannot be in the table yet (history rows are written
/// with the product's row, in one transaction, and product rows are never removed), so those
/// rows, each (product, version) once, go in by a plain `INSERT`; only the rest — redelivered
/// or out of order, rare — pay for `ON CONFLICT DO NOTHING`'s speculative insertion, which
/// costs about as much again per row (measured: docs/design.md).
pub async fn insert_events<'r>(
    tx: &mut PgConnection,
    schema: &str,
    records: impl IntoIterator<Item = &'r Record>,
    stored_versions: &HashMap<&str, i64>,
) -> Result<(), sqlx::Error> {
    let mut first_of = HashSet::new();
    let (new, maybe_there): (Vec<&Record>, Vec<&Record>) = records.into_iter().partition(|r| {
        let id = r.event.product_id.as_str();
        let beyond = stored_versions
            .get(id)
            .is_none_or(|stored| r.event.version > *stored);
        beyond && first_of.insert((id, r.event.version))
    });
    insert(tx, schema, &new, "").await?;
    // After the plain insert: of two rows with one (product, version), the first is kept.
    insert(
        tx,
        schema,
        &maybe_there,
        "ON CONFLICT (product_id, version) DO NOTHING",
    )
    .await
}

/// One statement for `records`, with `on_conflict` appended.
async fn insert(
    tx: &mut PgConnection,
    schema: &str,
    records: &[&Record],
    on_conflict: &str,
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.event.product_id.as_str())
        .collect();
    let versions: Vec<i64> = records.iter().map(|r| r.event.version).collect();
    let types: Vec<&str> = records
        .iter()
        .map(|r| r.event.event_type().as_str())
        .collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        records.iter().map(|r| r.event.occurred_at).collect();
    let partitions: Vec<i32> = records.iter().map(|r| r.partition).collect();
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    let actors: Vec<Option<&str>> = records.iter().map(|r| r.event.actor.as_deref()).collect();
    let correlations: Vec<&str> = records
        .iter()
        .map(|r| r.event.correlation_id.as_str())
        .collect();
    let payloads: Vec<String> = records
        .iter()
        .map(|r| r.event.payload.fields_json())
        .collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.product_events
             (product_id, version, event_type, occurred_at, partition, \"offset\", actor,
              correlation_id, payload)
         SELECT i, v, t, o, p, f, a, c, j::jsonb
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::timestamptz[], $5::int4[],
                     $6::int8[], $7::text[], $8::text[], $9::text[]) AS e(i, v, t, o, p, f, a, c, j)
         {on_conflict}"
    ))
    .bind(&ids)
    .bind(&versions)
    .bind(&types)
    .bind(&times)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&actors)
    .bind(&correlations)
    .bind(&payloads)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
