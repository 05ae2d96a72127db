-- The sign-in throttle counts failed logins per username *and* client address (SPEC
-- §18): counted per username alone, anyone who knew a name could keep its owner locked
-- out with one wrong attempt each time the wait ended. `client` is an IPv4 address or
-- an IPv6 /64 as text (`192.0.2.7`, `2001:db8:1:2::/64`).
--
-- A table of its own rather than a new key for `login_failures`, so nodes of the
-- previous version keep working on the old table during a rolling upgrade; it holds at
-- most a quarter hour of failures and is dropped by a later migration.
CREATE TABLE login_failures_by_client (
    username text NOT NULL,
    client text NOT NULL,
    failures integer NOT NULL,
    last_failure_ms bigint NOT NULL,
    retry_at_ms bigint,
    PRIMARY KEY (username, client)
);
CREATE INDEX login_failures_by_client_last_failure
    ON login_failures_by_client (last_failure_ms);
