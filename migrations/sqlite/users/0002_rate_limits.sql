-- Rate-limit counters of the auth service: the SQLite dialect of
-- migrations/users/0002_rate_limits.sql, with the same table, columns and index.
-- One row per limited key (a scope and an account or a client address); `hits` counts the
-- events of the current fixed window, which ends at `reset_at` (RFC 3339 text in UTC with
-- microseconds, like every time in this schema, so text order is time order). Rows whose
-- window has ended are deleted by the service. Expand-only.

CREATE TABLE rate_limits (
    key      TEXT NOT NULL PRIMARY KEY,
    hits     INTEGER NOT NULL,
    reset_at TEXT NOT NULL
) STRICT;

CREATE INDEX rate_limits_reset_at_idx ON rate_limits (reset_at);
