//! Where a credential may be sent: URL prefixes, compared as parsed URLs
//! (scheme, host, port, whole path segments) and never as text, so that
//! `https://git.example.com/team/` covers `https://git.example.com/team/api.git`
//! but not `https://git.example.com/team-evil/`,
//! `https://git.example.com.evil.org/team/` or
//! `https://git.example.com@evil.org/team/`.
//!
//! A URL counts only in the form git will use it: its text must already be
//! what the `url` crate parses it to (the case of scheme and host aside).
//! Whatever one parser would rewrite (backslashes, `.` and `..` segments,
//! escapes or tabs in the host, numeric hosts, a default port written out)
//! is refused rather than interpreted, so this check and git's curl cannot
//! disagree about where a request goes.

use crate::GitError;
use percent_encoding::percent_decode_str;
use std::fmt;
use std::str::FromStr;

/// Where a request to an http(s) URL goes, as far as a credential cares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Location {
    /// `http` or `https`, lower-case.
    scheme: String,
    /// Lower-case, as the URL names it.
    host: String,
    /// Explicit or the scheme's default.
    port: u16,
    /// The path's segments as written (escapes kept), without the empty
    /// one a trailing `/` makes.
    segments: Vec<String>,
}

impl Location {
    /// Parses `text`, refusing what could be read two ways. The error is
    /// the reason, to be put in a sentence.
    fn parse(text: &str) -> Result<Location, String> {
        if text.contains('\\') {
            return Err("it contains a backslash".into());
        }
        let url = ::url::Url::parse(text).map_err(|e| format!("it is not a URL ({e})"))?;
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err("credentials are only sent over http or https".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("it carries user information".into());
        }
        let host = url.host_str().ok_or("it names no host")?;
        let port = url.port_or_known_default().ok_or("it has no port")?;
        // The text as written, split where the parsed URL splits.
        let written = text
            .get(scheme.len()..)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or_else(|| format!("it does not start with `{scheme}://`"))?;
        let authority_end = written.find(['/', '?', '#']).unwrap_or(written.len());
        let (authority, rest) = written.split_at(authority_end);
        let plain_host = authority.eq_ignore_ascii_case(host)
            || authority.eq_ignore_ascii_case(&format!("{host}:{port}"));
        if !plain_host {
            return Err(format!(
                "its host is not written plainly (`{}` is read as `{host}` port {port})",
                authority.escape_debug()
            ));
        }
        let path = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
        for segment in path.split('/') {
            let decoded = percent_decode_str(segment).decode_utf8_lossy();
            if decoded == "." || decoded == ".." {
                return Err("its path has a `.` or `..` segment".into());
            }
            if decoded.contains('/') || decoded.contains('\\') {
                return Err("a segment of its path hides a `/` or `\\` in an escape".into());
            }
        }
        if path != url.path() && !(path.is_empty() && url.path() == "/") {
            return Err("its path has characters that must be escaped".into());
        }
        let mut segments: Vec<String> = path.split('/').skip(1).map(str::to_owned).collect();
        if segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        Ok(Location {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port,
            segments,
        })
    }

    /// Whether `other` is this location or lies beneath it.
    fn covers(&self, other: &Location) -> bool {
        self.scheme == other.scheme
            && self.host == other.host
            && self.port == other.port
            && other.segments.starts_with(&self.segments)
    }
}

/// A URL prefix a credential may be sent to: `https://git.example.com/team/`
/// covers every URL on that scheme, host and port whose path starts with
/// the segment `team`.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlPrefix {
    /// As written, for messages.
    text: String,
    location: Location,
}

impl UrlPrefix {
    /// Whether a request to `url` may carry a credential bound to this
    /// prefix. A URL that cannot be read unambiguously is covered by none:
    /// the error says why.
    pub fn covers(&self, url: &str) -> Result<bool, String> {
        Ok(self.location.covers(&Location::parse(url)?))
    }
}

impl FromStr for UrlPrefix {
    type Err = GitError;

    fn from_str(text: &str) -> Result<UrlPrefix, GitError> {
        if let Err(GitError::UrlHasCredentials { url }) = crate::url::check(text) {
            // Named with the user information masked: it may be a password.
            return Err(GitError::InvalidUrlPrefix {
                prefix: url,
                reason: "it carries user information".into(),
            });
        }
        let invalid = |reason: String| GitError::InvalidUrlPrefix {
            prefix: text.escape_debug().to_string(),
            reason,
        };
        let location = Location::parse(text).map_err(invalid)?;
        if text.contains(['?', '#']) {
            return Err(invalid("a prefix has no query or fragment".into()));
        }
        Ok(UrlPrefix {
            text: text.to_owned(),
            location,
        })
    }
}

impl fmt::Display for UrlPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for UrlPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UrlPrefix({})", self.text)
    }
}

