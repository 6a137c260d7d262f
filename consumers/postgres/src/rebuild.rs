//! Zero-downtime rebuild (`foldline-projector replay`): fold the log into a new (shadow)
//! model schema while the live one keeps answering, catch up to the tail while holding the
//! swap lock, swap the pointer in the same transaction, then drop the old schema.
//!
//! Before the swap, the new model is compared with the live one ([`crate::compare`]): the
//! bulk at a snapshot before the lock is taken, what changed since under it; it goes live
//! only when they are equal, or when forced.
//!
//! The events come from an [`EventSource`]: the topic (the runtime's `TopicSource`), or the
//! S3 archive followed by the topic (the archive crate's `ArchiveThenTopic`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use foldline_consumer_runtime::history::EventSource;
use foldline_consumer_runtime::parking::{set_aside, ParkedSet};
use foldline_consumer_runtime::{Batch, Parked};
use foldline_service::position::Offsets;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgConnection;
use tokio::sync::mpsc;

use crate::apply::{apply_batch, Applied, ApplyError, Target};
use crate::bulk::Loaded;
use crate::compare::{compare, Comparison, Scope};
use crate::leftovers::Claims;
use crate::model::{new_schema_name, ReadModel, META_SCHEMA};

#[derive(Debug, Clone)]
pub struct RebuildConfig {
    pub log: foldline_service::config::EventLog,
    pub group: String,
    pub low_stock_threshold: i64,
    pub batch_records: usize,
    /// How long the old schema stays after the swap, for reads that began before it.
    pub drop_grace: Duration,
    pub show_progress: bool,
    /// Swap even when the new model differs from the live one.
    pub force: bool,
    /// Load the bulk with `COPY` from an in-memory fold ([`crate::bulk`]); false: batch by
    /// batch, as the live projector writes.
    pub bulk: bool,
}

/// The new model differed from the live one and was not swapped in (nor kept).
#[derive(Debug, thiserror::Error)]
#[error("the rebuilt model differs from the live one ({} differences): not swapped in", .comparison.differences)]
pub struct Refused {
    pub comparison: Comparison,
}

#[derive(Debug)]
pub struct RebuildReport {
    pub events: u64,
    /// Products whose records the new model keeps parked.
    pub parked: usize,
    pub dead: u64,
    pub elapsed: Duration,
    /// How long the swap lock was held (the live projector's pause): the tail, the
    /// comparison's second step, the swap.
    pub locked: Duration,
    pub old_schema: String,
    pub new_schema: String,
    pub comparison: Comparison,
    /// How the bulk was loaded: `Some` by the bulk load ([`crate::bulk`]).
    pub bulk: Option<BulkTimings>,
    /// Why the bulk load gave way to the batch-by-batch rebuild, when it did.
    pub fell_back: Option<String>,
    /// Model schemas killed rebuilds had left, dropped before this one began.
    pub left_over: Vec<String>,
}

/// Where the bulk load's time went.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BulkTimings {
    pub read_seconds: f64,
    pub rows_seconds: f64,
    pub index_seconds: f64,
}

/// What phase 1 leaves: the events read, the products parked, where the read ended.
#[derive(Default)]
struct FirstPhase {
    events: u64,
    parked: ParkedSet,
    next: Offsets,
    bulk: Option<BulkTimings>,
    fell_back: Option<String>,
}

/// Phase 1 batch by batch, one transaction each, parking as the live projector does.
async fn in_batches<S: EventSource + Send>(
    model: &ReadModel,
    target: &Target<'_>,
    source: &mut S,
    progress: &ProgressBar,
) -> anyhow::Result<FirstPhase> {
    let mut phase = FirstPhase::default();
    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let start = Offsets::new();
    let read = source.read(&start, tx);
    let write = async {
        while let Some(batch) = rx.recv().await {
            let mut conn = model.pool.begin().await?;
            apply_or_park(&mut conn, target, &batch, &mut phase.parked).await?;
            conn.commit().await?;
            count(&batch, &mut phase.events, progress);
        }
        Ok::<_, anyhow::Error>(())
    };
    let (next, written) = tokio::join!(read, write);
    written?;
    phase.next = next?;
    Ok(phase)
}

