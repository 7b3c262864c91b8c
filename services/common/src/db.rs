//! Connecting to PostgreSQL and bringing the schema up to date at start-up. The database is
//! created when missing (a fresh cluster needs no manual step), and sqlx's migrator takes an
//! advisory lock, so several replicas starting at once apply each migration exactly once.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    migrate::{MigrateDatabase, Migrator},
    postgres::PgPoolOptions,
    PgPool, Postgres,
};

/// A pool on `url` with `max_connections`, the database created if needed and migrated.
pub async fn connect_and_migrate(
    url: &str,
    migrator: &Migrator,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    if !Postgres::database_exists(url)
        .await
        .context("checking whether the database exists")?
    {
        // Two replicas may race here; the loser's "already exists" is fine.
        if let Err(e) = Postgres::create_database(url).await {
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("creating the database");
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    migrator.run(&pool).await.context("applying migrations")?;
    Ok(pool)
}
