//! Before a rebuild swaps its new model in, it compares it with the model serving reads, in
//! two steps so the live projector waits only for the second:
//!
//! 1. [`Scope::Snapshot`], outside the swap lock, in one `REPEATABLE READ` transaction while
//!    the live projector goes on: the cut is each partition's lower next offset of the two
//!    models (both fold the same log up to it); every product row and every history row before
//!    the cut, except products *parked* in either model and products with events past the cut
//!    in either model. Those left out are handed to step 2 by id.
//! 2. [`Scope::Locked`], under the swap lock (the live model stands still; the new one has
//!    read at least as far), at the live model's own offsets: the products left out by step 1
//!    and those the log touched since (the ids of the records the rebuild read after step 1's
//!    snapshot), every seller's stats and the event counts (small tables). A product in
//!    neither set has had no event and no parking since step 1 in either model, so step 1's
//!    answer for it still holds.
//!
//! What is compared, in SQL:
//! - product rows, except products parked in either model (reported, not compared: a parked
//!   record may be applied, dropped or parked again) and products with events past the cut
//!   (*ahead*: compared by their history before the cut);
//! - history rows (`product_events`) before the cut, parked products excepted, from where the
//!   live model's history starts (a model made before history existed starts later);
//! - seller stats, except sellers of parked or ahead products;
//! - event counts, less the events of parked and ahead products (from each model's history).
//!
//! Rows are compared as JSON (`to_jsonb`), so every column counts.

use foldline_schemas::read::current_payload_json;
use sqlx::{PgConnection, Row};

/// How many differences are kept to print.
const FIRST: i64 = 20;

/// Two rows that should be equal and are not (either may be missing).
#[derive(Debug, Clone)]
pub struct Difference {
    pub table: &'static str,
    /// The product (or seller, or event type and hour) the rows belong to.
    pub key: String,
    pub live: Option<String>,
    pub new: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |row: &Option<String>| row.clone().unwrap_or_else(|| "(none)".into());
        write!(
            f,
            "{} {}: live {} / new {}",
            self.table,
            self.key,
            shown(&self.live),
            shown(&self.new)
        )
    }
}

#[derive(Debug, Default, Clone)]
pub struct Comparison {
    /// False when the live model has not read this topic (a first model, or a rebuild of
    /// another topic): there is no cut to compare at.
    pub compared: bool,
    /// Products and history events compared at the snapshot (step 1).
    pub products: i64,
    pub history_events: i64,
    /// Products compared again under the swap lock (step 2: left out at the snapshot, or
    /// touched since), and their history events.
    pub rechecked: i64,
    pub rechecked_history_events: i64,
    pub sellers: i64,
    /// Products parked in either model, not compared.
    pub parked: i64,
    /// Products with events past the cut in the new model: their rows are not compared, their
    /// history before the cut is.
    pub ahead: i64,
    /// False when the live model's history starts late (made before history existed) and
    /// event counts could not be adjusted for the products left out.
    pub event_counts_compared: bool,
    /// Rows found different, in either step (a product different in both counts twice).
    pub differences: i64,
    /// How long step 1 took (outside the lock: the live projector goes on).
    pub snapshot_seconds: f64,
    /// How long step 2 took (the live projector waits meanwhile).
    pub seconds: f64,
    /// The first differences, by table and key.
    pub first: Vec<Difference>,
    /// The ids step 1 left out, for step 2 to compare.
    pub left_out: Vec<String>,
    /// True when step 2 ran (a model that differs at the snapshot is refused without it).
    pub locked_step: bool,
}

impl Comparison {
    pub fn equal(&self) -> bool {
        self.differences == 0
    }

    /// Step 1's comparison followed by step 2's (`locked`).
    pub fn then(self, locked: Comparison) -> Comparison {
        let mut first = self.first;
        first.extend(locked.first);
        first.truncate(FIRST as usize);
        Comparison {
            compared: self.compared && locked.compared,
            products: self.products,
            history_events: self.history_events,
            rechecked: locked.rechecked,
            rechecked_history_events: locked.rechecked_history_events,
            sellers: locked.sellers,
            parked: locked.parked,
            ahead: locked.ahead,
            event_counts_compared: locked.event_counts_compared,
            differences: self.differences + locked.differences,
            snapshot_seconds: self.snapshot_seconds,
            seconds: locked.seconds,
            first,
            left_out: Vec::new(),
            locked_step: true,
        }
    }

