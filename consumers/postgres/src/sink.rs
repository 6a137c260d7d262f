//! The projector's sink: one transaction per batch on the live model schema.

use foldline_consumer_runtime::{Batch, Parked, Record, Sink, SinkError, Written};
use sqlx::PgConnection;

use crate::apply::{apply_batch, apply_events, Applied, ApplyError, Target};
use crate::model::{ReadModel, META_SCHEMA};

pub struct PostgresSink {
    pub model: ReadModel,
    pub group: String,
    pub topic: String,
    pub low_stock_threshold: i64,
    /// The model schema the last batch went to (a change means a replay swapped models).
    pub schema_seen: std::sync::Mutex<Option<String>>,
}

impl PostgresSink {
    pub fn new(model: ReadModel, group: String, topic: String, low_stock_threshold: i64) -> Self {
        PostgresSink {
            model,
            group,
            topic,
            low_stock_threshold,
            schema_seen: Default::default(),
        }
    }
}

impl Sink for PostgresSink {
    async fn write(&mut self, batch: &Batch) -> Result<Written, SinkError> {
        self.write_once(batch).await.map_err(classify_apply)
    }

    fn parks(&self) -> bool {
        true
    }

    async fn parked(&mut self) -> Result<Vec<Parked>, SinkError> {
        let mut conn = self.model.pool.acquire().await.map_err(classify)?;
        let schema = active_schema(&mut conn, "").await.map_err(classify)?;
        read_parked(&mut conn, &schema, &self.group, &self.topic, None)
            .await
            .map_err(classify)
    }

    async fn unpark(&mut self, product: &str, records: Option<&[Record]>) -> Result<(), SinkError> {
        self.unpark_once(product, records)
            .await
            .map_err(classify_apply)
    }
}

/// The live model schema; `lock` is appended to the query (`FOR SHARE` inside a batch).
async fn active_schema(conn: &mut PgConnection, lock: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT schema_name FROM {META_SCHEMA}.active_model {lock}"
    ))
    .fetch_one(&mut *conn)
    .await
}

/// The parked entries of `group` (of one product when given), in log order; `FOR UPDATE`
/// with a product, so a retry holds them until it commits.
pub async fn read_parked(
    conn: &mut PgConnection,
    schema: &str,
    group: &str,
    topic: &str,
    product: Option<&str>,
) -> Result<Vec<Parked>, sqlx::Error> {
    let rows: Vec<(i32, i64, Vec<u8>, i64, String, String)> = sqlx::query_as(&format!(
        "SELECT partition, \"offset\", product_id, version, event_type, reason
         FROM {schema}.parked_events
         WHERE consumer_group = $1 AND topic = $2 AND ($3::bytea IS NULL OR product_id = $3)
         ORDER BY partition, \"offset\" {}",
        if product.is_some() { "FOR UPDATE" } else { "" }
    ))
    .bind(group)
    .bind(topic)
    .bind(product.map(str::as_bytes))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(partition, offset, product, version, event_type, reason)| Parked {
                partition,
                offset,
                product_id: String::from_utf8_lossy(&product).into_owned(),
                version,
                event_type,
                reason,
            },
        )
        .collect())
}

impl PostgresSink {
    fn target<'a>(&'a self, schema: &'a str) -> Target<'a> {
        Target {
            schema,
            group: &self.group,
            topic: &self.topic,
            low_stock_threshold: self.low_stock_threshold,
        }
    }

    /// Applies the product's parked records (when given) and deletes its parked entries, in
    /// one transaction: a retry applies each record exactly once, or nothing.
    async fn unpark_once(
        &self,
        product: &str,
        records: Option<&[Record]>,
    ) -> Result<(), ApplyError> {
        let mut tx = self.model.pool.begin().await?;
        let schema = active_schema(&mut tx, "FOR SHARE").await?;
        let entries =
            read_parked(&mut tx, &schema, &self.group, &self.topic, Some(product)).await?;
        if let Some(records) = records {
            // Only what is still parked (another instance may have retried meanwhile).
            let events = records.iter().filter(|r| {
                entries
                    .iter()
                    .any(|e| e.partition == r.partition && e.offset == r.offset)
            });
            apply_events(&mut tx, &self.target(&schema), events).await?;
        }
        sqlx::query(&format!(
            "DELETE FROM {schema}.parked_events
             WHERE consumer_group = $1 AND topic = $2 AND product_id = $3"
        ))
        .bind(&self.group)
        .bind(&self.topic)
        .bind(product.as_bytes())
        .execute(&mut *tx)
        .await?;
        crate::model::notify_progress(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write_once(&self, batch: &Batch) -> Result<Written, ApplyError> {
        let mut tx = self.model.pool.begin().await?;
        // FOR SHARE: a replay's swap (FOR UPDATE) waits for this batch, and this batch for
        // the swap, so every batch lands wholly in one model.
        let schema = active_schema(&mut tx, "FOR SHARE").await?;
        let swapped = {
            let mut seen = self.schema_seen.lock().expect("not poisoned");
            let swapped = seen.as_ref().is_some_and(|s| *s != schema);
            *seen = Some(schema.clone());
            swapped
        };
        {
            if swapped {
                // A replay swapped in a new model, whose parked products may differ from the
                // ones the runtime knows: read the batch again (the runtime reloads them on
                // a reseek), nothing written.
                tx.rollback().await?;
                tracing::info!(%schema, "the live model changed; reading the batch again");
                return Ok(Written::Reseek(Default::default()));
            }
        }
        let target = self.target(&schema);
        match apply_batch(&mut tx, &target, batch).await? {
            Applied::Reseek(at) => {
                tx.rollback().await?;
                Ok(Written::Reseek(at))
            }
            Applied::Done => {
                tx.commit().await?;
                Ok(Written::Done)
            }
        }
    }
}

/// A data error parks the product (see [`ApplyError::is_data`]); the rest as [`classify`].
pub fn classify_apply(error: ApplyError) -> SinkError {
    if error.is_data() {
        return SinkError::Data(error.into());
    }
    match error {
        ApplyError::Sql(error) => classify(error),
        other => SinkError::Fatal(other.into()),
    }
}

/// Connection trouble, a server shutting down or restarting, overload, serialization
/// failures and deadlocks go away by themselves: retry. Anything else is a bug: stop.
pub fn classify(error: sqlx::Error) -> SinkError {
    let transient = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    };
    SinkError::new(error, transient)
}
