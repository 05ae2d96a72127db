//! Requests Natter makes to integrations (SPEC §11), each signed the Standard Webhooks
//! way ([`signing`]): room and cluster-wide webhooks ([`deliver`], to destinations
//! [`destination`] allows) and the before-send moderation hook ([`send_hook`]).

pub mod deliver;
pub mod destination;
pub mod send_hook;
pub mod signing;

use serde::Deserialize;

/// Every event type a webhook can receive.
pub const EVENT_TYPES: [&str; 9] = [
    "message.created",
    "message.edited",
    "message.deleted",
    "reaction.added",
    "reaction.removed",
    "member.joined",
    "member.left",
    "room.deleted",
    "room.created",
];

/// Event types a room's webhook can receive: all but `room.created`, which happens
/// before the room has webhooks.
pub fn room_event_type(kind: &str) -> bool {
    kind != "room.created" && EVENT_TYPES.contains(&kind)
}

/// One entry of `WEBHOOKS`: a webhook that receives every room's events.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWebhook {
    pub url: String,
    #[serde(deserialize_with = "secret")]
    pub secret: signing::Secret,
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<signing::Secret, D::Error> {
    let text = String::deserialize(d)?;
    signing::Secret::parse(&text).map_err(serde::de::Error::custom)
}

/// Parses `WEBHOOKS`: a JSON list of `{url, secret, events?}`.
pub fn parse_cluster_webhooks(
    json: &str,
    allow_private: bool,
) -> Result<Vec<ClusterWebhook>, String> {
    let hooks: Vec<ClusterWebhook> = serde_json::from_str(json)
        .map_err(|e| format!("must be a JSON list of {{url, secret, events?}}: {e}"))?;
    for hook in &hooks {
        destination::check_url(&hook.url, allow_private)
            .map_err(|e| format!("{}: {e}", hook.url))?;
        for kind in hook.events.iter().flatten() {
            if !EVENT_TYPES.contains(&kind.as_str()) {
                return Err(format!("{kind:?} is not an event type"));
            }
        }
    }
    Ok(hooks)
}