    pub fn summary(&self) -> String {
        if !self.compared {
            return "not compared: the live model has not read this topic".into();
        }
        if !self.locked_step {
            return format!(
                "compared with the live model at a snapshot in {:.1} s (the live projector going \
                 on): {} products, {} history events; {} parked products and {} products with \
                 events past the cut left out; {} differences",
                self.snapshot_seconds,
                self.products,
                self.history_events,
                self.parked,
                self.ahead,
                self.differences
            );
        }
        format!(
            "compared with the live model: at a snapshot in {:.1} s (the live projector going \
             on), {} products and {} history events; under the swap lock in {:.1} s, at the \
             live model's offsets, {} products left out or touched since and {} of their \
             history events, {} sellers{}; {} parked products left out, {} products with \
             events past the cut compared by their history; {} differences",
            self.snapshot_seconds,
            self.products,
            self.history_events,
            self.seconds,
            self.rechecked,
            self.rechecked_history_events,
            self.sellers,
            if self.event_counts_compared {
                ", event counts"
            } else {
                " (event counts not compared: the live history starts late)"
            },
            self.parked,
            self.ahead,
            self.differences
        )
    }
}

/// Which rows a comparison reads (see the module's documentation).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Step 1: products and history, at the snapshot of the caller's `REPEATABLE READ`
    /// transaction, cut at each partition's lower offset of the two models.
    Snapshot,
    /// Step 2, under the swap lock: the products in `recheck`, every seller, the event counts,
    /// cut at the live model's offsets.
    Locked { recheck: &'a [String] },
}

