-- The orchestrator's saga log: one row per saga, one per step it has started.
--
-- Everything a saga needs to go on after a crash is here (the request, the resolved sender,
-- the stored message's seq), and each step is written before and after it runs. A saga
-- being driven holds a lease (renewed while it runs); an orchestrator that starts, or that
-- sweeps periodically, takes over unfinished sagas whose lease ran out.

CREATE TABLE sagas (
    id              UUID PRIMARY KEY,
    -- The authenticated caller who started it; idempotency keys are per caller.
    initiator_id    BIGINT NOT NULL,
    idempotency_key TEXT,
    chat_id         BIGINT NOT NULL,
    -- `from` as given (email or username).
    sender          TEXT NOT NULL,
    text            TEXT NOT NULL,
    sender_id       BIGINT,
    message_seq     BIGINT,
    state           TEXT NOT NULL
                    CHECK (state IN ('running', 'completed', 'compensating', 'compensated', 'failed')),
    error           TEXT NOT NULL DEFAULT '',
    -- The gRPC code a failed saga answers with (invalid_argument, not_found, ...).
    error_code      TEXT NOT NULL DEFAULT '',
    lease_until     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX sagas_idempotency ON sagas (initiator_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX sagas_unfinished ON sagas (lease_until)
    WHERE state IN ('running', 'compensating');

CREATE TABLE saga_steps (
    saga_id     UUID NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL
                CHECK (kind IN ('resolve_sender', 'store_message', 'notify', 'compensate')),
    state       TEXT NOT NULL CHECK (state IN ('started', 'succeeded', 'failed')),
    -- When the step first started; a resumed step keeps it (the notify deadline counts
    -- from here).
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    error       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (saga_id, kind)
);
