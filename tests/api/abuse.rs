//! Left empty by the split of issue #31: its tests now live in files named for what they
//! test. Only this re-export remains, for compat.rs's `abuse::refused_handshake`; once
//! compat.rs imports it from `websocket_admission`, delete this file and its `mod` line.

pub(crate) use crate::websocket_admission::refused_handshake;
