-- The notifier's delivery records: one row per message it has seen, one per recipient.
--
-- The message row is written once, by whichever path (the JetStream event or the saga's
-- NotifyMessage) sees the message first, together with its recipients, so every later
-- attempt works from the same recipient list and the same content. A delivery is claimed
-- for sending with a lease; a redelivered event or a second replica finds it claimed or
-- finished and never sends it twice (a replica that dies mid-send leaves a lease that
-- expires, after which the delivery is retried).

CREATE TABLE notified_messages (
    chat_id         BIGINT NOT NULL,
    seq             BIGINT NOT NULL,
    sender_id       BIGINT NOT NULL,
    sender_username TEXT NOT NULL,
    chat_title      TEXT NOT NULL,
    text            TEXT NOT NULL,
    sent_at         TIMESTAMPTZ NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, seq)
);

CREATE TABLE deliveries (
    chat_id      BIGINT NOT NULL,
    seq          BIGINT NOT NULL,
    recipient_id BIGINT NOT NULL,
    email        TEXT NOT NULL,
    username     TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts     INT NOT NULL DEFAULT 0,
    error        TEXT NOT NULL DEFAULT '',
    -- While state = 'sending': until when the claimer owns it.
    lease_until  TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, seq, recipient_id),
    FOREIGN KEY (chat_id, seq) REFERENCES notified_messages (chat_id, seq) ON DELETE CASCADE
);

-- Permanent failures, for operators: "recorded and reported, never silently dropped".
CREATE INDEX deliveries_failed ON deliveries (updated_at) WHERE state = 'failed';
