//! A database of its own for each test, on the PostgreSQL server of the stack under test.

use sqlx::Connection;

/// Admin URL of the server (`FOLDLINE_DATABASE_URL`, default the local stack).
pub fn database_url() -> String {
    std::env::var("FOLDLINE_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://foldline@127.0.0.1:5432/foldline".into())
}

/// Creates an empty database with a random name and returns its URL.
pub async fn fresh_database() -> String {
    let admin = database_url();
    let name = crate::unique("foldline_test").replace('-', "_");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// Stops the PostgreSQL server of the stack (fast shutdown) or starts it again, through the
/// command `scripts/test` exports in `FOLDLINE_PG_CTL` (`<script> <data dir> <port>`).
pub fn postgres_ctl(action: &str) {
    let ctl = std::env::var("FOLDLINE_PG_CTL").expect("FOLDLINE_PG_CTL (set by scripts/test)");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{ctl} {action}"))
        .status()
        .unwrap();
    assert!(status.success(), "{ctl} {action} failed");
}

/// The stack's PostgreSQL stopped for as long as this lives; started again on drop, also
/// when the test fails, so later tests find it running.
pub struct StoppedPostgres(());

impl StoppedPostgres {
    pub fn stop() -> StoppedPostgres {
        postgres_ctl("stop");
        StoppedPostgres(())
    }
}

impl Drop for StoppedPostgres {
    fn drop(&mut self) {
        postgres_ctl("start");
    }
}
