//! Where accounts and refresh tokens live. The service logic talks to the [`UserStore`]
//! trait; `postgres` implements it for the split deployment and `sqlite` for the embedded
//! `chat-server`, and [`open`] picks one by the database URL. Backends hold no logic:
//! the rotation rule lives in the domain ([`crate::domain::decide_refresh`]), the store
//! only makes each step atomic.
//!
//! What both engines share is here, written once: how a row becomes a record
//! ([`user_from_row`], [`RefreshTokenRow`], [`Deletion`]'s derived mapping, generic over
//! the engine's row type), and how a uniqueness conflict becomes a [`StoreError`]. The SQL
//! stays in each engine's module.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{error::DatabaseError, FromRow, Row};
use uuid::Uuid;

use chat_common::{
    db::{Database, Migrations},
    Role, Shutdown,
};

use crate::domain::{Email, RefreshTokenState, Refusal, Username};

pub mod postgres;
pub mod sqlite;

const MIGRATIONS: Migrations = Migrations {
    postgres: &postgres::MIGRATOR,
    sqlite: &sqlite::MIGRATOR,
    postgres_settings: &[],
};

/// The store at `url` (`postgres://...` or `sqlite://...`) with at most `max_connections`,
/// the database created when missing and migrated; its pool monitors run on `shutdown`.
pub async fn open(
    url: &str,
    max_connections: u32,
    shutdown: &Shutdown,
) -> anyhow::Result<Arc<dyn UserStore>> {
    Ok(
        match MIGRATIONS.open(url, max_connections, shutdown).await? {
            Database::Postgres(pool) => Arc::new(postgres::PgUserStore::new(pool)),
            Database::Sqlite(pool) => Arc::new(sqlite::SqliteUserStore::new(pool).await?),
        },
    )
}

/// Creates the database at `url` when missing and applies the migrations, then returns.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    MIGRATIONS.apply(url).await
}

/// An account as stored.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The user id: positive, never reused.
    pub id: i64,
    /// The lower-cased email.
    pub email: String,
    /// The lower-cased username.
    pub username: String,
    /// The bcrypt hash of the password.
    pub password_hash: String,
    /// Unknown role names in the database read as [`Role::User`].
    pub role: Role,
    /// When the account was registered.
    pub created_at: DateTime<Utc>,
}

/// What an update changes of a user; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    /// A new email; `None` keeps the current one.
    pub email: Option<Email>,
    /// A new username; `None` keeps the current one.
    pub username: Option<Username>,
    /// A new bcrypt hash: the user's refresh tokens are revoked with the change.
    pub password_hash: Option<String>,
}

/// The tombstone of a deleted account.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Deletion {
    /// Grows with each deletion: readers keep the last one they applied.
    pub id: i64,
    /// The deleted account's id.
    pub user_id: i64,
    /// When it was deleted.
    pub deleted_at: DateTime<Utc>,
}

/// A refresh token to store.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// A fresh random id.
    pub id: Uuid,
    /// The family the token belongs to: a login starts a family and each rotation adds to it, so a
    /// reused token revokes every token descended from the same login.
    pub family_id: Uuid,
    /// The user it was issued to. For a rotation the store fills it (and `family_id`) in from the
    /// presented token.
    pub user_id: i64,
    /// SHA-256 of the token ([`crate::keys::hash_refresh_token`]); the token itself is never
    /// stored.
    pub token_hash: Vec<u8>,
    /// After this the token no longer rotates.
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token for rotation led to.
#[derive(Debug)]
pub enum Rotation {
    /// The token was valid; it is now used and `new` is stored in its family.
    Rotated(UserRecord),
    /// No such token.
    Unknown,
    /// The token's expiry has passed.
    Expired,
    /// Its family was revoked earlier (logout or reuse).
    Revoked,
    /// It had been used already: its whole family is now revoked.
    Reused,
}

