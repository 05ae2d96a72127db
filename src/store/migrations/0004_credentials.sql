-- SPEC §10: what the cluster shares to resist hostile clients.

-- The key that signs Natter's own tokens when JWT_SECRET is unset: generated once, by the
-- first node to migrate (under the migration lock), read by every node.
CREATE TABLE signing_keys (
    name text PRIMARY KEY,
    secret bytea NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Failed logins per username (known or not), so the throttle holds across nodes. Times
-- are milliseconds since the epoch on the database's clock, the one clock all nodes share.
CREATE TABLE login_failures (
    username text PRIMARY KEY,
    failures integer NOT NULL,
    last_failure_ms bigint NOT NULL,
    retry_at_ms bigint
);
CREATE INDEX login_failures_last_failure ON login_failures (last_failure_ms);

-- Single-use WebSocket tickets: a random value standing in for a token in a URL for 30 s.
CREATE TABLE ws_tickets (
    ticket bytea PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_expires_at bigint NOT NULL,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX ws_tickets_expiry ON ws_tickets (expires_at_ms);
