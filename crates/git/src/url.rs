//! Checks on repository URLs: no credentials inside them (they would be
//! written to `.git/config` in the workspace), no control characters.
//!
//! Git accepts URLs the `url` crate does not (scp-like `host:path`, plain
//! paths), so the few checks needed are done on the text directly.

use crate::GitError;

/// A URL split at its `scheme://` and user information, where it has them.
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    /// Everything after the user information (host, port, path).
    rest: &'a str,
}

fn parts(url: &str) -> Option<Parts<'_>> {
    let (scheme, after) = url.split_once("://")?;
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (userinfo, rest) = match after[..authority_end].rfind('@') {
        Some(at) => (Some(&after[..at]), &after[at + 1..]),
        None => (None, after),
    };
    Some(Parts {
        scheme,
        userinfo,
        rest,
    })
}

/// Whether git talks to this URL over HTTP, the only transport berth sends
/// credentials on.
pub(crate) fn is_http(url: &str) -> bool {
    parts(url).is_some_and(|p| {
        p.scheme.eq_ignore_ascii_case("http") || p.scheme.eq_ignore_ascii_case("https")
    })
}

/// Whether git takes this URL for a path on this host, as its own rule
/// does: no `scheme://`, and no `host:` before the first slash.
pub(crate) fn is_local_path(url: &str) -> bool {
    if url.contains("://") {
        return false;
    }
    match (url.find(':'), url.find('/')) {
        (None, _) => true,
        (Some(colon), Some(slash)) => slash < colon,
        (Some(_), None) => false,
    }
}

/// Refuses URLs that carry credentials or could be taken for an option.
///
/// Any user information in an http(s) URL is refused (git would send it and
/// store it in `.git/config`); other transports may name a user (as in
/// `ssh://git@host/repo`) but not a password.
pub(crate) fn check(url: &str) -> Result<(), GitError> {
    if let Some(p) = parts(url)
        && let Some(userinfo) = p.userinfo
        && (is_http(url) || userinfo.contains(':'))
    {
        return Err(GitError::UrlHasCredentials {
            url: format!("{}://***@{}", p.scheme, p.rest),
        });
    }
    if url.starts_with('-') || url.chars().any(char::is_control) {
        return Err(GitError::InvalidUrl {
            url: url.escape_debug().to_string(),
            reason: "it starts with `-` or contains control characters".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_local_and_hosts_are_not() {
        for url in ["/srv/repo", "../web", "repo", "./a:b", "/x/y:z"] {
            assert!(is_local_path(url), "{url}");
        }
        for url in [
            "https://h/r",
            "file:///srv/repo",
            "git@host:r.git",
            "host:r",
        ] {
            assert!(!is_local_path(url), "{url}");
        }
    }

    #[test]
    fn user_information_in_http_urls_is_refused_without_echoing_it() {
        for url in [
            "https://user:s3cret@example.com/org/repo.git",
            "http://s3cret@example.com:8080/repo",
            "HTTPS://x-access-token:s3cret@example.com/r?q=a@b",
        ] {
            let err = check(url).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, GitError::UrlHasCredentials { .. }), "{url}");
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("example.com"), "{text}");
            assert!(text.contains("credential"), "{text}");
        }
    }

    #[test]
    fn plain_urls_pass() {
        for url in [
            "https://example.com/org/repo.git",
            "https://example.com/org/repo@v2",
            "git://127.0.0.1:9418/repo",
            "ssh://git@example.com/org/repo",
            "git@example.com:org/repo.git",
            "file:///srv/repo",
            "/srv/repo",
        ] {
            check(url).unwrap();
        }
        assert!(check("ssh://git:pw@example.com/repo").is_err());
        assert!(check("--upload-pack=evil").is_err());
    }

    #[test]
    fn only_http_carries_credentials() {
        assert!(is_http("https://example.com/r"));
        assert!(is_http("HTTP://example.com/r"));
        assert!(!is_http("git://example.com/r"));
        assert!(!is_http("file:///r"));
        assert!(!is_http("example.com:r"));
    }
}