/// Compares model schemas `live` and `new` (both already checked names) within `scope`, at
/// the cut of `group` on `topic`. Temporary tables go with the transaction.
pub async fn compare(
    conn: &mut PgConnection,
    live: &str,
    new: &str,
    group: &str,
    topic: &str,
    scope: Scope<'_>,
) -> Result<Comparison, sqlx::Error> {
    // The history join holds a million rows a side: with the default 4 MB it spills to disk
    // in many batches. For this transaction only.
    // JIT compiling these one-off queries cost more than it saved (0.4 s of 1.4 s).
    for setting in ["SET LOCAL work_mem = '256MB'", "SET LOCAL jit = off"] {
        sqlx::query(setting).execute(&mut *conn).await?;
    }
    let cut_rows: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {live}.consumer_offsets WHERE consumer_group = $1 AND topic = $2"
    ))
    .bind(group)
    .bind(topic)
    .fetch_one(&mut *conn)
    .await?;
    if cut_rows == 0 {
        return Ok(Comparison::default());
    }
    let started = std::time::Instant::now();
    let locked = matches!(scope, Scope::Locked { .. });
    let recheck: &[String] = match scope {
        Scope::Locked { recheck } => recheck,
        Scope::Snapshot => &[],
    };
    // Step 2 reads only the products to recheck (by their primary keys), step 1 every one.
    let only = |column: &str| {
        if locked {
            format!(" AND {column} IN (SELECT id FROM compare_recheck)")
        } else {
            String::new()
        }
    };
    let offsets = |schema: &str| {
        format!(
            "SELECT partition, next_offset FROM {schema}.consumer_offsets
             WHERE consumer_group = $1 AND topic = $2"
        )
    };
    let cut = if locked {
        offsets(live)
    } else {
        // Both models have folded the log up to the lower of their offsets.
        format!(
            "SELECT partition, least(coalesce(l.next_offset, 0), coalesce(n.next_offset, 0))
                    AS next_offset
             FROM ({}) l FULL JOIN ({}) n USING (partition)",
            offsets(live),
            offsets(new)
        )
    };
    // Products with events past the cut: in the new model under the lock (the live one has
    // read no further than the cut), in either at the snapshot.
    let past_cut = |schema: &str| {
        format!(
            "SELECT convert_to(e.product_id, 'UTF8') FROM {schema}.product_events e
             LEFT JOIN compare_cut c USING (partition)
             WHERE e.\"offset\" >= coalesce(c.next_offset, 0){}",
            only("e.product_id")
        )
    };
    let ahead = if locked {
        past_cut(new)
    } else {
        format!("{} UNION {}", past_cut(live), past_cut(new))
    };
    let setup = [
        "CREATE TEMP TABLE compare_recheck ON COMMIT DROP AS
         SELECT DISTINCT unnest($1::text[]) AS id"
            .to_string(),
        "ANALYZE compare_recheck".to_string(),
        format!(
            "CREATE TEMP TABLE compare_cut ON COMMIT DROP AS
             SELECT c.partition, c.next_offset, coalesce(h.first_offset, 0) AS history_from
             FROM ({cut}) c
             LEFT JOIN {live}.history_starts h
                 ON h.consumer_group = $1 AND h.topic = $2 AND h.partition = c.partition"
        ),
        format!(
            "CREATE TEMP TABLE compare_parked ON COMMIT DROP AS
             SELECT product_id AS id FROM {live}.parked_events
             WHERE consumer_group = $1 AND topic = $2
             UNION SELECT product_id FROM {new}.parked_events
             WHERE consumer_group = $1 AND topic = $2"
        ),
        // Unanalyzed, a temporary table is planned as 1,700 rows: the cut's three rows then
        // had a million history rows sorted (on disk) to merge-join with them.
        "ANALYZE compare_cut, compare_parked".to_string(),
        // Parked or ahead, as bytes (a parked id may hold a NUL, which text cannot).
        format!(
            "CREATE TEMP TABLE compare_left_out ON COMMIT DROP AS
             SELECT id FROM compare_parked UNION {ahead}"
        ),
        "ANALYZE compare_left_out".to_string(),
        format!(
            "CREATE TEMP TABLE compare_sellers_left_out ON COMMIT DROP AS
             SELECT p.seller_id FROM {live}.products p
             JOIN compare_left_out x ON x.id = convert_to(p.id, 'UTF8') WHERE true{only_p}
             UNION SELECT p.seller_id FROM {new}.products p
             JOIN compare_left_out x ON x.id = convert_to(p.id, 'UTF8') WHERE true{only_p}",
            only_p = only("p.id")
        ),
    ];
    for (i, statement) in setup.iter().enumerate() {
        let query = sqlx::query(statement);
        // The first binds the ids to recheck, the cut and the parked read this group's rows.
        let query = match i {
            0 => query.bind(recheck),
            2 | 3 => query.bind(group).bind(topic),
            _ => query,
        };
        query.execute(&mut *conn).await?;
    }
    let scalar = async |conn: &mut PgConnection, sql: String| -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(&sql).fetch_one(conn).await
    };
    let not_left_out = "NOT EXISTS (SELECT 1 FROM compare_left_out x
                                    WHERE x.id = convert_to(l.id, 'UTF8'))";
    let compared_products = scalar(
        conn,
        format!(
            "SELECT count(*) FROM {live}.products l WHERE {not_left_out}{}",
            only("l.id")
        ),
    )
    .await?;
    let mut comparison = Comparison {
        compared: true,
        parked: scalar(conn, "SELECT count(*) FROM compare_parked".into()).await?,
        ahead: scalar(
            conn,
            "SELECT count(*) FROM compare_left_out
             WHERE id NOT IN (SELECT id FROM compare_parked)"
                .into(),
        )
        .await?,
        ..Comparison::default()
    };
    if locked {
        comparison.rechecked = compared_products;
        comparison.sellers = scalar(
            conn,
            format!(
                "SELECT count(*) FROM {live}.seller_stats l
                 WHERE l.seller_id NOT IN (SELECT seller_id FROM compare_sellers_left_out
                                           WHERE seller_id IS NOT NULL)"
            ),
        )
        .await?;
    } else {
        comparison.products = compared_products;
        // Step 2 compares these: ids that are text (a parked id with a NUL has no rows).
        let ids: Vec<Vec<u8>> = sqlx::query_scalar("SELECT id FROM compare_left_out")
            .fetch_all(&mut *conn)
            .await?;
        comparison.left_out = ids
            .into_iter()
            .filter_map(|id| String::from_utf8(id).ok())
            .filter(|id| !id.contains('\0'))
            .collect();
    }
    let history_complete: bool = scalar(
        conn,
        "SELECT count(*) FROM compare_cut WHERE history_from > 0".into(),
    )
    .await?
        == 0;
    comparison.event_counts_compared =
        locked && (history_complete || comparison.parked + comparison.ahead == 0);

    let rows_of = |schema: &str| {
        format!(
            "SELECT * FROM {schema}.products p WHERE true{}",
            only("p.id")
        )
    };
    let products = format!(
        "SELECT coalesce(l.id, n.id) AS key, to_jsonb(l)::text AS live, to_jsonb(n)::text AS new
         FROM ({}) l FULL JOIN ({}) n ON n.id = l.id
         WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(n)
         AND NOT EXISTS (SELECT 1 FROM compare_left_out x
                         WHERE x.id = convert_to(coalesce(l.id, n.id), 'UTF8'))",
        rows_of(live),
        rows_of(new)
    );
    // Without parked products the filter is left out: it cost a byte conversion per row.
    let not_parked = match comparison.parked {
        0 => "",
        _ => {
            " AND NOT EXISTS (SELECT 1 FROM compare_parked x
                               WHERE x.id = convert_to(e.product_id, 'UTF8'))"
        }
    };
    let before_cut = |schema: &str| {
        format!(
            "SELECT e.* FROM {schema}.product_events e JOIN compare_cut c USING (partition)
             WHERE e.\"offset\" < c.next_offset AND e.\"offset\" >= c.history_from{not_parked}{}",
            only("e.product_id")
        )
    };
    let history_events = scalar(
        conn,
        format!("SELECT count(*) FROM ({}) l", before_cut(live)),
    )
    .await?;
    if locked {
        comparison.rechecked_history_events = history_events;
    } else {
        comparison.history_events = history_events;
    }
    let history = format!(
        "WITH l AS ({}), n AS ({})
         SELECT coalesce(l.product_id, n.product_id) || ' v' || coalesce(l.version, n.version)
                    AS key,
                to_jsonb(l)::text AS live, to_jsonb(n)::text AS new
         FROM l FULL JOIN n ON n.product_id = l.product_id AND n.version = l.version
         -- Rows compared as rows (jsonb by its own equality); only a pair that differs is
         -- turned into JSON: building JSON of every row cost more than the join.
         WHERE (l.*) IS DISTINCT FROM (n.*)",
        before_cut(live),
        before_cut(new)
    );
    let sellers = format!(
        "SELECT coalesce(l.seller_id, n.seller_id) AS key,
                to_jsonb(l)::text AS live, to_jsonb(n)::text AS new
         FROM {live}.seller_stats l FULL JOIN {new}.seller_stats n ON n.seller_id = l.seller_id
         WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(n)
         AND coalesce(l.seller_id, n.seller_id) NOT IN
             (SELECT seller_id FROM compare_sellers_left_out WHERE seller_id IS NOT NULL)"
    );
    // Each model's counts less its own history's events of the products left out (every one
    // of which step 2 rechecks, so its history is read by primary key).
    let adjusted = |schema: &str| {
        format!(
            "SELECT c.event_type, c.hour, c.events - coalesce(x.events, 0) AS events
             FROM {schema}.event_counts c LEFT JOIN (
                 SELECT e.event_type, date_trunc('hour', e.occurred_at, 'UTC') AS hour,
                        count(*) AS events
                 FROM {schema}.product_events e
                 JOIN compare_left_out o ON o.id = convert_to(e.product_id, 'UTF8')
                 WHERE true{}
                 GROUP BY 1, 2) x ON x.event_type = c.event_type AND x.hour = c.hour",
            only("e.product_id")
        )
    };
    let event_counts = format!(
        "WITH l AS ({}), n AS ({})
         SELECT coalesce(l.event_type, n.event_type) || ' ' ||
                    to_char(coalesce(l.hour, n.hour) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24\"Z\"')
                    AS key,
                l.events::text AS live, n.events::text AS new
         FROM l FULL JOIN n ON n.event_type = l.event_type AND n.hour = l.hour
         WHERE coalesce(l.events, 0) <> coalesce(n.events, 0)",
        adjusted(live),
        adjusted(new)
    );
    let mut checks = vec![("products", products), ("product_events", history)];
    if locked {
        checks.push(("seller_stats", sellers));
    }
    if comparison.event_counts_compared {
        checks.push(("event_counts", event_counts));
    }
    for (table, sql) in checks {
        if table == "product_events" {
            history_differences(conn, &sql, &mut comparison).await?;
            continue;
        }
        let rows = sqlx::query(&format!(
            "SELECT key, live, new, count(*) OVER () AS total FROM ({sql}) d
             ORDER BY key LIMIT {FIRST}"
        ))
        .fetch_all(&mut *conn)
        .await?;
        if let Some(first) = rows.first() {
            comparison.differences += first.try_get::<i64, _>("total")?;
        }
        for row in rows {
            if comparison.first.len() < FIRST as usize {
                comparison.first.push(Difference {
                    table,
                    key: row.try_get("key")?,
                    live: row.try_get("live")?,
                    new: row.try_get("new")?,
                });
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if locked {
        comparison.seconds = seconds;
    } else {
        comparison.snapshot_seconds = seconds;
    }
    Ok(comparison)
}

/// The history rows that differ: SQL finds the rows whose stored JSON differs; a row differs
/// only if it still does once both payloads are read in the current shape — the live model
/// keeps payloads as the version that projected them wrote them (before 2026-12-07 without
/// `previous_stock`), a rebuilt one as the current version writes them, and both hold the same
/// event ([`current_payload_json`], the readers' own upcast).
async fn history_differences(
    conn: &mut PgConnection,
    sql: &str,
    comparison: &mut Comparison,
) -> Result<(), sqlx::Error> {
    use futures::TryStreamExt;
    let query = format!("SELECT key, live, new FROM ({sql}) d ORDER BY key");
    let mut rows = sqlx::query(&query).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let live: Option<String> = row.try_get("live")?;
        let new: Option<String> = row.try_get("new")?;
        if same_event(live.as_deref(), new.as_deref()) {
            continue;
        }
        comparison.differences += 1;
        if comparison.first.len() < FIRST as usize {
            comparison.first.push(Difference {
                table: "product_events",
                key: row.try_get("key")?,
                live,
                new,
            });
        }
    }
    Ok(())
}

/// Whether two history rows (as JSON) are the same event, their payloads read in the
/// current shape.
fn same_event(live: Option<&str>, new: Option<&str>) -> bool {
    let current = |row: &str| -> Option<serde_json::Value> {
        let mut row: serde_json::Value = serde_json::from_str(row).ok()?;
        let event_type = row["event_type"].as_str()?.to_owned();
        row["payload"] = current_payload_json(&event_type, &row["payload"]);
        Some(row)
    };
    match (live.and_then(current), new.and_then(current)) {
        (Some(live), Some(new)) => live == new,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::same_event;

    #[test]
    fn history_rows_of_two_versions_are_the_same_event_when_their_current_shapes_agree() {
        let row = |payload: &str| {
            format!(
                r#"{{"product_id": "p", "version": 2, "event_type": "StockAdjusted", "payload": {payload}}}"#
            )
        };
        // Projected before 2026-12-07 (no previous_stock) and after: the same event.
        let old = row(r#"{"delta": -1, "new_stock": 4, "reason": null}"#);
        let new = row(r#"{"delta": -1, "new_stock": 4, "reason": null, "previous_stock": 5}"#);
        assert!(same_event(Some(&old), Some(&new)));
        // A real difference stays one.
        let other = row(r#"{"delta": -1, "new_stock": 3, "reason": null, "previous_stock": 4}"#);
        assert!(!same_event(Some(&old), Some(&other)));
        let wrong_previous =
            row(r#"{"delta": -1, "new_stock": 4, "reason": null, "previous_stock": 9}"#);
        assert!(!same_event(Some(&old), Some(&wrong_previous)));
        assert!(!same_event(Some(&old), None), "a missing row differs");
    }
}