/// Whether any of `prefixes` covers `url`; the reason when `url` cannot be
/// read unambiguously.
pub(crate) fn any_covers(prefixes: &[UrlPrefix], url: &str) -> Result<bool, String> {
    let location = Location::parse(url)?;
    Ok(prefixes.iter().any(|p| p.location.covers(&location)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEAM: &str = "https://git.example.com/team/";

    fn covers(prefix: &str, url: &str) -> Result<bool, String> {
        prefix.parse::<UrlPrefix>().unwrap().covers(url)
    }

    #[test]
    fn prefixes_cover_whole_segments_on_the_same_scheme_host_and_port() {
        let table: &[(&str, &str, bool)] = &[
            (TEAM, "https://git.example.com/team/api.git", true),
            (TEAM, "https://git.example.com/team/sub/api.git", true),
            (TEAM, "https://git.example.com/team", true),
            (TEAM, "https://GIT.Example.COM/team/api.git", true),
            (TEAM, "HTTPS://git.example.com/team/api.git", true),
            (TEAM, "https://git.example.com:443/team/api.git", true),
            (
                "https://git.example.com/team",
                "https://git.example.com/team/a",
                true,
            ),
            (
                "https://git.example.com",
                "https://git.example.com/any/repo",
                true,
            ),
            (
                "https://git.example.com/",
                "https://git.example.com/any/repo",
                true,
            ),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/repo", true),
            ("https://[::1]:8443/r/", "https://[::1]:8443/r/x", true),
            // Another path segment, host, scheme or port.
            (TEAM, "https://git.example.com/team-evil/api.git", false),
            (TEAM, "https://git.example.com/teams/api.git", false),
            (TEAM, "https://git.example.com/Team/api.git", false),
            (TEAM, "https://git.example.com/", false),
            (TEAM, "https://git.example.com/other/team/api.git", false),
            (TEAM, "https://git.example.com.evil.org/team/api.git", false),
            (TEAM, "https://evil.org/team/api.git", false),
            (TEAM, "https://example.com/team/api.git", false),
            (TEAM, "http://git.example.com/team/api.git", false),
            (TEAM, "https://git.example.com:8443/team/api.git", false),
            (TEAM, "https://git.example.com//team/api.git", false),
            (
                "https://git.example.com/team/api.git",
                "https://git.example.com/team/api.git.evil",
                false,
            ),
            (
                "http://127.0.0.1:8080/",
                "http://127.0.0.1:8081/repo",
                false,
            ),
            ("http://127.0.0.1/", "http://127.0.0.1:8080/repo", false),
        ];
        for (prefix, url, expected) in table {
            assert_eq!(
                covers(prefix, url),
                Ok(*expected),
                "{prefix} covering {url}"
            );
        }
    }

    #[test]
    fn urls_that_could_be_read_two_ways_are_covered_by_nothing() {
        let table: &[(&str, &str)] = &[
            // User information: the host is evil.org.
            (
                "https://git.example.com@evil.org/team/x",
                "user information",
            ),
            (
                "https://git.example.com:443@evil.org/team/x",
                "user information",
            ),
            ("https://git.example.com\\@evil.org/team/x", "backslash"),
            ("https://git.example.com/team\\..\\..\\evil", "backslash"),
            // Dot segments, written or escaped.
            ("https://git.example.com/team/../evil/x", "`..`"),
            ("https://git.example.com/team/%2e%2e/evil/x", "`..`"),
            ("https://git.example.com/team/.%2E/evil/x", "`..`"),
            ("https://git.example.com/team/./x", "`.`"),
            ("https://git.example.com/team/..%2fevil/x", "hides a `/`"),
            ("https://git.example.com/team/a%5c..%5cevil", "hides a `/`"),
            // Hosts a parser rewrites.
            (
                "https://git.example.com%2eevil.org/team/x",
                "not written plainly",
            ),
            ("https://git.exa\tmple.com/team/x", "not written plainly"),
            ("http://2130706433/team/x", "not written plainly"),
            ("https://git.example.com:/team/x", "not written plainly"),
            ("https:git.example.com/team/x", "does not start with"),
            ("https:/git.example.com/team/x", "does not start with"),
            ("https://git.example.com/team/a b", "must be escaped"),
            ("ftp://git.example.com/team/x", "http or https"),
            ("git.example.com:team/x", "http or https"),
            ("/srv/team/x", "not a URL"),
        ];
        for (url, reason) in table {
            let err = covers(TEAM, url).unwrap_err();
            assert!(err.contains(reason), "{url}: {err}");
        }
    }

    #[test]
    fn bad_prefixes_are_refused_naming_them() {
        let err = "https://user:s3cret@git.example.com/team/"
            .parse::<UrlPrefix>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://***@git.example.com/team/"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        for (prefix, reason) in [
            ("https://git.example.com/team/../", "`..`"),
            ("https://git.example.com/team/?a=b", "query"),
            ("https://git.example.com/team/#top", "fragment"),
            ("git://git.example.com/team/", "http or https"),
            ("team/", "not a URL"),
        ] {
            let err = prefix.parse::<UrlPrefix>().unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, GitError::InvalidUrlPrefix { .. }), "{text}");
            assert!(text.contains(reason), "{prefix}: {text}");
            assert!(text.contains(prefix), "{prefix}: {text}");
        }
    }
}
