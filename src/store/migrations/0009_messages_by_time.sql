-- `read_upto {created_at_ms}` (the single-room socket's form) finds the last message
-- created at or before a time. Read backwards along (room_id, seq), that was a scan of
-- every newer message, and of the whole room for a time before its first message: about
-- 70 ms a frame on a room of 300,000 messages, a frame any member may repeat. With this
-- index it is one descent, whatever the time. `seq` is in the key so that the last of
-- a batch (one commit's messages can share a millisecond) is read from the index alone.
CREATE INDEX messages_room_created ON messages (room_id, created_at, seq);
