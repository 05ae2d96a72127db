-- SPEC §14: how much of a room's traffic reaches a member who is away. Kept on the
-- membership, so leaving a room forgets it. NULL: the room kind's default (`all` in
-- direct rooms, `mentions` elsewhere), so a default that changes needs no migration.
ALTER TABLE members
    ADD COLUMN notification_level text CHECK (notification_level IN ('all', 'mentions', 'none')),
    -- Milliseconds since the epoch; nothing is notified before it.
    ADD COLUMN muted_until bigint;
