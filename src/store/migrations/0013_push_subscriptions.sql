-- SPEC §14: where each user's devices receive notifications.

-- One row per device: a browser's Web Push subscription (its push service's endpoint and
-- the browser's keys) or a native app's FCM/APNs token, delivered through the operator's
-- push gateway. A device belongs to one user at a time: when another user signs in on the
-- same browser and subscribes, the row moves to them (the unique index below), so a
-- shared device never shows the previous user's messages.
CREATE TABLE push_subscriptions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('webpush', 'fcm', 'apns')),
    -- The endpoint URL (webpush) or the device token (fcm, apns).
    address text NOT NULL,
    -- webpush only: the browser's P-256 public key (65 bytes) and auth secret (16).
    p256dh bytea,
    auth bytea,
    -- Milliseconds since the epoch.
    created_at bigint NOT NULL DEFAULT now_ms(),
    CHECK ((kind = 'webpush') = (p256dh IS NOT NULL AND auth IS NOT NULL))
);
CREATE UNIQUE INDEX push_subscriptions_device ON push_subscriptions (kind, address);
CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user_id);
