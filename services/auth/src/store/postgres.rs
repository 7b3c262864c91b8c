//! The PostgreSQL backend of [`UserStore`](super::UserStore).

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{error::DatabaseError, PgPool};
use uuid::Uuid;

use super::{
    user_from_row, Deletion, NewRefreshToken, RefreshTokenRow, Rotation, StoreError, UserChange,
    UserRecord, UserStore, REFRESH_TOKEN_COLUMNS, USER_COLUMNS,
};
use crate::domain::{decide_refresh, Email, RefreshDecision, Username};
use chat_common::Role;

/// The migrations of the PostgreSQL users database (`migrations/users`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/users");

/// [`UserStore`](super::UserStore) on a PostgreSQL pool.
pub struct PgUserStore {
    pool: PgPool,
}

impl PgUserStore {
    /// A store on `pool`, which must already be migrated ([`super::open`] does both).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// Whether a uniqueness conflict is the username's: PostgreSQL names the constraint.
fn on_username(db: &dyn DatabaseError) -> bool {
    db.constraint() == Some("users_username_key")
}

#[async_trait]
impl UserStore for PgUserStore {
    async fn insert_user(
        &self,
        email: &Email,
        username: &Username,
        password_hash: &str,
    ) -> Result<UserRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (email, username, password_hash) VALUES ($1, $2, $3) \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(email.as_str())
        .bind(username.as_str())
        .bind(password_hash)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| StoreError::from_user_write(e, on_username, "inserting a user"))?;
        Ok(user_from_row(&row).context("reading the new user")?)
    }

    async fn user_by_email(&self, email: &Email) -> anyhow::Result<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("looking up a user by email")?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn users_by_refs(
        &self,
        emails: &[Email],
        usernames: &[Username],
    ) -> anyhow::Result<Vec<UserRecord>> {
        let emails: Vec<&str> = emails.iter().map(Email::as_str).collect();
        let usernames: Vec<&str> = usernames.iter().map(Username::as_str).collect();
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = ANY($1) OR username = ANY($2)"
        ))
        .bind(&emails)
        .bind(&usernames)
        .fetch_all(&self.pool)
        .await
        .context("resolving users")?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    async fn users_by_ids(&self, ids: &[i64]) -> anyhow::Result<Vec<UserRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .context("looking up users by id")?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    async fn user_by_id(&self, id: i64) -> anyhow::Result<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("looking up a user by id")?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn list_users(
        &self,
        after_id: i64,
        prefix: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<UserRecord>> {
        // substr rather than LIKE: the prefix is matched literally, '%' and '_' included.
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id > $1 AND ($2 = '' \
               OR substr(username, 1, length($2)) = $2 OR substr(email, 1, length($2)) = $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(after_id)
        .bind(prefix)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("listing users")?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    async fn set_role(&self, email: &Email, role: Role) -> anyhow::Result<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "UPDATE users SET role = $2 WHERE email = $1 RETURNING {USER_COLUMNS}"
        ))
        .bind(email.as_str())
        .bind(role.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("setting a user's role")?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn update_user(
        &self,
        id: i64,
        change: &UserChange,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let row = sqlx::query(&format!(
            "UPDATE users SET email = COALESCE($2, email), username = COALESCE($3, username), \
               password_hash = COALESCE($4, password_hash) \
             WHERE id = $1 RETURNING {USER_COLUMNS}"
        ))
        .bind(id)
        .bind(change.email.as_ref().map(Email::as_str))
        .bind(change.username.as_ref().map(Username::as_str))
        .bind(change.password_hash.as_deref())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::from_user_write(e, on_username, "updating a user"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = user_from_row(&row).context("reading the updated user")?;
        if change.password_hash.is_some() {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = now() \
                 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("revoking a user's sessions")?;
        }
        tx.commit().await.context("committing a user update")?;
        Ok(Some(user))
    }

    async fn delete_user(&self, id: i64) -> anyhow::Result<bool> {
        // One statement: the account and its tombstone, or neither.
        let tombstone: Option<i64> = sqlx::query_scalar(
            "WITH del AS (DELETE FROM users WHERE id = $1 RETURNING id) \
             INSERT INTO user_deletions (user_id) SELECT id FROM del RETURNING id",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("deleting a user")?;
        Ok(tombstone.is_some())
    }

    async fn deletions_after(&self, after: i64, limit: i64) -> anyhow::Result<Vec<Deletion>> {
        sqlx::query_as(
            "SELECT id, user_id, deleted_at FROM user_deletions WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading deleted accounts")
    }

    async fn insert_refresh_token(&self, t: &NewRefreshToken) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(t.id)
        .bind(t.family_id)
        .bind(t.user_id)
        .bind(&t.token_hash)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await
        .context("storing a refresh token")?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &[u8],
        next: NewRefreshToken,
    ) -> anyhow::Result<Rotation> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        // FOR UPDATE: two concurrent rotations of one token serialise here, and the second
        // sees the token used, which is exactly reuse.
        let token: Option<RefreshTokenRow> = sqlx::query_as(&format!(
            "SELECT {REFRESH_TOKEN_COLUMNS} FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE"
        ))
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await
        .context("looking up a refresh token")?;
        let Some(token) = token else {
            return Ok(Rotation::Unknown);
        };
        match decide_refresh(&token.state(), Utc::now()) {
            RefreshDecision::Refuse(refusal) => Ok(refusal.into()),
            RefreshDecision::RevokeFamily => {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = now() \
                     WHERE family_id = $1 AND revoked_at IS NULL",
                )
                .bind(token.family_id())
                .execute(&mut *tx)
                .await
                .context("revoking a reused token's family")?;
                tx.commit().await.context("committing a revocation")?;
                Ok(Rotation::Reused)
            }
            RefreshDecision::Rotate => {
                sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
                    .bind(presented)
                    .execute(&mut *tx)
                    .await
                    .context("marking a refresh token used")?;
                let next = token.successor(next);
                sqlx::query(
                    "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(next.id)
                .bind(next.family_id)
                .bind(next.user_id)
                .bind(&next.token_hash)
                .bind(next.expires_at)
                .execute(&mut *tx)
                .await
                .context("storing the rotated refresh token")?;
                let user = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                    .bind(token.user_id())
                    .fetch_one(&mut *tx)
                    .await
                    .context("loading the token's user")?;
                let user = user_from_row(&user)?;
                tx.commit().await.context("committing a rotation")?;
                Ok(Rotation::Rotated(user))
            }
        }
    }

    async fn revoke_family(&self, token_hash: &[u8]) -> anyhow::Result<bool> {
        let family: Option<Uuid> =
            sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await
                .context("looking up a refresh token")?;
        let Some(family) = family else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family)
        .execute(&self.pool)
        .await
        .context("revoking a token family")?;
        Ok(true)
    }

    async fn hit_rate_limit(
        &self,
        key: &str,
        now: DateTime<Utc>,
        new_reset_at: DateTime<Utc>,
    ) -> anyhow::Result<(i64, DateTime<Utc>)> {
        // One statement: the row lock taken by the upsert serialises concurrent hits.
        sqlx::query_as(
            "INSERT INTO rate_limits (key, hits, reset_at) VALUES ($1, 1, $3) \
             ON CONFLICT (key) DO UPDATE SET \
               hits = CASE WHEN rate_limits.reset_at <= $2 THEN 1 ELSE rate_limits.hits + 1 END, \
               reset_at = CASE WHEN rate_limits.reset_at <= $2 THEN $3 ELSE rate_limits.reset_at END \
             RETURNING hits, reset_at",
        )
        .bind(key)
        .bind(now)
        .bind(new_reset_at)
        .fetch_one(&self.pool)
        .await
        .context("counting a rate-limited event")
    }

    async fn rate_limit(&self, key: &str) -> anyhow::Result<Option<(i64, DateTime<Utc>)>> {
        sqlx::query_as("SELECT hits, reset_at FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .context("reading a rate limit")
    }

    async fn unhit_rate_limit(&self, key: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE rate_limits SET hits = hits - 1 WHERE key = $1 AND hits > 0")
            .bind(key)
            .execute(&self.pool)
            .await
            .context("taking back a rate-limited event")?;
        Ok(())
    }

    async fn prune_rate_limits(&self, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let done = sqlx::query("DELETE FROM rate_limits WHERE reset_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .context("pruning rate limits")?;
        Ok(done.rows_affected())
    }
}
