-- Edited messages (ChatService.EditMessage): when a message's text was last replaced.
--
-- Expand only: a nullable column the previous version neither writes nor reads (it names
-- its columns). Edits also write outbox rows of a new kind, 'message_edited'; a relay
-- claims only the kinds it knows, so a row of a kind it does not know waits for a replica
-- that does (docs/migrations.md).

ALTER TABLE messages ADD COLUMN edited_at TIMESTAMPTZ;
