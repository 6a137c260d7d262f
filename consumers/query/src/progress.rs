//! How far the live model has got, shared by every waiting `?after=` request.
//!
//! One task keeps a snapshot (live schema, next offset per partition) current: the projector
//! sends `NOTIFY foldline_progress` ([`PROGRESS_CHANNEL`]) in each batch transaction, so a commit wakes the task at
//! once; a slow poll covers a lost connection. Waiting requests watch the snapshot instead of
//! querying the database, so a thousand waiters cost no more than one.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use foldline_postgres::model::{ReadModel, PROGRESS_CHANNEL};
use foldline_service::position::Offsets;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The live model schema (empty until first read).
    pub schema: String,
    /// Next offset to apply per partition of the query API's topic.
    pub next: Offsets,
}

impl Progress {
    pub fn applied(&self, partition: i32, offset: i64) -> bool {
        self.next.has_seen(partition, offset)
    }
}

/// Starts the watcher; the receiver always holds the latest snapshot.
pub fn watch_progress(model: ReadModel, topic: String) -> watch::Receiver<Arc<Progress>> {
    let (tx, rx) = watch::channel(Arc::new(Progress::default()));
    tokio::spawn(async move {
        let mut listener: Option<PgListener> = None;
        loop {
            if listener.is_none() {
                listener = connect(&model).await;
            }
            match read(&model, &topic).await {
                Ok(progress) => {
                    tx.send_if_modified(|current| {
                        let changed = **current != progress;
                        if changed {
                            *current = Arc::new(progress);
                        }
                        changed
                    });
                }
                Err(error) => tracing::debug!(%error, "reading progress failed"),
            }
            if tx.is_closed() {
                return;
            }
            // Wake on the next commit, or after a while anyway.
            let poll = tokio::time::sleep(Duration::from_millis(250));
            match listener.as_mut() {
                Some(l) => tokio::select! {
                    notified = l.recv() => if notified.is_err() { listener = None },
                    _ = poll => {}
                },
                None => poll.await,
            }
        }
    });
    rx
}

async fn connect(model: &ReadModel) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(&model.pool).await.ok()?;
    listener.listen(PROGRESS_CHANNEL).await.ok()?;
    Some(listener)
}

async fn read(model: &ReadModel, topic: &str) -> Result<Progress, sqlx::Error> {
    let schema = model.active().await?;
    let next: Offsets = sqlx::query_as::<_, (i32, i64)>(&format!(
        "SELECT partition, max(next_offset) FROM {schema}.consumer_offsets WHERE topic = $1 GROUP BY partition"
    ))
    .bind(topic)
    .fetch_all(&model.pool)
    .await?
    .into_iter()
    .collect();
    Ok(Progress { schema, next })
}
