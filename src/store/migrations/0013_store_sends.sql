-- A group commit's batch in one statement (#37): `SELECT * FROM store_sends(…)`, sent
-- on its own, is its own transaction, so a batch costs one round trip and one statement
-- where it cost seven (BEGIN, the room lock, the membership, key and reply checks, the
-- insert, COMMIT) in two round trips. At 500 sends/s over ten quiet rooms nearly every
-- batch is one message, and Postgres spent most of a message's CPU on those statements.
--
-- The decisions are store::commit's (SPEC §1.1, §1.5), taken here in this order for
-- each send, in batch order: a room the sender may not see (missing, or private or
-- direct without membership) is `room_not_found`; a public room they have not joined,
-- `not_member`; a `client_msg_id` they stored in the room before answers with that
-- message (`existing`); one an earlier send of this batch stores answers with it
-- (`repeat`); a `reply_to` that is not a message of the room is `bad_reply`; anything
-- else is `inserted`, numbered from the room's `last_seq + 1` in batch order, so a
-- refused send takes no number and the insert can neither conflict nor leave a hole.
--
-- Two statements inside, in this order, because a function's statements each take a
-- fresh snapshot (READ COMMITTED): the first locks the batch's rooms in id order (so
-- batches of all nodes serialise per room without deadlocking); the second, which reads
-- every check, starts after the locks are held and so sees what the batches, bans and
-- leaves that held them before committed. One statement doing both would check against
-- the snapshot taken before it waited for the lock.
--
-- Each answer carries the stored message; a retry's (`existing`) carries its reactions
-- as its sender sees them, as three parallel arrays in store::rows's order.
CREATE FUNCTION store_sends(
    p_ids uuid[], p_rooms uuid[], p_senders uuid[], p_texts text[], p_keys text[],
    p_replies uuid[])
RETURNS TABLE (
    ord bigint, outcome text,
    id uuid, room_id uuid, seq bigint, sender_id uuid, text text, created_at bigint,
    edited_at bigint, deleted boolean, client_msg_id text, reply_to uuid,
    reaction_emoji text[], reaction_count bigint[], reaction_me boolean[])
