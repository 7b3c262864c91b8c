-- A message's emails kept in its own row while they share one fate.
--
-- Almost every message is claimed whole when it is recorded and all its emails go out on
-- the first try. One row per recipient, created claimed and then updated to delivered, made
-- that two heap tuples and two index entries per recipient: most of PostgreSQL's work per
-- message. Now the message row carries its recipients and a state for all of them:
--   'sending'   claimed whole until lease_until (every email untried, or tried and not
--               yet recorded);
--   'delivered' every email went out on its first try;
--   'split'     the emails went different ways (one failed a try, was given back, or
--               ended alone): each is a row of `deliveries`, which the store writes in
--               the same statement that sets 'split', from the state the row had.
-- Rows recorded before this migration have their deliveries rows already: 'split'.

ALTER TABLE notified_messages
    ADD COLUMN recipient_ids       BIGINT[] NOT NULL DEFAULT '{}',
    ADD COLUMN recipient_emails    TEXT[]   NOT NULL DEFAULT '{}',
    ADD COLUMN recipient_usernames TEXT[]   NOT NULL DEFAULT '{}',
    ADD COLUMN state               TEXT     NOT NULL DEFAULT 'split'
        CHECK (state IN ('sending', 'delivered', 'split')),
    ADD COLUMN lease_until         TIMESTAMPTZ,
    -- When the state last changed; set on every row written since this migration.
    ADD COLUMN updated_at          TIMESTAMPTZ;

-- Each row is updated once soon after it is written (sending to delivered), on no indexed
-- column: with room left on its page the update stays there (a HOT update) and adds no
-- index entry.
ALTER TABLE notified_messages SET (fillfactor = 50);
