-- Which rooms changed lately (#23). Each node's relay compares the rooms it serves with
-- Postgres to find messages (and losses of access) NATS did not bring it. Comparing every
-- served room every 2 s cost a query with one id per room and a wake-up per room, with no
-- message sent; now it reads only the rooms that changed in the last minute.
--
-- A send's batch, a loss of access and a room's deletion each record (second, room) in
-- their own transaction, so a row is visible exactly when what it announces is. Once per
-- room and second: a hot room's later batches in the same second find the row and write
-- nothing. No foreign key: a deleted room's last row must outlive it.
CREATE TABLE room_activity (
    at      bigint NOT NULL,
    room_id uuid NOT NULL,
    PRIMARY KEY (at, room_id)
);
