//! Model schemas nobody builds or reads any more: what a rebuild killed mid-way leaves (its
//! half-loaded new schema; or the old one, when it died in the grace before dropping it).
//!
//! A rebuild claims each schema it works on with a shared session advisory lock (rebuilds
//! never wait for each other), held on a connection of its own for as long as it runs. The lock ends with the connection, so with
//! the process, however it ends. A schema that is neither the active one nor claimed is left
//! over, and the next rebuild drops it before it starts.

use sqlx::{Connection, PgConnection};

use crate::model::{check_schema_name, ReadModel, META_SCHEMA};

/// The first key of the claims' advisory locks (the second is the schema name's hash).
const CLAIM_LOCK: i32 = 4242002;

/// The schemas this process works on, held until dropped (or until the process dies).
pub struct Claims {
    conn: PgConnection,
}

impl Claims {
    pub async fn open(model: &ReadModel) -> Result<Claims, sqlx::Error> {
        Ok(Claims {
            conn: model.connect().await?,
        })
    }

    /// Claims `schema` (waits only while a clean-up looks at it).
    pub async fn claim(&mut self, schema: &str) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_lock_shared($1, hashtext($2))")
            .bind(CLAIM_LOCK)
            .bind(schema)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }
}

/// Drops every model schema that is neither active nor claimed; returns their names.
pub async fn drop_left_over(model: &ReadModel) -> anyhow::Result<Vec<String>> {
    let mut conn = model.connect().await?;
    let mut tx = conn.begin().await?;
    // FOR SHARE: no swap can make a schema active while it is looked at here.
    let active: String = sqlx::query_scalar(&format!(
        "SELECT schema_name FROM {META_SCHEMA}.active_model FOR SHARE"
    ))
    .fetch_one(&mut *tx)
    .await?;
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'model\\_%' ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut dropped = Vec::new();
    for schema in schemas {
        if schema == active || check_schema_name(&schema).is_err() {
            continue;
        }
        // Exclusive, so only free when no rebuild claims it; released at the transaction's
        // end (a rebuild claiming it meanwhile waits for that).
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
            .bind(CLAIM_LOCK)
            .bind(&schema)
            .fetch_one(&mut *tx)
            .await?;
        if free {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut *tx)
                .await?;
            tracing::info!(%schema, "dropped a model schema a killed rebuild left behind");
            dropped.push(schema);
        }
    }
    tx.commit().await?;
    Ok(dropped)
}