LANGUAGE plpgsql VOLATILE
-- Planned once per connection (and again whenever ANALYZE changes the tables' figures),
-- not per call: Postgres otherwise plans the first five calls for their own parameters
-- and, finding a generic plan no cheaper, went on doing so, which cost 1.5 ms a call
-- where the call runs in 0.37 (one backend storing one message per call: 660 calls/s
-- against 2,740 generic, and 2,110 for the seven statements it replaces).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM rooms r WHERE r.id = ANY (p_rooms) ORDER BY r.id FOR UPDATE OF r;
    RETURN QUERY
    WITH sends AS (
        SELECT * FROM unnest(p_ids, p_rooms, p_senders, p_texts, p_keys, p_replies)
               WITH ORDINALITY AS s (id, room_id, sender_id, text, key, reply_to, ord)),
    checked AS (
        SELECT s.*, r.last_seq, k.id AS known_id,
               CASE WHEN r.id IS NULL THEN 'room_not_found'
                    WHEN m.role IS NULL AND r.kind <> 'public' THEN 'room_not_found'
                    WHEN m.role IS NULL THEN 'not_member'
                    WHEN k.id IS NOT NULL THEN 'existing'
                    ELSE 'ok' END AS verdict,
               (s.reply_to IS NULL OR EXISTS (
                    SELECT 1 FROM messages p
                     WHERE p.id = s.reply_to AND p.room_id = s.room_id)) AS reply_ok
          FROM sends s
          LEFT JOIN rooms r ON r.id = s.room_id
          LEFT JOIN members m ON m.room_id = s.room_id AND m.user_id = s.sender_id
          -- `IS NOT NULL`: the key's index covers keyed messages only.
          LEFT JOIN messages k
                 ON s.key IS NOT NULL AND k.client_msg_id IS NOT NULL
                AND k.room_id = s.room_id AND k.sender_id = s.sender_id
                AND k.client_msg_id = s.key),
    -- The first send of each key in this batch that will be stored, up to each send.
    firsts AS (
        SELECT c.*,
               CASE WHEN c.key IS NOT NULL THEN
                    min(c.ord) FILTER (WHERE c.verdict = 'ok' AND c.reply_ok)
                        OVER (PARTITION BY c.room_id, c.sender_id, c.key ORDER BY c.ord)
               END AS first_ord
          FROM checked c),
    decided AS (
        SELECT f.*,
               CASE WHEN f.verdict <> 'ok' THEN f.verdict
                    WHEN f.first_ord < f.ord THEN 'repeat'
                    WHEN NOT f.reply_ok THEN 'bad_reply'
                    ELSE 'inserted' END AS decision
          FROM firsts f),
    numbered AS (
        SELECT d.id, d.room_id, d.sender_id, d.text, d.key, d.reply_to,
               d.last_seq + row_number() OVER (PARTITION BY d.room_id ORDER BY d.ord) AS seq
          FROM decided d WHERE d.decision = 'inserted'),
    -- In `seq` order: each row's `created_at` is read as it is inserted, and
    -- Store::seq_at_time relies on it never decreasing as `seq` grows.
    inserted AS (
        INSERT INTO messages (id, room_id, seq, sender_id, text, client_msg_id, reply_to)
        SELECT n.id, n.room_id, n.seq, n.sender_id, n.text, n.key, n.reply_to
          FROM numbered n ORDER BY n.room_id, n.seq
        RETURNING messages.id, messages.room_id, messages.seq, messages.sender_id,
                  messages.text, messages.created_at, messages.edited_at,
                  messages.deleted, messages.client_msg_id, messages.reply_to),
    moved AS (
        UPDATE rooms SET last_seq = x.last_seq, last_activity_at = now_ms()
          FROM (SELECT n.room_id, max(n.seq) AS last_seq FROM numbered n
                 GROUP BY n.room_id) x
         WHERE rooms.id = x.room_id),
    -- For other nodes' catch-up (migration 0008).
    active AS (
        INSERT INTO room_activity (at, room_id)
        SELECT now_ms() / 1000, x.room_id FROM (SELECT DISTINCT n.room_id FROM numbered n) x
        ON CONFLICT DO NOTHING),
    answered AS (
        SELECT d.ord, d.decision, d.sender_id,
               CASE d.decision WHEN 'inserted' THEN d.id
                               WHEN 'repeat' THEN (SELECT e.id FROM decided e
                                                    WHERE e.ord = d.first_ord)
                               WHEN 'existing' THEN d.known_id END AS message_id
          FROM decided d)
    SELECT a.ord, a.decision, m.id, m.room_id, m.seq, m.sender_id, m.text, m.created_at,
           m.edited_at, m.deleted, m.client_msg_id, m.reply_to,
           re.emoji, re.count, re.me
      FROM answered a
      -- A join, not a lateral subquery per send: a batch of 256 would scan `inserted`
      -- 256 times.
      LEFT JOIN (
            SELECT i.* FROM inserted i
            UNION ALL
            SELECT k.id, k.room_id, k.seq, k.sender_id, k.text, k.created_at, k.edited_at,
                   k.deleted, k.client_msg_id, k.reply_to
              FROM messages k
             WHERE k.id IN (SELECT d.known_id FROM decided d
                             WHERE d.decision = 'existing')) m ON m.id = a.message_id
      LEFT JOIN LATERAL (
            SELECT array_agg(g.emoji ORDER BY g.first_at, g.emoji) AS emoji,
                   array_agg(g.n ORDER BY g.first_at, g.emoji) AS count,
                   array_agg(g.me ORDER BY g.first_at, g.emoji) AS me
              FROM (SELECT x.emoji, count(*) AS n, bool_or(x.user_id = a.sender_id) AS me,
                           min(x.created_at) AS first_at
                      FROM reactions x
                     WHERE a.decision = 'existing' AND NOT m.deleted
                       AND x.message_id = a.message_id
                     GROUP BY x.emoji) g) re ON true
     ORDER BY a.ord;
END $$;
