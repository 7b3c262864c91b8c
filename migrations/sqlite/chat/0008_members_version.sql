-- A chat's membership version (SQLite dialect of migrations/chat/0007_members_version.sql;
-- see there). SQLite triggers run per row: a change of several members bumps the version
-- once per member, which is as good, since only its growth matters.

ALTER TABLE chats ADD COLUMN members_version INTEGER NOT NULL DEFAULT 0;

ALTER TABLE outbox ADD COLUMN members_version INTEGER;

CREATE TRIGGER chat_members_added AFTER INSERT ON chat_members
BEGIN
    UPDATE chats SET members_version = members_version + 1 WHERE id = NEW.chat_id;
END;

CREATE TRIGGER chat_members_removed AFTER DELETE ON chat_members
BEGIN
    UPDATE chats SET members_version = members_version + 1 WHERE id = OLD.chat_id;
END;
