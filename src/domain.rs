//! Validated input types.
//!
//! Handlers parse raw request fields into these before touching the store, so a value of
//! one of these types is valid by construction and the store never sees bad input. A
//! failed parse names the field and says why, which becomes a SPEC §5 `400`.

use std::fmt;

/// Why a field was rejected; becomes `400 invalid_input`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    /// The request field at fault, as the client spelled it.
    pub field: &'static str,
    /// What is wrong with it, in words a client developer can act on.
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// A login name: 3–32 characters of `[a-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok_len = (3..=32).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if ok_len && ok_chars {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidInput::new(
                "username",
                "must be 3-32 characters of a-z, 0-9, '_', '.' or '-'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password of at least 8 characters (and at most 1024, so hashing stays bounded).
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        match raw.chars().count() {
            0..8 => Err(InvalidInput::new(
                "password",
                "must be at least 8 characters",
            )),
            8..=1024 => Ok(Self(raw.to_string())),
            _ => Err(InvalidInput::new(
                "password",
                "must be at most 1024 characters",
            )),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Whether `text` could be something a person wrote: not blank, and no control
/// characters but tab and newline. The OpenAPI document states the same rule as a
/// pattern (`api::rest::CHAT_TEXT_PATTERN`).
pub fn is_chat_text(text: &str) -> bool {
    !text.trim().is_empty() && !text.chars().any(is_forbidden_control)
}

fn is_forbidden_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// Trims `raw` and checks it is 1..=`max` characters and not blank.
fn bounded_text(
    field: &'static str,
    raw: &str,
    max: usize,
    trim: bool,
) -> Result<String, InvalidInput> {
    let value = if trim { raw.trim() } else { raw };
    if value.trim().is_empty() {
        return Err(InvalidInput::new(field, "must not be empty or blank"));
    }
    if value.chars().count() > max {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(is_forbidden_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_string())
}

/// A user's shown name: 1–64 characters.
#[derive(Debug, Clone)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        bounded_text("display_name", raw, 64, true).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A room's name: 1–100 characters.
#[derive(Debug, Clone)]
pub struct RoomName(String);

impl RoomName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        bounded_text("name", raw, Self::MAX_CHARS, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body: 1..=`max` characters (4000 by default), not blank. Kept exactly as
/// sent, leading and trailing whitespace included, since chat text can be formatted.
#[derive(Debug, Clone)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, InvalidInput> {
        bounded_text("text", raw, max_chars, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The sender's idempotency key: 1–128 printable characters.
#[derive(Debug, Clone)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let count = raw.chars().count();
        if count == 0 || count > 128 || raw.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "client_msg_id",
                "must be 1-128 printable characters",
            ));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reaction (SPEC §10): 1–32 characters of Unicode emoji, with their skin tones,
/// joiners and keycaps, and nothing else. Each emoji is stored fully qualified, so `❤`
/// and `❤️` are one reaction.
#[derive(Debug, Clone)]
pub struct Emoji(String);

impl Emoji {
    pub const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let invalid = || InvalidInput::new("emoji", "must be 1-32 characters of Unicode emoji");
        let chars: Vec<(usize, char)> = raw.char_indices().collect();
        if chars.is_empty() || chars.len() > Self::MAX_CHARS {
            return Err(invalid());
        }
        // The longest known emoji at each position: sequences (families, flags, skin
        // tones) are longer than the emoji they are made of.
        let mut canonical = String::new();
        let mut at = 0;
        while at < chars.len() {
            let start = chars[at].0;
            let (next, emoji) = (at + 1..=chars.len())
                .rev()
                .find_map(|end| {
                    let stop = chars.get(end).map_or(raw.len(), |&(byte, _)| byte);
                    emojis::get(&raw[start..stop]).map(|emoji| (end, emoji))
                })
                .ok_or_else(invalid)?;
            canonical.push_str(emoji.as_str());
            at = next;
        }
        if canonical.chars().count() > Self::MAX_CHARS {
            return Err(invalid());
        }
        Ok(Self(canonical))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A page size: 1..=200, defaulting to 50 (SPEC §5).
#[derive(Debug, Clone, Copy)]
pub struct PageLimit(u16);

impl PageLimit {
    pub const MAX: u16 = 200;
    pub const DEFAULT: u16 = 50;

    pub fn parse(raw: Option<i64>) -> Result<Self, InvalidInput> {
        match raw {
            None => Ok(Self(Self::DEFAULT)),
            Some(n) if (1..=i64::from(Self::MAX)).contains(&n) => Ok(Self(n as u16)),
            Some(_) => Err(InvalidInput::new(
                "limit",
                format!("must be between 1 and {}", Self::MAX),
            )),
        }
    }

    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
}

/// A position in a room's message sequence given by a client: zero or more.
pub fn parse_seq(field: &'static str, raw: i64) -> Result<i64, InvalidInput> {
    if raw < 0 {
        return Err(InvalidInput::new(field, "must be zero or more"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_spec_alphabet_and_length() {
        assert!(Username::parse("alice_1.x-y").is_ok());
        assert!(Username::parse("al").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
        assert!(Username::parse("Alice").is_err());
        assert!(Username::parse("al ice").is_err());
    }

    #[test]
    fn passwords_need_eight_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
    }

    #[test]
    fn message_text_is_bounded_and_not_blank() {
        assert!(MessageText::parse("hi", 4000).is_ok());
        assert_eq!(MessageText::parse("  hi ", 4000).unwrap().as_str(), "  hi ");
        assert!(MessageText::parse(" \n\t ", 4000).is_err());
        assert!(MessageText::parse("", 4000).is_err());
        assert!(MessageText::parse(&"é".repeat(4000), 4000).is_ok());
        assert!(MessageText::parse(&"é".repeat(4001), 4000).is_err());
        assert!(MessageText::parse("a\u{0}b", 4000).is_err());
    }

    #[test]
    fn room_names_are_trimmed_and_bounded() {
        assert_eq!(RoomName::parse("  general ").unwrap().as_str(), "general");
        assert!(RoomName::parse(&"x".repeat(101)).is_err());
        assert!(RoomName::parse("   ").is_err());
    }

    #[test]
    fn page_limits_default_to_fifty_and_cap_at_two_hundred() {
        assert_eq!(PageLimit::parse(None).unwrap().get(), 50);
        assert_eq!(PageLimit::parse(Some(200)).unwrap().get(), 200);
        assert!(PageLimit::parse(Some(201)).is_err());
        assert!(PageLimit::parse(Some(0)).is_err());
    }

    #[test]
    fn an_emoji_is_unicode_emoji_and_nothing_else() {
        for ok in ["👍", "👍🏽", "❤️", "🇫🇷", "1️⃣", "👨‍👩‍👧", "🎉🎉", "©"]
        {
            assert!(Emoji::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":+1:",
            ":tada:",
            "x",
            "1",
            "a b",
            "👍 ",
            "🏽",
            "👍\u{200b}",
            "\u{200d}",
            "<script>",
            &"👍".repeat(33),
        ] {
            assert!(Emoji::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_emoji_is_kept_fully_qualified() {
        assert_eq!(Emoji::parse("❤").unwrap().as_str(), "❤\u{fe0f}");
        assert_eq!(Emoji::parse("❤️").unwrap().as_str(), "❤\u{fe0f}");
        assert_eq!(Emoji::parse("👍🏽").unwrap().as_str(), "👍🏽");
    }
}
