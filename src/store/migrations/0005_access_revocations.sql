-- SPEC §10, losing access ends delivery even on a node that missed the NATS event.
-- Every loss of access to a private or direct room bumps the room's access_version (in
-- the statement that deletes the membership), and records why. Each node compares the
-- versions of its active rooms with the ones it knows every catch-up tick, and checks
-- its subscribers again when one moved.
ALTER TABLE rooms ADD COLUMN access_version bigint NOT NULL DEFAULT 0;

CREATE TABLE access_revocations (
    room_id uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    reason text NOT NULL CHECK (reason IN ('removed', 'left')),
    PRIMARY KEY (room_id, user_id)
);
