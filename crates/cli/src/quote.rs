//! Names a workspace controls (paths, interpreter names), made safe to print
//! one to a line: a name that a newline, a control character or a
//! terminal escape could turn into more lines, or into other text, is
//! printed in double quotes with C-style escapes, as `git` quotes paths, so
//! a listing always has one line per entry and shows what is there.
//! `--json` output carries names exactly and does not go through here.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `name` as a listing prints it: unchanged when every character is plain,
/// otherwise quoted.
///
/// Quoted are names holding a character that is not printable (control
/// characters, line and paragraph separators, bidirectional and other
/// format characters, combining marks), a `"` or `\` (so that a quoted name
/// reads back unambiguously), U+FFFD (which may stand for bytes that were
/// not UTF-8), or leading or trailing white space. Inside the quotes `\a \b
/// \t \n \v \f \r \" \\` stand for themselves and any other such
/// character for its UTF-8 bytes in octal (`\033`, `\342\200\256`), as git
/// writes them.
pub fn quoted(name: &str) -> Cow<'_, str> {
    quoted_bytes(name.as_bytes())
}

/// [`quoted`] for a name given as its raw bytes, which need not be UTF-8:
/// a byte that is not part of a UTF-8 character is quoted in octal
/// (`\377`), so that the listing shows the name's real bytes.
pub fn quoted_bytes(name: &[u8]) -> Cow<'_, str> {
    let Ok(text) = std::str::from_utf8(name) else {
        return Cow::Owned(quote(name));
    };
    let edges = text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace);
    if !edges && text.chars().all(plain) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(quote(name))
}

/// `name` in double quotes, with C-style escapes.
fn quote(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\u{b}' => out.push_str("\\v"),
                '\u{c}' => out.push_str("\\f"),
                '\r' => out.push_str("\\r"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if plain(c) => out.push(c),
                c => octal(&mut out, c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        octal(&mut out, chunk.invalid());
    }
    out.push('"');
    out
}

/// Each of `bytes` as a backslash and three octal digits.
fn octal(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "\\{byte:03o}");
    }
}

/// Whether `c` prints as itself: std's `escape_debug` knows which
/// characters are printable, and escapes the rest (`'` aside, which it
/// escapes for Rust's sake alone).
fn plain(c: char) -> bool {
    c == '\'' || (c != '\u{FFFD}' && c.escape_debug().len() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_left_as_they_are() {
        for name in [
            "src/main.rs",
            "it's here.txt",
            "with space.txt",
            "café/naïve.txt",
            "日本語.md",
            "a-b_c.d",
        ] {
            assert_eq!(quoted(name), name);
        }
    }

    #[test]
    fn names_that_could_forge_or_hide_lines_are_quoted_as_git_does() {
        for (name, shown) in [
            ("ok\nD important.txt", r#""ok\nD important.txt""#),
            ("tab\there\r", r#""tab\there\r""#),
            ("\u{1b}[31mred", r#""\033[31mred""#),
            ("bell\u{7}", r#""bell\a""#),
            ("del\u{7f}", r#""del\177""#),
            ("nel\u{85}", r#""nel\302\205""#),
            ("\u{202e}txt.exe", r#""\342\200\256txt.exe""#),
            ("line\u{2028}sep", r#""line\342\200\250sep""#),
            ("zero\u{200b}width", r#""zero\342\200\213width""#),
            ("bad\u{FFFD}name", r#""bad\357\277\275name""#),
            ("quote\"d", r#""quote\"d""#),
            ("back\\slash", r#""back\\slash""#),
            (" lead", r#"" lead""#),
            ("trail ", r#""trail ""#),
        ] {
            let printed = quoted(name);
            assert_eq!(printed, shown, "{name:?}");
            assert!(!printed.chars().any(char::is_control), "{printed}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_quoted_as_themselves_not_as_a_replacement() {
        for (name, shown) in [
            (&b"a\xff.txt"[..], r#""a\377.txt""#),
            (b"a\xfe.txt", r#""a\376.txt""#),
            (b"d\xc0/in\n", r#""d\300/in\n""#),
            (b"caf\xc3\xa9\xe2\x80", r#""café\342\200""#),
        ] {
            assert_eq!(quoted_bytes(name), shown, "{name:?}");
        }
        assert_eq!(quoted_bytes(b"plain.txt"), "plain.txt");
        assert_eq!(
            quoted_bytes(b"bad\xef\xbf\xbdname"),
            quoted("bad\u{FFFD}name")
        );
    }
}
