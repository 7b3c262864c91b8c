-- Rate-limit counters of the auth service, shared by every replica (so N replicas do not
-- allow N times the limit). One row per limited key: a scope and an account or a client
-- address, e.g. 'login-account:alice@example.com' or 'login-address:203.0.113.7'.
-- `hits` counts the events of the current fixed window, which ends at `reset_at`; the first
-- event after `reset_at` starts a new window. Rows whose window has ended are deleted by
-- the service (at most once a minute per replica), so the table stays small.
-- Expand-only: the previous version never reads this table.

CREATE TABLE rate_limits (
    key      TEXT PRIMARY KEY,
    hits     BIGINT NOT NULL,
    reset_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX rate_limits_reset_at_idx ON rate_limits (reset_at);
