-- Edited messages (ChatService.EditMessage): when a message's text was last replaced.
--
-- Expand only: a nullable column the previous version neither writes nor reads (it names
-- its columns). Edits also write outbox rows of a new kind, 'message_edited'. A relay of
-- the previous version that claims one fails that batch and leaves its rows to the relays
-- of this version once its claim runs out (the outbox's CLAIM, seconds): events are late
-- during a rollout, never lost.

ALTER TABLE messages ADD COLUMN edited_at TIMESTAMPTZ;
