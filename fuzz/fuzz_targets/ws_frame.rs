//! Client WebSocket frames (`ClientFrame::parse`): any text gets a frame or an error,
//! never a panic, and a parsed frame names one of the SPEC's types.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::protocol::{ClientFrame, FrameError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(frame) => assert!(
            [
                "subscribe",
                "unsubscribe",
                "send",
                "typing",
                "read_upto",
                "ping"
            ]
            .contains(&frame.kind())
        ),
        Err(
            FrameError::InvalidJson(_) | FrameError::UnknownType(_) | FrameError::InvalidFrame(_),
        ) => {}
    }
});