/// Rebuilds the read model from `source` into a new schema and swaps it in.
pub async fn rebuild<S: EventSource + Send>(
    model: &ReadModel,
    config: &RebuildConfig,
    mut source: S,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let old_schema = model.bootstrap().await?;
    let left_over = crate::leftovers::drop_left_over(model).await?;
    // Claimed before created: no other rebuild's clean-up can take it for a leftover.
    let mut claims = Claims::open(model).await?;
    claims.claim(&old_schema).await?;
    let new_schema = new_schema_name();
    claims.claim(&new_schema).await?;
    model.create_model(&new_schema).await?;
    tracing::info!(%old_schema, %new_schema, "rebuild: building a new model schema");
    let progress = progress_bar(model, config, &old_schema).await;
    let target = Target {
        schema: &new_schema,
        group: &config.group,
        topic: &config.log.topic,
        low_stock_threshold: config.low_stock_threshold,
    };
    // Phase 1: the bulk into the new schema, while the live model keeps serving.
    let mut phase = FirstPhase::default();
    // What a bulk load that gave way had counted: the batch-by-batch pass reads the same
    // records again, and counts them again.
    let mut undecodable_before_fallback = 0;
    if config.bulk {
        let mut conn = model.pool.acquire().await?;
        match crate::bulk::load(&mut conn, &target, &mut source, &progress).await? {
            Loaded::Done(report) => {
                tracing::info!(
                    events = report.events,
                    products = report.products,
                    read_seconds = report.read_seconds,
                    rows_seconds = report.rows_seconds,
                    index_seconds = report.index_seconds,
                    "rebuild: bulk load done"
                );
                phase.events = report.events;
                phase.next = report.next;
                phase.parked = report.parked;
                phase.bulk = Some(BulkTimings {
                    read_seconds: report.read_seconds,
                    rows_seconds: report.rows_seconds,
                    index_seconds: report.index_seconds,
                });
            }
            Loaded::FellBack(why) => {
                tracing::warn!(%why, "rebuild: the log needs the batch-by-batch rebuild; starting again");
                // The connection may be mid-COPY: closed, not returned to the pool.
                conn.close_on_drop();
                drop(conn);
                model.drop_model(&new_schema).await?;
                model.create_model(&new_schema).await?;
                progress.reset();
                undecodable_before_fallback = source.undecodable();
                phase = in_batches(model, &target, &mut source, &progress).await?;
                phase.fell_back = Some(why);
            }
        }
    } else {
        phase = in_batches(model, &target, &mut source, &progress).await?;
    }
    let FirstPhase {
        mut events,
        mut parked,
        next,
        bulk,
        fell_back,
    } = phase;

    // Phase 2: compare the bulk at a snapshot, outside the lock: the live projector goes on.
    let (snapshot_live, snapshot) = compare_at_snapshot(model, config, &new_schema).await?;
    tracing::info!(summary = %snapshot.summary(), "rebuild: compared at a snapshot");
    if !snapshot.equal() && !config.force {
        progress.finish_and_clear();
        model.drop_model(&new_schema).await?;
        return Err(Refused {
            comparison: snapshot,
        }
        .into());
    }

    // Phase 3: under the swap lock (the live projector waits), read what arrived meanwhile,
    // compare what changed since the snapshot, then point readers and the projector at the
    // new schema, all in one transaction.
    let mut swap = model.pool.begin().await?;
    let live: String = sqlx::query_scalar(&format!(
        "SELECT schema_name FROM {META_SCHEMA}.active_model FOR UPDATE"
    ))
    .fetch_one(&mut *swap)
    .await?;
    let locked_at = Instant::now();
    crate::model::check_schema_name(&live)?;
    if live != snapshot_live {
        swap.rollback().await?;
        model.drop_model(&new_schema).await?;
        anyhow::bail!(
            "the live model changed from {snapshot_live} to {live} during the rebuild \
             (another rebuild swapped it): not swapped in"
        );
    }
    // The products of every record read after the snapshot: with those step 1 left out, the
    // only ones whose rows may have changed since in either model.
    let mut touched: HashSet<String> = snapshot.left_out.iter().cloned().collect();
    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let read = source.read(&next, tx);
    let write = async {
        while let Some(batch) = rx.recv().await {
            touched.extend(batch.records.iter().map(|r| r.event.product_id.clone()));
            touched.extend(batch.parked.iter().map(|p| p.product_id.clone()));
            apply_or_park(&mut swap, &target, &batch, &mut parked).await?;
            count(&batch, &mut events, &progress);
        }
        Ok::<_, anyhow::Error>(())
    };
    let (tail, written) = tokio::join!(read, write);
    written?;
    tail?;
    progress.finish_and_clear();

    // The live projector waits on the lock: both models stand still while they are compared.
    let recheck: Vec<String> = touched
        .into_iter()
        .filter(|id| !id.contains('\0'))
        .collect();
    let locked = compare(
        &mut swap,
        &live,
        &new_schema,
        &config.group,
        &config.log.topic,
        Scope::Locked { recheck: &recheck },
    )
    .await?;
    let comparison = snapshot.then(locked);
    tracing::info!(summary = %comparison.summary(), "rebuild: compared with the live model");
    if !comparison.equal() {
        if !config.force {
            swap.rollback().await?;
            model.drop_model(&new_schema).await?;
            return Err(Refused { comparison }.into());
        }
        tracing::warn!(
            differences = comparison.differences,
            "rebuild: swapping in a model that differs (--force)"
        );
    }
    swap_to(&mut swap, &new_schema).await?;
    swap.commit().await?;
    let locked = locked_at.elapsed();
    tracing::info!(%new_schema, events, "rebuild: swapped in the new model");

    tokio::time::sleep(config.drop_grace).await;
    model.drop_model(&live).await?;
    if !parked.is_empty() {
        tracing::warn!(
            products = parked.len(),
            "rebuild: products parked (see `foldline parked list`)"
        );
    }
    Ok(RebuildReport {
        parked: parked.len(),
        events,
        dead: source.undecodable() - undecodable_before_fallback,
        elapsed: started.elapsed(),
        locked,
        old_schema: live,
        new_schema,
        comparison,
        bulk,
        fell_back,
        left_over,
    })
}

