-- Chats, members and messages of the chat service (SQLite dialect of migrations/chat).
-- Times are microseconds since the Unix epoch (INTEGER), so they sort and compare exactly.

CREATE TABLE chats (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    title            TEXT NOT NULL DEFAULT '',
    creator_id       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    -- The newest message's seq, bumped in the write transaction that inserts the message.
    last_seq         INTEGER NOT NULL DEFAULT 0,
    last_activity_at INTEGER NOT NULL
);

CREATE TABLE chat_members (
    chat_id   INTEGER NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL,
    username  TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (chat_id, user_id)
);

CREATE INDEX chat_members_user_idx ON chat_members (user_id);

CREATE TABLE messages (
    chat_id         INTEGER NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    sender_id       INTEGER NOT NULL,
    sender_username TEXT NOT NULL,
    text            TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    -- Deleted messages keep their row (so the seq is never reused) but lose their text.
    deleted_at      INTEGER,
    PRIMARY KEY (chat_id, seq)
) WITHOUT ROWID;

CREATE UNIQUE INDEX messages_idempotency_idx
    ON messages (chat_id, sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
