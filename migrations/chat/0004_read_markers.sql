-- Read markers (ChatService.MarkRead): the seq up to which a member has read a chat.
-- ListChats counts a member's unread messages from it.
--
-- Expand only: a column with a constant default (no table rewrite on PostgreSQL 11 and
-- later) that the previous version neither writes nor reads (it names its columns, and
-- its inserts into chat_members leave it to the default). Rolling back loses nothing but
-- the markers' meaning while the old version runs; they are still there afterwards.

ALTER TABLE chat_members ADD COLUMN last_read_seq BIGINT NOT NULL DEFAULT 0;
