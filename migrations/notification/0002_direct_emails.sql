-- Emails sent with SendEmail, one row each, with the same life as a message's deliveries:
-- pending, claimed for sending with a lease ('sending'), then delivered or failed. The row
-- is written before the first try, so an email whose sender stops or dies is found and sent
-- by a replica once its lease runs out. The idempotency key makes a retried call return the
-- first call's row instead of sending again.

CREATE TABLE direct_emails (
    id              BIGSERIAL PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    to_address      TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts        INT NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT '',
    lease_until     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What the sweeper looks at: emails not yet final.
CREATE INDEX direct_emails_open ON direct_emails (id) WHERE state IN ('pending', 'sending');