impl From<Refusal> for Rotation {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Expired => Rotation::Expired,
            Refusal::Revoked => Rotation::Revoked,
        }
    }
}

/// What a write to the users database can fail with that a caller must tell apart: a uniqueness
/// conflict answers ALREADY_EXISTS, the rest is internal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another account has this email.
    #[error("email already registered")]
    EmailTaken,
    /// Another account has this username.
    #[error("username already taken")]
    UsernameTaken,
    /// Anything else (connection, SQL): internal.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Storage of accounts, refresh tokens and rate-limit counters, one implementation per database
/// engine. Emails and usernames arrive parsed and lower-cased; implementations compare them as
/// given.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Stores a new account with role user; [`StoreError::EmailTaken`] or
    /// [`StoreError::UsernameTaken`] when another account has either.
    async fn insert_user(
        &self,
        email: &Email,
        username: &Username,
        password_hash: &str,
    ) -> Result<UserRecord, StoreError>;

    /// The account with this (lower-cased) email, if any.
    async fn user_by_email(&self, email: &Email) -> anyhow::Result<Option<UserRecord>>;

    /// Users named by any of these emails or usernames.
    async fn users_by_refs(
        &self,
        emails: &[Email],
        usernames: &[Username],
    ) -> anyhow::Result<Vec<UserRecord>>;

    /// The users with these ids; ids with no user are left out, order not guaranteed.
    async fn users_by_ids(&self, ids: &[i64]) -> anyhow::Result<Vec<UserRecord>>;

    /// The user with this id, if any.
    async fn user_by_id(&self, id: i64) -> anyhow::Result<Option<UserRecord>>;

    /// Up to `limit` users with ids above `after_id`, in id order, whose username or email
    /// starts with `prefix` (every user when it is empty).
    async fn list_users(
        &self,
        after_id: i64,
        prefix: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<UserRecord>>;

    /// Sets the role of the user with this email; `None` when there is no such user.
    /// Only the operator's `admin grant|revoke` command calls it, never an RPC.
    async fn set_role(&self, email: &Email, role: Role) -> anyhow::Result<Option<UserRecord>>;

    /// Changes what is given of the user's email, username and password hash; when the
    /// password changes, every refresh token of the user is revoked in the same
    /// transaction. `Ok(None)` when the user does not exist (any more).
    async fn update_user(
        &self,
        id: i64,
        change: &UserChange,
    ) -> Result<Option<UserRecord>, StoreError>;

    /// Deletes the user and (by cascade) every refresh token of theirs, and records the
    /// deletion's tombstone in the same transaction; false when no such user exists.
    async fn delete_user(&self, id: i64) -> anyhow::Result<bool>;

    /// Tombstones of deleted accounts with an id above `after`, oldest first, at most
    /// `limit`.
    async fn deletions_after(&self, after: i64, limit: i64) -> anyhow::Result<Vec<Deletion>>;

    /// Stores a token issued at login (its family is new) or by a rotation.
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> anyhow::Result<()>;

    /// Atomically: checks the token with hash `presented`, and when it is valid marks it used
    /// and stores `next` in its family (`next.family_id` and `next.user_id` are replaced by
    /// the presented token's).
    /// A token used before revokes its family.
    async fn rotate_refresh_token(
        &self,
        presented: &[u8],
        next: NewRefreshToken,
    ) -> anyhow::Result<Rotation>;

    /// Revokes the family of the token with this hash; false when no such token exists.
    async fn revoke_family(&self, token_hash: &[u8]) -> anyhow::Result<bool>;

    /// Counts one event against the rate-limit `key`, atomically (concurrent callers on any
    /// replica each see a distinct count): when the key's window ended at or before `now`
    /// (or it has none), a new window ending at `new_reset_at` starts with this event.
    /// Returns the events counted in the current window, this one included, and its end.
    async fn hit_rate_limit(
        &self,
        key: &str,
        now: DateTime<Utc>,
        new_reset_at: DateTime<Utc>,
    ) -> anyhow::Result<(i64, DateTime<Utc>)>;

    /// The events counted against `key` in its window and the window's end, if it has a
    /// row; a read only, for refusing an attempt that is over its limit without a write.
    async fn rate_limit(&self, key: &str) -> anyhow::Result<Option<(i64, DateTime<Utc>)>>;

    /// Takes back one event counted against `key` (an attempt that turned out not to count,
    /// such as a login with the right password).
    async fn unhit_rate_limit(&self, key: &str) -> anyhow::Result<()>;

    /// Deletes the rate-limit rows whose window ended at or before `now`; returns how many.
    async fn prune_rate_limits(&self, now: DateTime<Utc>) -> anyhow::Result<u64>;
}

