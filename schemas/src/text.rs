//! Text from the lower-trust zone, made safe to print.
//!
//! File names, hook output, error messages and audit reasons can come from
//! a compromised system. Printed raw on an operator's terminal, a name
//! holding `ESC ]` or `ESC [` sequences could retitle the window, hide
//! lines or forge output. Everything the console prints that a system
//! could have written goes through [`escape`] or [`escape_bytes`]: control
//! characters (C0, DEL, C1) and invalid UTF-8 become visible escapes; all
//! else, non-ASCII letters included, stays as it is.

use std::borrow::Cow;
use std::fmt::Write;

fn is_control(c: char) -> bool {
    c.is_control()
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x100 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// Pushes `c` as [`escape`] shows it, once escapes are needed.
fn push_shown(out: &mut String, c: char) {
    if is_control(c) {
        push_escaped(out, c);
    } else if c == '\\' {
        out.push_str("\\\\");
    } else {
        out.push(c);
    }
}

/// `s` with every control character written as an escape (`\n`, `\t`,
/// `\r`, `\x1b`, `\u{9b}` ...) and a backslash doubled only when escapes
/// were needed; unchanged (borrowed) when it holds none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_shown(&mut out, c);
    }
    Cow::Owned(out)
}

/// Raw bytes (a file name) as printable text: valid UTF-8 as in
/// [`escape`], each invalid byte as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return escape(s).into_owned();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_shown(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…`
/// appended when it was cut: for fields of events and records that come
/// from an agent.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// Bytes for people, in powers of 1024: `512 B`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("plain/ünïcode"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b]0;owned\x07b"), "a\\x1b]0;owned\\x07b");
        assert_eq!(escape("line\nnext\\"), "line\\nnext\\\\");
        assert_eq!(escape("c1\u{9b}31m"), "c1\\x9b31m");
        assert_eq!(escape_bytes(b"/etc/x"), "/etc/x");
        assert_eq!(escape_bytes(b"/a\xff\x1b[2J"), "/a\\xff\\x1b[2J");
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn bounded_cuts_at_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("ééé", 3), "é…");
    }
}
