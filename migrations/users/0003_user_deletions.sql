-- Tombstones of deleted accounts (AuthService.ListDeletedUsers): one row per deletion,
-- written in the deletion's transaction, so that services keeping data about users (the
-- chat service's memberships and message senders) learn of every deletion, in order, by
-- reading this list from the id they reached. Nothing here names the person: only the id
-- that no account will have again.
--
-- Expand only: a new table the previous version neither reads nor writes (an account it
-- deletes has no tombstone; docs/migrations.md).

CREATE TABLE user_deletions (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
