//! N-1 rollback: a service must still start on a database that a newer version has
//! already migrated (a `version` set back, or an old pod restarting during a stuck
//! rollout). Two real versions of a schema: the chat service's migrations as they are in
//! `migrations/` (the running version), and the same plus one expand-only migration (the
//! next version), on both engines. See docs/migrations.md.

mod support;

use std::path::{Path, PathBuf};

use chat_common::db::{Database, Migrations};
use sqlx::migrate::Migrator;

/// A version after any the repository will have.
const NEXT_VERSION: &str = "99990101000000";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The migrations of `folder` (`migrations/chat`, `migrations/sqlite/chat`), as the
/// service built from this tree embeds them.
async fn current(folder: &str) -> &'static Migrator {
    let m = Migrator::new(repo().join(folder))
        .await
        .expect("reading the migrations");
    Box::leak(Box::new(m))
}

/// `folder`'s migrations plus `extra` as a later migration, in a directory of their own.
async fn next(folder: &str, extra: &str, dir: &Path) -> &'static Migrator {
    for entry in std::fs::read_dir(repo().join(folder)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.join(format!("{NEXT_VERSION}_messages_pinned_at.sql")),
        extra,
    )
    .unwrap();
    let m = Migrator::new(dir.to_path_buf()).await.unwrap();
    Box::leak(Box::new(m))
}

fn both(m: &'static Migrator) -> Migrations {
    Migrations {
        postgres: m,
        sqlite: m,
        postgres_settings: &[],
    }
}

/// The rollback on the database at `url`: the next version migrates it, the running
/// version still connects (and reads and writes), and a migration whose content changed
/// is still refused.
async fn rollback(url: &str, folder: &str, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let next = next(folder, extra, dir.path()).await;
    Database::connect(url, both(next), 1)
        .await
        .expect("the next version migrates")
        .close()
        .await;

    let db = Database::connect(url, both(current(folder).await), 1)
        .await
        .expect("the running version starts on the newer schema");
    match &db {
        Database::Postgres(pool) => {
            sqlx::query("INSERT INTO chats (title, creator_id) VALUES ('rollback', 1)")
                .execute(pool)
                .await
                .unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query("INSERT INTO chats (title, creator_id, created_at, last_activity_at) VALUES ('rollback', 1, 0, 0)")
                .execute(pool)
                .await
                .unwrap();
        }
    }
    db.close().await;

    // Tolerating newer migrations is not tolerating edited ones.
    let edited = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join(folder)).unwrap() {
        let path = entry.unwrap().path();
        let mut sql = std::fs::read_to_string(&path).unwrap();
        sql.push_str("\n-- edited after it was applied\n");
        std::fs::write(edited.path().join(path.file_name().unwrap()), sql).unwrap();
    }
    let edited = Box::leak(Box::new(
        Migrator::new(edited.path().to_path_buf()).await.unwrap(),
    ));
    let refused = Database::connect(url, both(edited), 1).await;
    assert!(refused.is_err(), "an edited migration is refused");
}

#[tokio::test]
async fn an_older_version_starts_on_a_newer_schema_postgres() {
    let url = support::fresh_database_url("rollback");
    rollback(
        &url,
        "migrations/chat",
        "ALTER TABLE messages ADD COLUMN pinned_at TIMESTAMPTZ;",
    )
    .await;
    use sqlx::migrate::MigrateDatabase;
    let _ = sqlx::Postgres::drop_database(&url).await;
}

#[tokio::test]
async fn an_older_version_starts_on_a_newer_schema_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = chat_common::db::sqlite_url(&dir.path().join("chat.db"));
    rollback(
        &url,
        "migrations/sqlite/chat",
        "ALTER TABLE messages ADD COLUMN pinned_at INTEGER;",
    )
    .await;
}
