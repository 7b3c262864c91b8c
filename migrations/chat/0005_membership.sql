-- Membership over time (ChatService.AddMembers, RemoveMember, LeaveChat) and deleted
-- accounts.
--
-- Member events go through the outbox like message events: a row of kind 'member_added'
-- or 'member_removed' names the chat and the user (seq is 0 for them). A relay claims
-- only the kinds it knows, so the previous version leaves these rows to this one.
--
-- user_deletions_applied remembers how far this database has applied the auth service's
-- list of deleted accounts (AuthService.ListDeletedUsers): one row, the last tombstone id
-- applied. Applying is idempotent, so replicas may race on it. deleted_users keeps the
-- accounts applied, so that a deleted account's access token (valid for minutes) cannot
-- create a chat or invite, and recent deletions are applied again in case a membership
-- was committed while the first pass ran.
--
-- Expand only: a nullable column and a new table, neither read nor written by the
-- previous version.

ALTER TABLE outbox ADD COLUMN user_id BIGINT;

CREATE TABLE user_deletions_applied (
    id            INT PRIMARY KEY CHECK (id = 1),
    last_deletion BIGINT NOT NULL
);

INSERT INTO user_deletions_applied (id, last_deletion) VALUES (1, 0);

CREATE TABLE deleted_users (
    user_id    BIGINT PRIMARY KEY,
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
