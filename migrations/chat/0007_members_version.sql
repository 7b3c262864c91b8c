-- A chat's membership version: how many times its membership has changed.
--
-- The notifier keeps each chat's members for a short while rather than asking for them
-- with every message. A message stored after a member left must not be emailed to them,
-- so each new message carries the version it was stored under (returned by its insert,
-- kept in its outbox row, published beside the event), ListMembers answers with the
-- version it read, and the notifier uses what it has only for messages up to that version.
--
-- The version is bumped by triggers, not by the code that changes memberships: the message
-- insert reads it under the chat's row lock, which every membership change holds as well,
-- and a trigger also covers a replica of the previous version during a rolling upgrade
-- (whose messages carry no version: the notifier reads the members afresh for those).
--
-- Expand only: new columns with defaults, and triggers the previous version does not see.

ALTER TABLE chats ADD COLUMN members_version BIGINT NOT NULL DEFAULT 0;

-- The version a message_created row's message was stored under; NULL for other kinds.
ALTER TABLE outbox ADD COLUMN members_version BIGINT;

CREATE FUNCTION chat_members_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chats SET members_version = members_version + 1
    WHERE id IN (SELECT DISTINCT chat_id FROM added);
    RETURN NULL;
END
$$;

CREATE FUNCTION chat_members_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A chat deleted with its members (ON DELETE CASCADE) is gone: nothing to update.
    UPDATE chats SET members_version = members_version + 1
    WHERE id IN (SELECT DISTINCT chat_id FROM removed);
    RETURN NULL;
END
$$;

CREATE TRIGGER chat_members_added AFTER INSERT ON chat_members
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION chat_members_added();

CREATE TRIGGER chat_members_removed AFTER DELETE ON chat_members
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION chat_members_removed();
