//! Making text from requests and containers safe to put in a log line, an audit record or on a terminal:
//! control characters are escaped (so a `\n` cannot start a forged line and an ESC cannot drive a terminal),
//! and what an unauthenticated peer controls is cut to a bounded length.

use std::borrow::Cow;

/// The longest request-controlled field (path, task, reason) an audit record or a log line carries, in bytes.
pub const MAX_FIELD: usize = 256;

/// `s` with every control character (C0, DEL, C1) and every invisible character that reorders or hides text
/// (bidi controls, line separators, zero-width characters: [`dcos_exec_proto::must_escape`], as the CLI
/// escapes) written as a Rust escape (`\n`, `\u{1b}`, `\u{202e}`); other text unchanged.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    use dcos_exec_proto::must_escape;
    if !s.chars().any(must_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if must_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether `s` has a control character: such a task id or name is not used as one.
pub fn has_controls(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// `s` escaped and cut to at most [`MAX_FIELD`] bytes (on a character boundary), with a marker saying how
/// many bytes were cut.
pub fn bounded(s: &str) -> String {
    let s = escape_controls(s);
    if s.len() <= MAX_FIELD {
        return s.into_owned();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} more bytes]", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("web-1 ✓"), "web-1 ✓");
        assert_eq!(escape_controls("a\nb\x1b[2J\u{9b}c\r"), "a\\nb\\u{1b}[2J\\u{9b}c\\r");
        // Bidi overrides and zero-width characters make a name read as another: escaped too.
        assert_eq!(escape_controls("web\u{202e}1-bew\u{200b}\u{2028}"), "web\\u{202e}1-bew\\u{200b}\\u{2028}");
        assert!(has_controls("x\ty") && !has_controls("x y"));
    }

    #[test]
    fn long_fields_are_cut_with_a_marker() {
        assert_eq!(bounded("short"), "short");
        let long = "✓".repeat(1000);
        let b = bounded(&long);
        assert!(b.len() < MAX_FIELD + 32, "{}", b.len());
        assert!(b.ends_with("…[2745 more bytes]"), "{b}");
        assert!(!bounded(&"\n".repeat(500)).contains('\n'));
    }
}
