//! Model schemas and the pointer to the live one.
//!
//! Each copy of the read model lives in its own schema (`model_<timestamp>`), migrated with
//! the same sqlx migrations. `foldline_meta.active_model` names the one readers use and the
//! projector writes to; a replay builds a new schema and swaps that row.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub const META_SCHEMA: &str = "foldline_meta";
static META_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/meta");
/// `ignore_missing`: during an upgrade an older projector or query API runs beside a newer
/// one that has already added its migrations to the live model (new columns, new tables);
/// the older build must start on it, not refuse the migrations it does not know. Its own
/// statements name their columns, so columns added after it are left at their defaults.
static MODEL_MIGRATIONS: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations/model")
};

/// The channel every batch and every swap notifies, so query APIs waiting on `?after=` wake
/// at the commit instead of polling.
pub const PROGRESS_CHANNEL: &str = "foldline_progress";

/// Tells every query API that the model moved (delivered when the transaction commits).
pub async fn notify_progress(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(PROGRESS_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Clone)]
pub struct ReadModel {
    pub pool: PgPool,
    options: PgConnectOptions,
}

impl ReadModel {
    /// Connects lazily: the pool opens connections when first used, so a service can start
    /// (and report not-ready) while Postgres is down.
    pub fn connect_lazy(url: &str, max_connections: u32) -> anyhow::Result<ReadModel> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.clone());
        Ok(ReadModel { pool, options })
    }

    /// Creates the meta schema and, when no model exists yet, a first (empty) model schema.
    /// Safe to run from several processes at once. Returns the active schema.
    pub async fn bootstrap(&self) -> anyhow::Result<String> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        // Serialise concurrent bootstraps (projector and query API starting together).
        sqlx::query("SELECT pg_advisory_lock(4242001)")
            .execute(&mut conn)
            .await?;
        let result = async {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {META_SCHEMA}"))
                .execute(&mut conn)
                .await?;
            sqlx::query(&format!("SET search_path TO {META_SCHEMA}"))
                .execute(&mut conn)
                .await?;
            META_MIGRATIONS.run(&mut conn).await?;
            let active: Option<String> = sqlx::query_scalar("SELECT schema_name FROM active_model")
                .fetch_optional(&mut conn)
                .await?;
            match active {
                Some(schema) => {
                    // A model made by an older version gets the tables added since.
                    check_schema_name(&schema)?;
                    sqlx::query(&format!("SET search_path TO {schema}"))
                        .execute(&mut conn)
                        .await?;
                    MODEL_MIGRATIONS.run(&mut conn).await?;
                    Ok::<_, anyhow::Error>(schema)
                }
                None => {
                    let schema = new_schema_name();
                    self.create_model(&schema).await?;
                    sqlx::query("INSERT INTO active_model (schema_name) VALUES ($1)")
                        .bind(&schema)
                        .execute(&mut conn)
                        .await?;
                    Ok(schema)
                }
            }
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(4242001)")
            .execute(&mut conn)
            .await;
        result
    }

    /// Creates schema `name` holding an empty read model.
    pub async fn create_model(&self, name: &str) -> anyhow::Result<()> {
        check_schema_name(name)?;
        let mut conn = PgConnection::connect_with(&self.options).await?;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("SET search_path TO {name}"))
            .execute(&mut conn)
            .await?;
        MODEL_MIGRATIONS.run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// A connection of its own, outside the pool (for session state: locks, search paths).
    pub async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options).await
    }

    pub async fn active(&self) -> Result<String, sqlx::Error> {
        sqlx::query_scalar(&format!(
            "SELECT schema_name FROM {META_SCHEMA}.active_model"
        ))
        .fetch_one(&self.pool)
        .await
    }

    pub async fn drop_model(&self, name: &str) -> anyhow::Result<()> {
        check_schema_name(name)?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A new model schema's name: `model_` and the UTC time to the millisecond.
pub fn new_schema_name() -> String {
    format!("model_{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"))
}

/// Schema names are put into SQL text, so only our own `model_<digits>` shape is accepted.
pub fn check_schema_name(name: &str) -> anyhow::Result<()> {
    let digits = name.strip_prefix("model_").unwrap_or("");
    anyhow::ensure!(
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()),
        "not a model schema name: {name:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_schema_names_are_accepted() {
        assert!(check_schema_name(&new_schema_name()).is_ok());
        assert!(check_schema_name("model_").is_err());
        assert!(check_schema_name("model_1; DROP TABLE x").is_err());
        assert!(check_schema_name("public").is_err());
    }
}
