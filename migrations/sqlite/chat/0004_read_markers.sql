-- Read markers (SQLite dialect of migrations/chat/0004_read_markers.sql; see there): the
-- seq up to which a member has read a chat, 0 when nothing.

ALTER TABLE chat_members ADD COLUMN last_read_seq INTEGER NOT NULL DEFAULT 0;
