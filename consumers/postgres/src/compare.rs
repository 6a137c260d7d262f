//! Before a rebuild swaps its new model in, it compares it with the model serving reads, at
//! the live model's own offsets (the *cut*). The live projector waits on the swap lock while
//! this runs, so the live model stands still; the new model has read at least as far.
//!
//! What is compared, in SQL inside the swap transaction:
//! - every product row, except products *parked* in either model (reported, not compared: a
//!   parked record may be applied, dropped or parked again) and products the new model has
//!   events of past the cut (*ahead*: the live model has not read them yet);
//! - every history row (`product_events`) before the cut, parked products excepted, from where
//!   the live model's history starts (a model made before history existed starts later);
//! - seller stats, except sellers of parked or ahead products;
//! - event counts, less the events of parked and ahead products (from each model's history).
//!
//! Rows are compared as JSON (`to_jsonb`), so every column counts.

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
    pub products: i64,
    pub history_events: i64,
    pub sellers: i64,
    /// Products parked in either model, not compared.
    pub parked: i64,
    /// Products with events past the cut in the new model: their rows are not compared, their
    /// history before the cut is.
    pub ahead: i64,
    /// False when the live model's history starts late (made before history existed) and
    /// event counts could not be adjusted for the products left out.
    pub event_counts_compared: bool,
    pub differences: i64,
    /// How long the comparison took (the live projector waits meanwhile).
    pub seconds: f64,
    /// The first differences, by table and key.
    pub first: Vec<Difference>,
}

impl Comparison {
    pub fn equal(&self) -> bool {
        self.differences == 0
    }

    pub fn summary(&self) -> String {
        if !self.compared {
            return "not compared: the live model has not read this topic".into();
        }
        format!(
            "compared at the live model's offsets in {:.1} s: {} products, {} history events, \
             {} sellers{}; {} parked products left out, {} products with events past the cut \
             compared by their history; {} differences",
            self.seconds,
            self.products,
            self.history_events,
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

/// Compares model schemas `live` and `new` (both already checked names) at the live model's
/// offsets of `group` on `topic`. Temporary tables go with the transaction.
pub async fn compare(
    conn: &mut PgConnection,
    live: &str,
    new: &str,
    group: &str,
    topic: &str,
) -> Result<Comparison, sqlx::Error> {
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
    let setup = [
        format!(
            "CREATE TEMP TABLE compare_cut ON COMMIT DROP AS
             SELECT o.partition, o.next_offset,
                    coalesce(h.first_offset, 0) AS history_from
             FROM {live}.consumer_offsets o
             LEFT JOIN {live}.history_starts h USING (consumer_group, topic, partition)
             WHERE o.consumer_group = $1 AND o.topic = $2"
        ),
        format!(
            "CREATE TEMP TABLE compare_parked ON COMMIT DROP AS
             SELECT product_id AS id FROM {live}.parked_events
             WHERE consumer_group = $1 AND topic = $2
             UNION SELECT product_id FROM {new}.parked_events
             WHERE consumer_group = $1 AND topic = $2"
        ),
        // Parked or ahead, as bytes (a parked id may hold a NUL, which text cannot).
        format!(
            "CREATE TEMP TABLE compare_left_out ON COMMIT DROP AS
             SELECT id FROM compare_parked
             UNION SELECT convert_to(e.product_id, 'UTF8') FROM {new}.product_events e
             LEFT JOIN compare_cut c USING (partition)
             WHERE e.\"offset\" >= coalesce(c.next_offset, 0)"
        ),
        format!(
            "CREATE TEMP TABLE compare_sellers_left_out ON COMMIT DROP AS
             SELECT p.seller_id FROM {live}.products p
             JOIN compare_left_out x ON x.id = convert_to(p.id, 'UTF8')
             UNION SELECT p.seller_id FROM {new}.products p
             JOIN compare_left_out x ON x.id = convert_to(p.id, 'UTF8')"
        ),
    ];
    for (i, statement) in setup.iter().enumerate() {
        let query = sqlx::query(statement);
        // The first two read the live model's rows of this group and topic.
        let query = if i < 2 {
            query.bind(group).bind(topic)
        } else {
            query
        };
        query.execute(&mut *conn).await?;
    }
    let scalar = async |conn: &mut PgConnection, sql: String| -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(&sql).fetch_one(conn).await
    };
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
        products: scalar(
            conn,
            format!(
                "SELECT count(*) FROM {live}.products l
                 WHERE NOT EXISTS (SELECT 1 FROM compare_left_out x
                                   WHERE x.id = convert_to(l.id, 'UTF8'))"
            ),
        )
        .await?,
        sellers: scalar(
            conn,
            format!(
                "SELECT count(*) FROM {live}.seller_stats l
                 WHERE l.seller_id NOT IN (SELECT seller_id FROM compare_sellers_left_out
                                           WHERE seller_id IS NOT NULL)"
            ),
        )
        .await?,
        ..Comparison::default()
    };
    let history_complete: bool = scalar(
        conn,
        "SELECT count(*) FROM compare_cut WHERE history_from > 0".into(),
    )
    .await?
        == 0;
    comparison.event_counts_compared =
        history_complete || comparison.parked + comparison.ahead == 0;

    let products = format!(
        "SELECT coalesce(l.id, n.id) AS key, to_jsonb(l)::text AS live, to_jsonb(n)::text AS new
         FROM {live}.products l FULL JOIN {new}.products n ON n.id = l.id
         WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(n)
         AND NOT EXISTS (SELECT 1 FROM compare_left_out x
                         WHERE x.id = convert_to(coalesce(l.id, n.id), 'UTF8'))"
    );
    let before_cut = |schema: &str| {
        format!(
            "SELECT e.* FROM {schema}.product_events e JOIN compare_cut c USING (partition)
             WHERE e.\"offset\" < c.next_offset AND e.\"offset\" >= c.history_from
             AND NOT EXISTS (SELECT 1 FROM compare_parked x
                             WHERE x.id = convert_to(e.product_id, 'UTF8'))"
        )
    };
    comparison.history_events = scalar(
        conn,
        format!("SELECT count(*) FROM ({}) l", before_cut(live)),
    )
    .await?;
    let history = format!(
        "WITH l AS ({}), n AS ({})
         SELECT coalesce(l.product_id, n.product_id) || ' v' || coalesce(l.version, n.version)
                    AS key,
                to_jsonb(l)::text AS live, to_jsonb(n)::text AS new
         FROM l FULL JOIN n ON n.product_id = l.product_id AND n.version = l.version
         WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(n)",
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
    // Each model's counts less its own history's events of the products left out.
    let adjusted = |schema: &str| {
        format!(
            "SELECT c.event_type, c.hour, c.events - coalesce(x.events, 0) AS events
             FROM {schema}.event_counts c LEFT JOIN (
                 SELECT e.event_type, date_trunc('hour', e.occurred_at, 'UTC') AS hour,
                        count(*) AS events
                 FROM {schema}.product_events e
                 JOIN compare_left_out o ON o.id = convert_to(e.product_id, 'UTF8')
                 GROUP BY 1, 2) x ON x.event_type = c.event_type AND x.hour = c.hour"
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
    let mut checks = vec![
        ("products", products),
        ("product_events", history),
        ("seller_stats", sellers),
    ];
    if comparison.event_counts_compared {
        checks.push(("event_counts", event_counts));
    }
    for (table, sql) in checks {
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
    comparison.seconds = started.elapsed().as_secs_f64();
    Ok(comparison)
}
