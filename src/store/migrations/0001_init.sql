-- Natter's schema. Times are integer milliseconds since the epoch, the unit of the API.

CREATE FUNCTION now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    -- argon2id PHC string; NULL for users who never log in with a password
    -- (external identity providers, `natter token`).
    password_hash text,
    -- Set for users provisioned from an external issuer's token.
    issuer        text,
    subject       text,
    created_at    bigint NOT NULL DEFAULT now_ms(),
    CONSTRAINT users_external_identity UNIQUE (issuer, subject)
);

CREATE TABLE rooms (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('public', 'private', 'direct')),
    owner_id         uuid NOT NULL REFERENCES users (id),
    -- "<lower user id>:<higher user id>" for direct rooms: one room per pair.
    direct_key       text CONSTRAINT rooms_direct_key UNIQUE,
    created_at       bigint NOT NULL DEFAULT now_ms(),
    -- The room's sequence counter. A send increments it in the transaction that
    -- inserts the message; the row lock orders concurrent senders (SPEC §1.1).
    last_seq         bigint NOT NULL DEFAULT 0,
    last_activity_at bigint NOT NULL DEFAULT now_ms(),
    member_count     integer NOT NULL DEFAULT 0
);
-- GET /rooms walks public rooms by id.
CREATE INDEX rooms_public ON rooms (id) WHERE kind = 'public';

CREATE TABLE members (
    room_id       uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id),
    role          text NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at     bigint NOT NULL DEFAULT now_ms(),
    -- Read watermark: the highest seq this member has read. Only moves forward.
    last_read_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
-- A user's rooms (/me/rooms, GET /rooms).
CREATE INDEX members_by_user ON members (user_id, room_id);

-- member_count follows the members table in the same transaction.
CREATE FUNCTION members_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE rooms SET member_count = member_count + 1 WHERE id = NEW.room_id;
    ELSE
        UPDATE rooms SET member_count = member_count - 1 WHERE id = OLD.room_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER members_count AFTER INSERT OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION members_count();

CREATE TABLE messages (
    id            uuid PRIMARY KEY,
    room_id       uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    sender_id     uuid NOT NULL REFERENCES users (id),
    text          text NOT NULL,
    client_msg_id text,
    reply_to      uuid,
    created_at    bigint NOT NULL DEFAULT now_ms(),
    edited_at     bigint,
    deleted       boolean NOT NULL DEFAULT false,
    tsv           tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED,
    -- Pages of a room are ranges of this index, never scans of the room.
    CONSTRAINT messages_room_seq UNIQUE (room_id, seq),
    -- Idempotent send (SPEC §1.5). NULLs are distinct, so sends without a key never clash.
    CONSTRAINT messages_client_msg_id UNIQUE (room_id, sender_id, client_msg_id)
);
CREATE INDEX messages_search ON messages USING gin (tsv);

CREATE TABLE reactions (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    emoji      text NOT NULL,
    user_id    uuid NOT NULL REFERENCES users (id),
    created_at bigint NOT NULL DEFAULT now_ms(),
    PRIMARY KEY (message_id, emoji, user_id)
);
