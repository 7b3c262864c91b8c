-- Times as text, as every other SQLite schema of grpc-chat stores them: RFC 3339 in UTC
-- with always six fractional digits ('2024-05-01T12:00:00.123456Z'; see
-- migrations/sqlite/users/0001_users.sql). Fixed width, so comparing two as text compares
-- them as times, and sqlx decodes the text into a time by itself: the chat store maps its
-- rows once for both engines. Until now the chat schema kept integer microseconds since
-- the Unix epoch.
--
-- SQLite cannot change a column's type, so every table with a time column is rebuilt
-- (https://sqlite.org/lang_altertable.html#otheralter): create the new table, copy the rows
-- converting each time, drop the old table, rename the new one, recreate the indexes. The
-- tables have no triggers and no views name them. Columns, their order, constraints and
-- indexes stay as they were; only the time columns change from INTEGER to TEXT.
--
-- Foreign keys stay enforced (the migration runs in one transaction, where
-- PRAGMA foreign_keys cannot be switched off). Dropping the old `chats` would then delete
-- every row whose foreign key names `chats` (ON DELETE CASCADE), so the new children name
-- the new parent, `chats_new`, and the old children are dropped before the old parent:
-- when `chats` goes, nothing refers to it. Renaming `chats_new` to `chats` rewrites the
-- children's REFERENCES clauses to `chats` (SQLite 3.26 and later).
--
-- AUTOINCREMENT promises that an id is never handed out again, but its counter
-- (sqlite_sequence) belongs to the table's name: the new table would restart after the
-- highest id copied, and ids of deleted chats and published outbox rows would come back.
-- So each new table takes the old table's counter before the old one is dropped, and the
-- rename carries it over.
--
-- The conversion keeps microseconds exactly: whole seconds through strftime, the
-- remainder as six digits. The remainder is taken modulo 10^6 into 0..999999 and the
-- seconds are floored, so a time before 1970 would convert right too (every stored time
-- is Utc::now(), plus at most the outbox claim of seconds: positive and far from the
-- edges). A time past 9999-12-31 has no text form (strftime gives NULL): in a NOT NULL
-- column the migration fails, rolling back whole, instead of storing something wrong.
-- NULL stays NULL.

-- Chats -----------------------------------------------------------------------------------

CREATE TABLE chats_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    title            TEXT NOT NULL DEFAULT '',
    creator_id       INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    -- The newest message's seq, bumped in the write transaction that inserts the message.
    last_seq         INTEGER NOT NULL DEFAULT 0,
    last_activity_at TEXT NOT NULL
);

INSERT INTO chats_new (id, title, creator_id, created_at, last_seq, last_activity_at)
SELECT id, title, creator_id,
       strftime('%Y-%m-%dT%H:%M:%S', (created_at - (created_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (created_at % 1000000 + 1000000) % 1000000),
       last_seq,
       strftime('%Y-%m-%dT%H:%M:%S', (last_activity_at - (last_activity_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (last_activity_at % 1000000 + 1000000) % 1000000)
FROM chats;

CREATE TABLE chat_members_new (
    chat_id       INTEGER NOT NULL REFERENCES chats_new (id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL,
    username      TEXT NOT NULL,
    joined_at     TEXT NOT NULL,
    last_read_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);

INSERT INTO chat_members_new (chat_id, user_id, username, joined_at, last_read_seq)
SELECT chat_id, user_id, username,
       strftime('%Y-%m-%dT%H:%M:%S', (joined_at - (joined_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (joined_at % 1000000 + 1000000) % 1000000),
       last_read_seq
FROM chat_members;

CREATE TABLE messages_new (
    chat_id             INTEGER NOT NULL REFERENCES chats_new (id) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL,
    sender_id           INTEGER NOT NULL,
    sender_username     TEXT NOT NULL,
    text                TEXT NOT NULL,
    idempotency_key     TEXT,
    created_at          TEXT NOT NULL,
    -- Deleted messages keep their row (so the seq is never reused) but lose their text.
    deleted_at          TEXT,
    edited_at           TEXT,
    preview_url         TEXT,
    preview_title       TEXT,
    preview_description TEXT,
    preview_image_url   TEXT,
    preview_site_name   TEXT,
    PRIMARY KEY (chat_id, seq)
) WITHOUT ROWID;

INSERT INTO messages_new (chat_id, seq, sender_id, sender_username, text, idempotency_key,
                          created_at, deleted_at, edited_at, preview_url, preview_title,
                          preview_description, preview_image_url, preview_site_name)
SELECT chat_id, seq, sender_id, sender_username, text, idempotency_key,
       strftime('%Y-%m-%dT%H:%M:%S', (created_at - (created_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (created_at % 1000000 + 1000000) % 1000000),
       strftime('%Y-%m-%dT%H:%M:%S', (deleted_at - (deleted_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (deleted_at % 1000000 + 1000000) % 1000000),
       strftime('%Y-%m-%dT%H:%M:%S', (edited_at - (edited_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (edited_at % 1000000 + 1000000) % 1000000),
       preview_url, preview_title, preview_description, preview_image_url, preview_site_name
FROM messages;

DELETE FROM sqlite_sequence WHERE name = 'chats_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'chats_new', seq FROM sqlite_sequence WHERE name = 'chats';

-- The children first: once they are gone, nothing refers to the old `chats`.
DROP TABLE chat_members;
DROP TABLE messages;
DROP TABLE chats;

ALTER TABLE chats_new RENAME TO chats;
ALTER TABLE chat_members_new RENAME TO chat_members;
ALTER TABLE messages_new RENAME TO messages;

CREATE INDEX chat_members_user_idx ON chat_members (user_id);

CREATE UNIQUE INDEX messages_idempotency_idx
    ON messages (chat_id, sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The outbox ------------------------------------------------------------------------------

CREATE TABLE outbox_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id       INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    claimed_until TEXT,
    user_id       INTEGER
);

INSERT INTO outbox_new (id, chat_id, seq, kind, created_at, claimed_until, user_id)
SELECT id, chat_id, seq, kind,
       strftime('%Y-%m-%dT%H:%M:%S', (created_at - (created_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (created_at % 1000000 + 1000000) % 1000000),
       strftime('%Y-%m-%dT%H:%M:%S', (claimed_until - (claimed_until % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (claimed_until % 1000000 + 1000000) % 1000000),
       user_id
FROM outbox;

DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';

DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;

CREATE INDEX outbox_created_idx ON outbox (created_at);

-- Deleted accounts ------------------------------------------------------------------------

CREATE TABLE deleted_users_new (
    user_id    INTEGER PRIMARY KEY,
    deleted_at TEXT NOT NULL
);

INSERT INTO deleted_users_new (user_id, deleted_at)
SELECT user_id,
       strftime('%Y-%m-%dT%H:%M:%S', (deleted_at - (deleted_at % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')
           || printf('.%06dZ', (deleted_at % 1000000 + 1000000) % 1000000)
FROM deleted_users;

DROP TABLE deleted_users;
ALTER TABLE deleted_users_new RENAME TO deleted_users;
