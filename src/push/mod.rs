//! Notifications for people who are away (SPEC §14): the cryptography of Web Push and
//! the cluster's VAPID identity.
//!
//! A browser's push subscription names an endpoint at its push service (Mozilla's,
//! Google's, Apple's) and two keys of its own. A notification is one HTTP request to that
//! endpoint whose body only the browser can read ([`webpush::encrypt`], RFC 8291's
//! `aes128gcm`) and whose `Authorization` proves it comes from this cluster
//! ([`vapid::VapidKey::authorization`], RFC 8292), so a push service can tell Natter's
//! pushes from anyone else's and the subscription is useless to whoever steals its URL.
//!
//! Every primitive is `ring`'s (already in the tree for TLS): P-256 ECDH and ECDSA,
//! HKDF-SHA-256 and AES-128-GCM. Nothing here is a cipher of its own; this module only
//! puts them together the way the RFCs say.

pub mod vapid;
pub mod webpush;
