-- SPEC §11 webhooks: a durable record of every room change, and delivery state.

-- Every change to a room other than a new message (edits, deletes, reactions, members,
-- the room itself) is recorded in the transaction that makes it, at a position in the
-- room's order: (after_seq, n) is the n-th change since message `after_seq`. A message
-- is its own record, at (seq, 0). Positions are handed out under the room's row lock,
-- which the group commit also takes, so they follow commit order: a reader always sees
-- a prefix of the room's history. No foreign key: `room.deleted` outlives its room.
ALTER TABLE rooms ADD COLUMN event_after_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN event_n integer NOT NULL DEFAULT 0;

CREATE TABLE room_events (
    room_id uuid NOT NULL,
    after_seq bigint NOT NULL,
    n integer NOT NULL,
    id uuid NOT NULL,
    type text NOT NULL,
    -- The event's `data` object, as JSON text.
    data text NOT NULL,
    created_at bigint NOT NULL DEFAULT now_ms(),
    PRIMARY KEY (room_id, after_seq, n)
);
CREATE INDEX room_events_created ON room_events (created_at);

CREATE FUNCTION record_room_event(p_room uuid, p_type text, p_data text)
RETURNS void LANGUAGE sql AS $$
    WITH position AS (
        UPDATE rooms
           SET event_n = CASE WHEN event_after_seq = last_seq THEN event_n + 1 ELSE 1 END,
               event_after_seq = last_seq
         WHERE id = p_room
     RETURNING event_after_seq, event_n)
    INSERT INTO room_events (room_id, after_seq, n, id, type, data)
    SELECT p_room, event_after_seq, event_n, gen_random_uuid(), p_type, p_data FROM position;
$$;

-- Room webhooks (room_id set, managed by the room's owner) and cluster-wide ones
-- (room_id NULL, from WEBHOOKS, keyed by config_key so every node maps an entry to
-- the same row). No foreign key on room_id: a room's webhooks deliver its
-- `room.deleted` after the room is gone, then are removed.
CREATE TABLE webhooks (
    id uuid PRIMARY KEY,
    room_id uuid,
    url text NOT NULL,
    -- NULL: every event type.
    events text[],
    secret bytea NOT NULL,
    -- The secret before the last rotation, also signed with until old_secret_until.
    old_secret bytea,
    old_secret_until bigint,
    -- active | failing | disabled
    state text NOT NULL DEFAULT 'active',
    config_key text UNIQUE,
    created_at bigint NOT NULL DEFAULT now_ms()
);
CREATE INDEX webhooks_room ON webhooks (room_id);

-- Where each webhook stands in each room: the last position delivered (or given up).
-- One node at a time holds a (webhook, room) lease and delivers its events in order.
CREATE TABLE webhook_cursors (
    webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    room_id uuid NOT NULL,
    seq bigint NOT NULL,
    n integer NOT NULL,
    failures integer NOT NULL DEFAULT 0,
    failing_since bigint,
    next_attempt_at bigint NOT NULL DEFAULT 0,
    leased_by text,
    lease_until bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (webhook_id, room_id)
);
CREATE INDEX webhook_cursors_room ON webhook_cursors (room_id);

-- Recent attempts, for GET …/deliveries (trimmed to the latest few hundred per webhook).
CREATE TABLE webhook_deliveries (
    webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    at bigint NOT NULL,
    event_id text NOT NULL,
    type text NOT NULL,
    attempt integer NOT NULL,
    status_code integer,
    error text,
    duration_ms integer NOT NULL
);
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (webhook_id, at DESC);
