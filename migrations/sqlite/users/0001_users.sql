-- Accounts and refresh tokens of the auth service: the SQLite dialect of
-- migrations/users/0001_users.sql, with the same tables, columns, constraints and indexes.
--
-- Times are TEXT in one fixed form, RFC 3339 in UTC with microseconds
-- ('2024-05-01T12:00:00.123456Z'), so that comparing two as text compares them as times.
-- The stores write them that way; the defaults produce the same form.
-- UUIDs are their 16 bytes as a BLOB, as sqlx encodes them. Tables are STRICT, so a value
-- of the wrong type is refused rather than stored.

CREATE TABLE users (
    -- AUTOINCREMENT: an id is never handed out again, even after its user is deleted.
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT NOT NULL UNIQUE,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
) STRICT;

-- One row per refresh token ever issued. Only the SHA-256 of the token is kept.
-- A family is every token descended from one login; reuse of a used token revokes it whole.
CREATE TABLE refresh_tokens (
    id          BLOB NOT NULL PRIMARY KEY,
    family_id   BLOB NOT NULL,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  BLOB NOT NULL UNIQUE,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    revoked_at  TEXT
) STRICT;

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);
