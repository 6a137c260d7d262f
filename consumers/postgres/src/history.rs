//! The `product_events` table: every event of every product, with where it is in the log,
//! written with the batch that applies it (see the migration for why).

use std::collections::{HashMap, HashSet};

use foldline_consumer_runtime::Record;
use postgres_types::Type;
use sqlx::PgConnection;

use crate::copy::{CopyRows, JsonbText};

/// The history table's columns, in the order [`history_row`] writes them.
pub const HISTORY_COLUMNS: &str = "product_id, version, event_type, occurred_at, partition, \
     \"offset\", actor, correlation_id, payload";
pub static HISTORY_TYPES: &[Type] = &[
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
];

/// Appends `record`'s history row (binary `COPY`, [`HISTORY_COLUMNS`]).
pub fn history_row(
    rows: &mut CopyRows,
    record: &Record,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let event = &record.event;
    let payload = event.payload.fields_json();
    rows.row(&[
        &event.product_id.as_str(),
        &event.version,
        &event.event_type().as_str(),
        &event.occurred_at,
        &record.partition,
        &record.offset,
        &event.actor.as_deref(),
        &event.correlation_id.as_str(),
        &JsonbText(&payload),
    ])
}

/// Inserts the events of `records` (a redelivered one is already there). A PostgreSQL
/// payload it cannot hold (a NUL in a string: SQLSTATE 22P05) is a data error: the product is
/// parked, as for the rows.
///
/// `stored_versions` are the products' versions before the batch, as locked. A row's version
/// past its product's stored version cannot be in the table yet (history rows are written
/// with the product's row, in one transaction, and product rows are never removed), so those
/// rows, each (product, version) once, go in by a binary `COPY` (the table's own insert path,
/// no statement to plan, no arrays to unpack); only the rest — redelivered or out of order,
/// rare — go through `INSERT … ON CONFLICT DO NOTHING`.
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
    copy(tx, schema, &new).await?;
    // After the new rows: of two rows with one (product, version), the first is kept.
    insert_unless_there(tx, schema, &maybe_there).await
}

/// COPYs `records`' rows into the table (binary).
async fn copy(tx: &mut PgConnection, schema: &str, records: &[&Record]) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let mut rows = CopyRows::new(HISTORY_TYPES);
    for record in records {
        history_row(&mut rows, record).map_err(sqlx::Error::Encode)?;
    }
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY {schema}.product_events ({HISTORY_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(rows.finish()).await?;
    copy.finish().await?;
    Ok(())
}

/// Inserts `records`' rows that the table does not hold yet, in one statement.
async fn insert_unless_there(
    tx: &mut PgConnection,
    schema: &str,
    records: &[&Record],
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
         ON CONFLICT (product_id, version) DO NOTHING"
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
