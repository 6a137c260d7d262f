//! The bulk load of a rebuild: the whole log folded in memory ([`LogFold`]: per product,
//! not per event) and written with `COPY` into a fresh model schema whose keys and indexes are
//! built after the rows are in, instead of a transaction of upserts per batch.
//!
//! History rows go to PostgreSQL as they are read (one `COPY` running for the whole read);
//! products, seller stats, event counts, parked records and offsets once the read ends. Then
//! the primary keys and indexes the migrations declared are built from the loaded rows.
//!
//! It gives the model the batch-by-batch rebuild gives whenever the log is what the write API
//! appends. When it is not — a product's version that does not grow, a value PostgreSQL
//! refuses, a seller's sums past 64 bits — the load says why ([`Loaded::FellBack`]) and the
//! caller rebuilds batch by batch, which parks as the live projector does.

use std::time::Instant;

use foldline_consumer_runtime::history::EventSource;
use foldline_consumer_runtime::parking::{set_aside, ParkedSet};
use foldline_consumer_runtime::{Batch, Parked};
use foldline_projections::{FoldedLog, LogFold};
use foldline_service::position::Offsets;
use indicatif::ProgressBar;
use postgres_types::Type;
use sqlx::PgConnection;
use tokio::sync::mpsc;

use crate::apply::{ApplyError, Target};
use crate::copy::CopyRows;
use crate::history::{history_row, HISTORY_COLUMNS, HISTORY_TYPES};

/// Bytes of rows sent to PostgreSQL at a time.
const CHUNK: usize = 1 << 20;

/// What the bulk load did.
#[derive(Debug)]
pub enum Loaded {
    /// The schema holds the log up to `next`.
    Done(BulkReport),
    /// The log needs the batch-by-batch rebuild (why); the schema holds part of a load.
    FellBack(String),
}

#[derive(Debug)]
pub struct BulkReport {
    pub events: u64,
    pub products: usize,
    pub next: Offsets,
    pub parked: ParkedSet,
    /// Reading the source, folding and streaming history, until the read ends.
    pub read_seconds: f64,
    /// The other tables, after the read.
    pub rows_seconds: f64,
    /// Primary keys, indexes and statistics.
    pub index_seconds: f64,
}

/// The tables loaded without their keys and indexes (built after the rows are in).
const BULK_TABLES: &[&str] = &["product_events", "products"];

/// Loads the log of `source` into `target.schema` (empty, as the migrations made it).
pub async fn load<S: EventSource + Send>(
    conn: &mut PgConnection,
    target: &Target<'_>,
    source: &mut S,
    progress: &ProgressBar,
) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let deferred = Deferred::take_off(conn, target.schema, BULK_TABLES).await?;
    let (tx, rx) = mpsc::channel::<Batch>(4);
    let start = Offsets::new();
    let read = source.read(&start, tx);
    let history = stream_history(conn, target.schema, rx, progress);
    let (next, streamed) = tokio::join!(read, history);
    let streamed = match streamed {
        Ok(Ok(streamed)) => streamed,
        Ok(Err(why)) => return Ok(Loaded::FellBack(why)),
        Err(error) => return Err(error),
    };
    let next = next?;
    let read_seconds = started.elapsed().as_secs_f64();

    let rows_started = Instant::now();
    let products = streamed.fold.products();
    let folded = match streamed.fold.finish(target.low_stock_threshold) {
        Ok(folded) => folded,
        Err(overflow) => return Ok(Loaded::FellBack(overflow.to_string())),
    };
    if let Err(error) = write_rows(conn, target, &folded, &streamed.parked, &next).await {
        return refusal(error, "a row").map(Loaded::FellBack);
    }
    let rows_seconds = rows_started.elapsed().as_secs_f64();

    let index_started = Instant::now();
    if let Err(error) = deferred.put_back(conn).await {
        // A duplicate key the fold did not see (it checks versions per product).
        return refusal(error, "a row").map(Loaded::FellBack);
    }
    for table in BULK_TABLES.iter().chain(&["seller_stats", "event_counts"]) {
        sqlx::query(&format!("ANALYZE {}.{table}", target.schema))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Loaded::Done(BulkReport {
        events: streamed.events,
        products,
        next,
        parked: streamed.parked_set,
        read_seconds,
        rows_seconds,
        index_seconds: index_started.elapsed().as_secs_f64(),
    }))
}

/// Why the load falls back, when PostgreSQL refused the data; any other failure is an error.
fn refusal(error: sqlx::Error, what: &str) -> anyhow::Result<String> {
    let error = ApplyError::from(error);
    match error.is_data() {
        true => Ok(format!("PostgreSQL refused {what}: {error}")),
        false => Err(error.into()),
    }
}

struct Streamed {
    fold: LogFold,
    events: u64,
    parked: Vec<Parked>,
    parked_set: ParkedSet,
}

