//! What the common crate's PostgreSQL tests share. They cannot use `chat-testkit`, which
//! depends on this crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// A database name no other test uses, on the server of `TEST_DATABASE_URL` (the local
/// PostgreSQL by default); `tag` says which test made it.
pub fn fresh_database_url(tag: &str) -> String {
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
    format!("{base}/{tag}_{}_{nanos}", std::process::id())
}
