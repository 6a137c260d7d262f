//! The projector's sink: one transaction per batch on the live model schema.

use foldline_consumer_runtime::{Batch, Sink, SinkError, Written};

use crate::apply::{apply_batch, Applied, Target};
use crate::model::{ReadModel, META_SCHEMA};

pub struct PostgresSink {
    pub model: ReadModel,
    pub group: String,
    pub topic: String,
    pub low_stock_threshold: i64,
}

impl Sink for PostgresSink {
    async fn write(&mut self, batch: &Batch) -> Result<Written, SinkError> {
        self.write_once(batch).await.map_err(classify)
    }
}

impl PostgresSink {
    async fn write_once(&self, batch: &Batch) -> Result<Written, sqlx::Error> {
        let mut tx = self.model.pool.begin().await?;
        // FOR SHARE: a replay's swap (FOR UPDATE) waits for this batch, and this batch for
        // the swap, so every batch lands wholly in one model.
        let schema: String = sqlx::query_scalar(&format!(
            "SELECT schema_name FROM {META_SCHEMA}.active_model FOR SHARE"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let target = Target {
            schema: &schema,
            group: &self.group,
            topic: &self.topic,
            low_stock_threshold: self.low_stock_threshold,
        };
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
