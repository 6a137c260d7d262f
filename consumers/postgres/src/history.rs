//! The `product_events` table: every event of every product, with where it is in the log,
//! written with the batch that applies it (see the migration for why).

use foldline_consumer_runtime::Record;
use sqlx::PgConnection;

/// Inserts the events of `records` (a redelivered one is already there). One statement per
/// batch. A payload PostgreSQL cannot hold (a NUL in a string: SQLSTATE 22P05) is a data
/// error: the product is parked, as for the rows.
pub async fn insert_events<'r>(
    tx: &mut PgConnection,
    schema: &str,
    records: impl IntoIterator<Item = &'r Record>,
) -> Result<(), sqlx::Error> {
    let records: Vec<&Record> = records.into_iter().collect();
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
