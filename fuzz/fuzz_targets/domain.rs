//! The domain parsers (`natter::domain`): any input is accepted or refused without a
//! panic, and what is accepted keeps the promises the API and the OpenAPI document make.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::domain::{
    ClientMsgId, DisplayName, Emoji, MessageText, PageLimit, RoomName, Username, parse_seq,
};

/// No control characters but tab and newline, and something that is not whitespace.
fn is_chat_text(text: &str) -> bool {
    !text.trim().is_empty()
        && !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let number = i64::from_le_bytes(data[..8].try_into().unwrap());
        if let Ok(limit) = PageLimit::parse(Some(number)) {
            assert!((1..=200).contains(&limit.get()));
        }
        if let Ok(seq) = parse_seq("seq", number) {
            assert!(seq >= 0);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = Username::parse(text) {
        let name = name.as_str();
        assert!((3..=32).contains(&name.len()));
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        );
    }
    if let Ok(name) = DisplayName::parse(text) {
        let name = name.into_inner();
        assert!(name.chars().count() <= 64 && is_chat_text(&name) && name == name.trim());
    }
    if let Ok(name) = RoomName::parse(text) {
        let name = name.as_str();
        assert!(name.chars().count() <= RoomName::MAX_CHARS && is_chat_text(name));
        assert_eq!(name, name.trim());
    }
    if let Ok(message) = MessageText::parse(text, 4000) {
        assert_eq!(
            message.as_str(),
            text,
            "message text is kept exactly as sent"
        );
        assert!(text.chars().count() <= 4000 && is_chat_text(text));
    }
    if let Ok(key) = ClientMsgId::parse(text) {
        let count = key.as_str().chars().count();
        assert!((1..=128).contains(&count) && !key.as_str().chars().any(char::is_control));
    }
    if let Ok(emoji) = Emoji::parse(text) {
        let count = emoji.as_str().chars().count();
        assert!((1..=32).contains(&count));
        assert!(
            !emoji
                .as_str()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        );
    }
});
