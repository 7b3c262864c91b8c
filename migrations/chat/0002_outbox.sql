-- The transactional outbox of the chat service's events (message_created, message_deleted).
--
-- A row is written in the same statement or transaction as the change it announces, so
-- a committed change always has its event somewhere: the replica that made the change
-- publishes it at once and deletes the row; when that publish fails (NATS unreachable)
-- or the replica dies between commit and publish, the relay of any replica (the chat
-- service's outbox.rs) publishes the row later (at least once: consumers are
-- idempotent). The row names the message rather than copying it: the relay reads the
-- message as it is then.
--
-- Expand only: the previous version neither writes nor reads this table.

CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    chat_id     BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    -- 'message_created' or 'message_deleted'.
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- While a relay publishes the row: until when it owns it.
    claimed_until TIMESTAMPTZ
);

CREATE INDEX outbox_created_idx ON outbox (created_at);
