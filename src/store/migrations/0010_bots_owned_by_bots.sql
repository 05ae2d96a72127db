-- SPEC §18: only people own bots. Bots made by other bots (allowed until now) are
-- deleted as `DELETE /v1/bots/{id}` deletes one: marked deleted, their keys removed (the
-- rows stay, because their messages and rooms still name them). Every bot below a bot
-- is owned by a bot, so one pass reaches them all.
WITH doomed AS (
    UPDATE users AS child SET deleted_at = coalesce(child.deleted_at, now_ms())
    FROM users AS parent
    WHERE child.bot_owner = parent.id AND parent.bot_owner IS NOT NULL
    RETURNING child.id
)
DELETE FROM bot_keys WHERE bot_id IN (SELECT id FROM doomed);
