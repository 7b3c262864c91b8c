-- Link previews: what the first https:// URL of a message's text links to, fetched after
-- the message is stored (services/chat/src/preview.rs). NULL preview_url: no preview.
-- Plain columns, not a JSON value: each is a short text, and both engines read them the
-- same way.
--
-- Expand only: nullable columns the previous version neither writes nor reads (it names
-- its columns). Previews also write outbox rows of a new kind, 'message_previewed'; a
-- relay claims only the kinds it knows, so such a row waits for a replica that does
-- (docs/migrations.md). Rolling back loses nothing: the columns stay, unread.

ALTER TABLE messages
    ADD COLUMN preview_url TEXT,
    ADD COLUMN preview_title TEXT,
    ADD COLUMN preview_description TEXT,
    ADD COLUMN preview_image_url TEXT,
    ADD COLUMN preview_site_name TEXT;
