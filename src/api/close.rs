//! The one place where a socket's [`CloseReason`] becomes a WebSocket close code and
//! reason, as [`super::error`] is for errors and HTTP statuses.
//!
//! Codes below 4000 are RFC 6455's; 4001 and 4008 are Natter's (SPEC §2, §5, §11). A
//! client reconnects and resumes with `since_seq` after any of them but 4001, after which
//! it needs a new token first.

use crate::model::CloseReason;

/// The close frame that ends a socket for `reason`: its code and a short reason text
/// (at most 123 bytes, as a close frame allows).
pub fn close_frame(reason: CloseReason) -> (u16, &'static str) {
    match reason {
        CloseReason::Normal => (1000, "bye"),
        CloseReason::Idle => (1001, "idle"),
        CloseReason::FrameTooLarge => (1009, "frame too large"),
        CloseReason::WriteFailed => (1011, "write failed"),
        CloseReason::Restart => (1012, "service restart: reconnect and resume"),
        CloseReason::HistoryUnavailable => (1013, "history unavailable: resume with since_seq"),
        CloseReason::TokenExpired => (4001, "token expired"),
        CloseReason::KeyRevoked => (4001, "bot key replaced or deleted"),
        CloseReason::TooSlow => (4008, "too slow: resume with since_seq"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_fits_in_a_close_frame() {
        use CloseReason::*;
        let reasons = [
            Normal,
            Idle,
            FrameTooLarge,
            WriteFailed,
            Restart,
            HistoryUnavailable,
            TokenExpired,
            KeyRevoked,
            TooSlow,
        ];
        for reason in reasons {
            let (code, text) = close_frame(reason);
            assert!((1000..5000).contains(&code), "{reason:?}");
            assert!(text.len() <= 123, "{reason:?}");
        }
    }
}