/// Folds every batch and streams its history rows in one `COPY`. `Ok(Err(why))`: the log
/// needs the batch-by-batch rebuild.
async fn stream_history(
    conn: &mut PgConnection,
    schema: &str,
    mut batches: mpsc::Receiver<Batch>,
    progress: &ProgressBar,
) -> anyhow::Result<Result<Streamed, String>> {
    // Truncated in the COPY's own transaction, the table takes the rows frozen and all
    // visible (`FREEZE`): nothing is left for a first reader to mark (the comparison reads
    // every row next) nor for autovacuum to visit after the swap.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(&format!("TRUNCATE {schema}.product_events"))
        .execute(&mut *tx)
        .await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY {schema}.product_events ({HISTORY_COLUMNS}) FROM STDIN (FORMAT binary, FREEZE)"
        ))
        .await?;
    let mut rows = CopyRows::new(HISTORY_TYPES);
    let mut streamed = Streamed {
        fold: LogFold::default(),
        events: 0,
        parked: Vec::new(),
        parked_set: ParkedSet::default(),
    };
    while let Some(batch) = batches.recv().await {
        let batch = set_aside(&batch, &streamed.parked_set).unwrap_or(batch);
        for record in &batch.records {
            if let Err(why) = streamed.fold.apply(&record.event) {
                copy.abort(why.to_string()).await.ok();
                return Ok(Err(why.to_string()));
            }
            history_row(&mut rows, record)
                .map_err(|e| anyhow::anyhow!("encoding a history row: {e}"))?;
        }
        for entry in &batch.parked {
            streamed.parked_set.insert(&entry.product_id);
        }
        streamed.parked.extend(batch.parked.iter().cloned());
        crate::rebuild::count(&batch, &mut streamed.events, progress);
        if rows.len() >= CHUNK {
            if let Err(error) = copy.send(rows.take()).await {
                return refused(error);
            }
        }
    }
    if let Err(error) = copy.send(rows.finish()).await {
        return refused(error);
    }
    if let Err(error) = copy.finish().await {
        return refused(error);
    }
    tx.commit().await?;
    Ok(Ok(streamed))
}

fn refused(error: sqlx::Error) -> anyhow::Result<Result<Streamed, String>> {
    refusal(error, "a history row").map(Err)
}

/// The products (one `COPY`), seller stats, event counts, parked records and offsets.
async fn write_rows(
    conn: &mut PgConnection,
    target: &Target<'_>,
    folded: &FoldedLog,
    parked: &[Parked],
    next: &Offsets,
) -> Result<(), sqlx::Error> {
    static COLUMNS: &[Type] = &[
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::BOOL,
        Type::INT8,
    ];
    let s = target.schema;
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {s}.products (id, name, price_cents, stock, seller_id, version, updated_at, \
             deleted, low_stock_threshold) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut rows = CopyRows::new(COLUMNS);
    for p in &folded.products {
        rows.row(&[
            &p.id.as_str(),
            &p.name.as_deref(),
            &p.price_cents,
            &p.stock,
            &p.seller_id.as_deref(),
            &p.version,
            &p.updated_at,
            &p.deleted,
            &p.low_stock_threshold,
        ])
        .map_err(sqlx::Error::Encode)?;
        if rows.len() >= CHUNK {
            copy.send(rows.take()).await?;
        }
    }
    copy.send(rows.finish()).await?;
    copy.finish().await?;
    crate::apply::add_seller_deltas(conn, s, &folded.sellers).await?;
    crate::apply::add_event_counts(conn, s, &folded.event_counts).await?;
    let parked: Vec<&Parked> = parked.iter().collect();
    crate::apply::insert_parked(conn, target, &parked).await?;
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().unzip();
    sqlx::query(&format!(
        "INSERT INTO {s}.consumer_offsets (consumer_group, topic, partition, next_offset)
         SELECT $1, $2, * FROM UNNEST($3::int4[], $4::int8[])"
    ))
    .bind(target.group)
    .bind(target.topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The keys and indexes of some tables, as the migrations made them, taken off for a load
/// and put back after it: built once from all rows, not maintained row by row.
struct Deferred {
    /// `ALTER TABLE … ADD CONSTRAINT …` (primary keys and unique constraints).
    constraints: Vec<String>,
    /// `CREATE INDEX …` of the indexes no constraint owns.
    indexes: Vec<String>,
}

impl Deferred {
    async fn take_off(
        conn: &mut PgConnection,
        schema: &str,
        tables: &[&str],
    ) -> Result<Deferred, sqlx::Error> {
        let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let constraints: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT t.oid::regclass::text, c.conname::text, pg_get_constraintdef(c.oid)
             FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             WHERE n.nspname = $1 AND t.relname = ANY($2) AND c.contype IN ('p', 'u')",
        )
        .bind(schema)
        .bind(&tables)
        .fetch_all(&mut *conn)
        .await?;
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             WHERE n.nspname = $1 AND t.relname = ANY($2)
             AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        )
        .bind(schema)
        .bind(&tables)
        .fetch_all(&mut *conn)
        .await?;
        for (table, name, _) in &constraints {
            sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"))
                .execute(&mut *conn)
                .await?;
        }
        for (index, _) in &indexes {
            sqlx::query(&format!("DROP INDEX {index}"))
                .execute(&mut *conn)
                .await?;
        }
        Ok(Deferred {
            constraints: constraints
                .into_iter()
                .map(|(table, name, def)| {
                    format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}")
                })
                .collect(),
            indexes: indexes.into_iter().map(|(_, def)| def).collect(),
        })
    }

    async fn put_back(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        // Sorting and building a key of a million rows wants more than the default 64 MB.
        sqlx::query("SET maintenance_work_mem = '512MB'")
            .execute(&mut *conn)
            .await?;
        for statement in self.constraints.iter().chain(&self.indexes) {
            sqlx::query(statement).execute(&mut *conn).await?;
        }
        sqlx::query("RESET maintenance_work_mem")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
