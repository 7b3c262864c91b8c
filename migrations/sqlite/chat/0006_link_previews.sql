-- Link previews (SQLite dialect of migrations/chat/0006_link_previews.sql; see there).
-- SQLite adds one column per statement.

ALTER TABLE messages ADD COLUMN preview_url TEXT;
ALTER TABLE messages ADD COLUMN preview_title TEXT;
ALTER TABLE messages ADD COLUMN preview_description TEXT;
ALTER TABLE messages ADD COLUMN preview_image_url TEXT;
ALTER TABLE messages ADD COLUMN preview_site_name TEXT;
