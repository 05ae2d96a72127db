-- SPEC §11 Bots: users owned by another user, authenticated by an opaque API key.

-- A bot's owner (NULL for people); `deleted_at` set when its owner deletes it: the row
-- stays, because its messages and rooms still name it.
ALTER TABLE users ADD COLUMN bot_owner uuid REFERENCES users (id);
ALTER TABLE users ADD COLUMN deleted_at bigint;
CREATE INDEX users_bot_owner ON users (bot_owner) WHERE bot_owner IS NOT NULL;

-- One key per bot, stored only as its SHA-256 (the key is 256 random bits: a fast hash
-- is enough, and lets every request look it up by hash).
CREATE TABLE bot_keys (
    key_hash bytea PRIMARY KEY,
    bot_id uuid NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    created_at bigint NOT NULL DEFAULT now_ms()
);

-- A ticket bought with a bot key carries the key's hash, so the socket it opens is
-- closed when the key is replaced or deleted, like one opened with the key itself.
ALTER TABLE ws_tickets ADD COLUMN bot_key bytea;