/// The columns of `users` that [`user_from_row`] reads, for both engines' statements.
pub(crate) const USER_COLUMNS: &str = "id, email, username, password_hash, role, created_at";

/// A `users` row as either engine returns it ([`USER_COLUMNS`]): SQLite's RFC 3339 text
/// decodes into the same time type as PostgreSQL's `timestamptz`.
#[derive(FromRow)]
pub(crate) struct UserRow {
    id: i64,
    email: String,
    username: String,
    password_hash: String,
    role: String,
    created_at: DateTime<Utc>,
}

/// The account in a row of [`USER_COLUMNS`], from either engine. Unknown role names read
/// as [`Role::User`].
pub(crate) fn user_from_row<'r, R: Row>(row: &'r R) -> Result<UserRecord, sqlx::Error>
where
    UserRow: FromRow<'r, R>,
{
    let r = UserRow::from_row(row)?;
    Ok(UserRecord {
        id: r.id,
        email: r.email,
        username: r.username,
        password_hash: r.password_hash,
        role: Role::parse(&r.role).unwrap_or(Role::User),
        created_at: r.created_at,
    })
}

/// The columns of `refresh_tokens` that make a [`RefreshTokenRow`].
pub(crate) const REFRESH_TOKEN_COLUMNS: &str =
    "family_id, user_id, expires_at, used_at, revoked_at";

/// A presented refresh token as stored, loaded (locked) by a rotation.
#[derive(FromRow)]
pub(crate) struct RefreshTokenRow {
    family_id: Uuid,
    user_id: i64,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl RefreshTokenRow {
    /// What [`crate::domain::decide_refresh`] decides on.
    pub(crate) fn state(&self) -> RefreshTokenState {
        RefreshTokenState {
            expires_at: self.expires_at,
            used: self.used_at.is_some(),
            revoked: self.revoked_at.is_some(),
        }
    }

    /// The family the token belongs to, which a reuse revokes.
    pub(crate) fn family_id(&self) -> Uuid {
        self.family_id
    }

    /// The user the token was issued to.
    pub(crate) fn user_id(&self) -> i64 {
        self.user_id
    }

    /// `next` as this token's successor: in its family, issued to its user.
    pub(crate) fn successor(&self, next: NewRefreshToken) -> NewRefreshToken {
        NewRefreshToken {
            family_id: self.family_id,
            user_id: self.user_id,
            ..next
        }
    }
}

impl StoreError {
    /// `e`, from a statement writing a user's email and username, as the caller must see
    /// it: a uniqueness conflict is [`StoreError::UsernameTaken`] when the engine's
    /// `on_username` says the username's constraint failed and [`StoreError::EmailTaken`]
    /// otherwise; anything else is [`StoreError::Other`] with `context`.
    pub(crate) fn from_user_write(
        e: sqlx::Error,
        on_username: fn(&dyn DatabaseError) -> bool,
        context: &'static str,
    ) -> Self {
        match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                if on_username(db.as_ref()) {
                    StoreError::UsernameTaken
                } else {
                    StoreError::EmailTaken
                }
            }
            e => anyhow::Error::new(e).context(context).into(),
        }
    }
}