/// Step 1 of the comparison ([`crate::compare`]) in a `REPEATABLE READ` transaction of its
/// own: the live model as one snapshot, its rows and offsets together. Returns the live
/// schema it compared with.
async fn compare_at_snapshot(
    model: &ReadModel,
    config: &RebuildConfig,
    new_schema: &str,
) -> anyhow::Result<(String, Comparison)> {
    let mut snapshot = model.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *snapshot)
        .await?;
    let live: String = sqlx::query_scalar(&format!(
        "SELECT schema_name FROM {META_SCHEMA}.active_model"
    ))
    .fetch_one(&mut *snapshot)
    .await?;
    crate::model::check_schema_name(&live)?;
    let comparison = compare(
        &mut snapshot,
        &live,
        new_schema,
        &config.group,
        &config.log.topic,
        Scope::Snapshot,
    )
    .await?;
    // It wrote only temporary tables.
    snapshot.rollback().await?;
    Ok((live, comparison))
}

/// Applies `batch` as the projector would, parking as it would: the records of parked
/// products are set aside, and when PostgreSQL refuses the data the batch is applied record by
/// record (each under a savepoint) and each refused record's product is parked.
async fn apply_or_park(
    conn: &mut PgConnection,
    target: &Target<'_>,
    batch: &Batch,
    parked: &mut ParkedSet,
) -> anyhow::Result<()> {
    let whole = set_aside(batch, parked).unwrap_or_else(|| batch.clone());
    match under_savepoint(conn, target, &whole).await {
        Ok(applied) => return note(expect_done(applied), &whole, parked),
        Err(error) if error.is_data() => {}
        Err(error) => return Err(error.into()),
    }
    for piece in batch.split() {
        let mut piece = set_aside(&piece, parked).unwrap_or(piece);
        loop {
            match under_savepoint(conn, target, &piece).await {
                Ok(applied) => {
                    note(expect_done(applied), &piece, parked)?;
                    break;
                }
                Err(error) if error.is_data() => {
                    let record = piece
                        .records
                        .pop()
                        .ok_or_else(|| anyhow::anyhow!("parking refused by PostgreSQL: {error}"))?;
                    tracing::warn!(product = %record.event.product_id, offset = record.offset,
                        %error, "rebuild: record refused, product parked");
                    piece.parked.push(Parked::of(&record, format!("{error:#}")));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

fn note(done: anyhow::Result<()>, batch: &Batch, parked: &mut ParkedSet) -> anyhow::Result<()> {
    done?;
    for entry in &batch.parked {
        parked.insert(&entry.product_id);
    }
    Ok(())
}

async fn under_savepoint(
    conn: &mut PgConnection,
    target: &Target<'_>,
    batch: &Batch,
) -> Result<Applied, ApplyError> {
    sqlx::query("SAVEPOINT rebuild_batch")
        .execute(&mut *conn)
        .await?;
    match apply_batch(conn, target, batch).await {
        Ok(applied) => {
            sqlx::query("RELEASE SAVEPOINT rebuild_batch")
                .execute(&mut *conn)
                .await?;
            Ok(applied)
        }
        Err(error) => {
            sqlx::query("ROLLBACK TO SAVEPOINT rebuild_batch")
                .execute(&mut *conn)
                .await?;
            Err(error)
        }
    }
}

fn expect_done(applied: Applied) -> anyhow::Result<()> {
    match applied {
        Applied::Done => Ok(()),
        // A fresh schema read from the start has nothing to disagree with.
        Applied::Reseek(at) => anyhow::bail!("rebuild read out of order at {at}"),
    }
}

pub(crate) fn count(batch: &Batch, events: &mut u64, progress: &ProgressBar) {
    let offsets: i64 = batch
        .ranges
        .values()
        .map(|(first, last)| last - first + 1)
        .sum();
    *events += batch.records.len() as u64;
    progress.inc(offsets as u64);
}

async fn swap_to(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE {META_SCHEMA}.active_model SET schema_name = $1, swapped_at = now()"
    ))
    .bind(schema)
    .execute(&mut *conn)
    .await?;
    // Delivered at commit: query APIs switch to the new schema at once.
    crate::model::notify_progress(conn).await?;
    Ok(())
}

/// The live model's offsets tell how far the log reaches (watermarks are not trusted: tansu
/// reports wrong ones), which gives the progress bar its length and ETA.
async fn progress_bar(model: &ReadModel, config: &RebuildConfig, live: &str) -> ProgressBar {
    let total: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT sum(next_offset)::bigint FROM {live}.consumer_offsets WHERE topic = $1"
    ))
    .bind(&config.log.topic)
    .fetch_one(&model.pool)
    .await
    .unwrap_or(None);
    if !config.show_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.unwrap_or(0).max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("replay {bar:40} {pos}/{len} records  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    bar
}
