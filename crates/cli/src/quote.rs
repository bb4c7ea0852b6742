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
/// reads back unambiguously), U+FFFD (which stands for bytes that were not
/// UTF-8), or leading or trailing white space. Inside the quotes `\a \b \t
/// \n \v \f \r \" \\` stand for themselves and any other such character
/// for its UTF-8 bytes in octal (`\033`, `\342\200\256`), as git writes them.
pub fn quoted(name: &str) -> Cow<'_, str> {
    let edges = name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace);
    if !edges && name.chars().all(plain) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
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
            c => {
                let mut bytes = [0; 4];
                for byte in c.encode_utf8(&mut bytes).bytes() {
                    let _ = write!(out, "\\{byte:03o}");
                }
            }
        }
    }
    out.push('"');
    Cow::Owned(out)
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
}
