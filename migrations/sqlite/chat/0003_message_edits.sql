-- Edited messages (SQLite dialect of migrations/chat/0003_message_edits.sql; see there):
-- when a message's text was last replaced, in microseconds since the epoch, NULL when never.

ALTER TABLE messages ADD COLUMN edited_at INTEGER;
