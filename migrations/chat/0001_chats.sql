-- Chats, members and messages of the chat service.

CREATE TABLE chats (
    id               BIGSERIAL PRIMARY KEY,
    title            TEXT NOT NULL DEFAULT '',
    creator_id       BIGINT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The newest message's seq. Incremented under the row lock in the transaction that
    -- inserts the message, so seqs have no gap and no reuse even across replicas.
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_activity_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chat_members (
    chat_id   BIGINT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id   BIGINT NOT NULL,
    username  TEXT NOT NULL,
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, user_id)
);

CREATE INDEX chat_members_user_idx ON chat_members (user_id);

CREATE TABLE messages (
    chat_id         BIGINT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    sender_id       BIGINT NOT NULL,
    sender_username TEXT NOT NULL,
    text            TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Deleted messages keep their row (so the seq is never reused) but lose their text.
    deleted_at      TIMESTAMPTZ,
    PRIMARY KEY (chat_id, seq)
);

CREATE UNIQUE INDEX messages_idempotency_idx
    ON messages (chat_id, sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
