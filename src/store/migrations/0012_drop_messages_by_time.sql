-- Migration 0009's index made `read_upto {created_at_ms}` one descent, but every stored
-- message paid one more btree insert for it, under the room's lock in the group commit:
-- the hot room on one node saturated sooner (p50 570-671 ms at 48,000 sends/s against
-- 290-302 without it, BENCHMARKS.md). `Store::seq_at_time` now bisects the room's
-- (room_id, seq) index instead, in one statement of about log2(n) + 2 probes (21 at
-- 300,000 messages), so nothing reads this index any more. IF EXISTS: a database may
-- have been tidied by hand.
DROP INDEX IF EXISTS messages_room_created;
