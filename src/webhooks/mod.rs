//! Requests Natter makes to integrations (SPEC §11), each signed the Standard Webhooks
//! way ([`signing`]): the before-send moderation hook ([`send_hook`]).

pub mod send_hook;
pub mod signing;
