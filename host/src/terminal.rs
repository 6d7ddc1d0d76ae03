//! Text for a terminal. Names that reach the CLI's human output (actors,
//! delivery ids, hook descriptions, error messages) come from signed but
//! untrusted payloads and REST answers; printed raw, an ESC sequence or a
//! newline in them could rewrite the screen or forge a line.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) and every Unicode
/// bidirectional override or isolate escaped as Rust's `escape_debug`
/// spells it (`\n`, `\t`, `\u{1b}`, `\u{202e}`), so one line of output
/// stays one line and shows what it says. Everything else, backslashes
/// and non-ASCII letters included, is kept as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An error and its causes as one message for a terminal: each cause that
/// the text so far does not already include is added after `: ` (errors
/// that name their source in their own message are not repeated), and a
/// message of several lines (a config file's parse error, with the line it
/// points at) keeps them, each later line indented so that no line of it
/// can pass for a line of its own. Control characters are escaped.
pub fn error_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(inner_text.trim_end()) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text.trim_end()
        .lines()
        .map(escape)
        .collect::<Vec<_>>()
        .join("\n    ")
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Marks, embeddings, overrides and isolates that reorder what a
            // terminal shows ("Trojan Source").
            '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot read {0}: {1}")]
        Names(&'static str, #[source] std::io::Error),
        #[error("cannot read {0}")]
        Silent(&'static str, #[source] std::io::Error),
    }

    #[test]
    fn an_error_names_each_cause_once_and_keeps_its_lines_indented() {
        let io = || std::io::Error::other("gone");
        assert_eq!(
            error_message(&Outer::Names("a.toml", io())),
            "cannot read a.toml: gone"
        );
        assert_eq!(
            error_message(&Outer::Silent("a.toml", io())),
            "cannot read a.toml: gone"
        );
        let frame = std::io::Error::other(
            "parse error at line 2\n  |\n2 | x = 5\n  |     ^\nexpected a string\n",
        );
        assert_eq!(
            error_message(&Outer::Silent("a.toml", frame)),
            "cannot read a.toml: parse error at line 2\n      |\n    2 | x = 5\n      |     ^\n    expected a string"
        );
        // A forged line stays a continuation, its escapes escaped.
        let forged = std::io::Error::other("x\nhookvault: \u{1b}[2Kall fine");
        assert_eq!(
            error_message(&Outer::Silent("b", forged)),
            "cannot read b: x\n    hookvault: \\u{1b}[2Kall fine"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("Dana Okafor"), Cow::Borrowed(_)));
        assert_eq!(escape("Zoë 李 \\ \"q\""), "Zoë 李 \\ \"q\"");
        assert_eq!(
            escape("Dana\u{1b}[2K\r\n1a2b3c  2026-01-01  actor=admin"),
            "Dana\\u{1b}[2K\\r\\n1a2b3c  2026-01-01  actor=admin"
        );
        assert_eq!(escape("a\0b\tc\u{7f}d\u{9b}e"), "a\\0b\\tc\\u{7f}d\\u{9b}e");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let text = format!("x{c}y");
            let escaped = escape(&text);
            assert!(
                !escaped.chars().any(char::is_control),
                "{c:?} -> {escaped:?}"
            );
        }
    }
}
