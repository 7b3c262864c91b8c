//! Plans that stay right as a table grows: every PostgreSQL session plans a prepared
//! statement once (`force_generic_plan`), and a store opened with `KEYED_ONLY` gets the
//! index lookup per key even from a table that was tiny when the plan was made. The
//! notifier's finish (an `UPDATE ... FROM UNNEST` of deliveries) on its real schema, with
//! the settings and without them, so the test fails if they stop reaching the sessions.

mod support;

use std::path::Path;

use chat_common::db::{Database, Migrations, KEYED_ONLY};
use sqlx::{migrate::Migrator, PgPool};

const FINISH: &str = "UPDATE deliveries d SET state = 'delivered', updated_at = now() \
     FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS f(chat_id, seq, recipient_id) \
     WHERE d.chat_id = f.chat_id AND d.seq = f.seq AND d.recipient_id = f.recipient_id";

/// The plan the session of a pool opened with `settings` keeps for [`FINISH`], made while
/// `deliveries` holds ten analyzed rows.
async fn finish_plan(settings: &'static [(&'static str, &'static str)], tag: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/notification");
    let migrator: &'static Migrator = Box::leak(Box::new(Migrator::new(dir).await.unwrap()));
    let url = support::fresh_database_url(&format!("plans_{tag}"));
    let migrations = Migrations {
        postgres: migrator,
        sqlite: migrator,
        postgres_settings: settings,
    };
    let Database::Postgres(pool) = Database::connect(&url, migrations, 1).await.unwrap() else {
        panic!("a postgres:// URL opens PostgreSQL");
    };
    let plan = plan_on(&pool).await;
    pool.close().await;
    use sqlx::migrate::MigrateDatabase;
    let _ = sqlx::Postgres::drop_database(&url).await;
    plan
}

async fn plan_on(pool: &PgPool) -> String {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO deliveries (chat_id, seq, recipient_id, email, username) \
         SELECT 1, g, 2, 'a@example.com', 'a' FROM generate_series(1, 10) g",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE deliveries")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(&format!(
        "PREPARE finish(bigint[], bigint[], bigint[]) AS {FINISH}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let lines: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE finish('{1}', '{1}', '{2}')")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    lines.join("\n")
}

#[tokio::test]
async fn a_keyed_store_looks_rows_up_by_index_even_in_a_plan_made_on_a_tiny_table() {
    let plan = finish_plan(KEYED_ONLY, "keyed").await;
    assert!(plan.contains("Index Scan using deliveries_pkey"), "{plan}");
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Hash"),
        "{plan}"
    );
}

#[tokio::test]
async fn without_keyed_only_the_same_plan_scans_the_table() {
    // What KEYED_ONLY is for: the generic plan made on ten rows hashes and scans them, and
    // would go on scanning the table at any size.
    let plan = finish_plan(&[], "default").await;
    assert!(plan.contains("Seq Scan on deliveries"), "{plan}");
}
