//! Credentials held by the provider: named tokens read from a mode-0600 file
//! in berth's state directory and from `BERTH_CREDENTIAL_<NAME>` variables,
//! each bound to the URL prefixes it may be sent to.
//!
//! A repository names the credential it needs; the token itself never leaves
//! the provider except as an HTTP header handed to the provider's own git
//! process through its environment, and only for a URL one of its prefixes
//! covers (see [`Credentials::authorize`]): a spec cannot send it elsewhere.

use crate::GitError;
use crate::scope::{self, UrlPrefix};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The file, inside berth's state directory, that holds credentials.
pub const CREDENTIALS_FILE: &str = "credentials.toml";

/// The prefix of environment variables that hold credentials.
pub const ENV_PREFIX: &str = "BERTH_CREDENTIAL_";

/// The suffix of the variable that gives a credential from the environment a
/// username (Basic authentication) instead of a bearer token.
pub const ENV_USERNAME_SUFFIX: &str = "_USERNAME";

/// The suffix of the variable that lists the URL prefixes a credential from
/// the environment may be sent to, separated by spaces or commas.
pub const ENV_URLS_SUFFIX: &str = "_URLS";

/// The example a message about missing URLs shows.
const EXAMPLE_PREFIX: &str = "https://git.example.com/team/";

/// One secret: a token sent as `Authorization: Bearer <token>`, or with a
/// username as `Authorization: Basic base64(username:token)`, to the URLs
/// its prefixes cover and nowhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    token: String,
    username: Option<String>,
    urls: Vec<UrlPrefix>,
}

impl Credential {
    /// A token sent as a bearer token to the URLs under `urls`.
    pub fn bearer(
        token: impl Into<String>,
        urls: impl IntoIterator<Item = UrlPrefix>,
    ) -> Credential {
        Credential {
            token: token.into(),
            username: None,
            urls: urls.into_iter().collect(),
        }
    }

    /// A token sent as the password of Basic authentication to the URLs
    /// under `urls`.
    pub fn basic(
        username: impl Into<String>,
        token: impl Into<String>,
        urls: impl IntoIterator<Item = UrlPrefix>,
    ) -> Credential {
        Credential {
            username: Some(username.into()),
            ..Credential::bearer(token, urls)
        }
    }

    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The URL prefixes this credential may be sent to.
    pub fn urls(&self) -> &[UrlPrefix] {
        &self.urls
    }

    /// The value of the `Authorization` header.
    pub(crate) fn authorization(&self) -> String {
        match &self.username {
            None => format!("Bearer {}", self.token),
            Some(user) => format!("Basic {}", self.basic_encoded(user)),
        }
    }

    fn basic_encoded(&self, user: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", self.token))
    }

    /// Every form in which this secret could show up in text: the token and
    /// its Basic encoding.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.token.clone()];
        if let Some(user) = &self.username {
            secrets.push(self.basic_encoded(user));
        }
        secrets
    }

    /// Refuses what cannot be put in an HTTP header safely (an empty token,
    /// line breaks: header injection, a `:` in the username) and a
    /// credential bound to no URL; `add_urls` says how to bind it.
    fn check(&self, name: &str, origin: &str, add_urls: &str) -> Result<(), GitError> {
        let invalid = |reason: &str| GitError::InvalidCredential {
            name: name.to_owned(),
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        if self.token.trim().is_empty() {
            return Err(invalid("the token is empty"));
        }
        if self.token.chars().any(char::is_control) || self.token.contains(' ') {
            return Err(invalid("the token contains spaces or control characters"));
        }
        if let Some(user) = &self.username
            && (user.is_empty() || user.contains(':') || user.chars().any(char::is_control))
        {
            return Err(invalid(
                "the username is empty or contains `:` or control characters",
            ));
        }
        if self.urls.is_empty() {
            return Err(invalid(&format!(
                "it lists no URLs it may be sent to; {add_urls}, the URL prefixes of the \
                 repositories it is for"
            )));
        }
        Ok(())
    }
}

/// Never prints the token.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"***")
            .field("username", &self.username)
            .field("urls", &self.urls)
            .finish()
    }
}

/// A set of named credentials.
#[derive(Clone, Default, Debug)]
pub struct Credentials {
    /// Keyed by the normalised name (see [`normalise`]), so that a name in the
    /// file and the variable for it are the same credential.
    by_key: BTreeMap<String, Named>,
}

#[derive(Clone, Debug)]
struct Named {
    /// The name as written where it was defined.
    name: String,
    credential: Credential,
}

/// One table of the credentials file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    token: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
}

impl Credentials {
    /// No credentials.
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Reads `$home/credentials.toml` (when present) and the process's
    /// `BERTH_CREDENTIAL_<NAME>` variables; a variable overrides a file entry
    /// of the same name.
    ///
    /// The file holds one table per credential:
    ///
    /// ```toml
    /// [github]
    /// token = "..."
    /// username = "x-access-token"   # optional: Basic auth; Bearer without it
    /// urls = ["https://github.com/my-org/"]   # the only places it is sent
    /// ```
    ///
    /// A variable's URLs are in `BERTH_CREDENTIAL_<NAME>_URLS`, separated by
    /// spaces or commas. A credential without URLs is refused.
    ///
    /// It must not be readable or writable by group or others (mode 0600 or
    /// stricter); otherwise it is refused, naming the file and its mode.
    pub fn load(home: &Path) -> Result<Credentials, GitError> {
        let file = home.join(CREDENTIALS_FILE);
        let file = file.exists().then_some(file);
        Credentials::from_env_and_file(file.as_deref(), std::env::vars_os().filter_map(utf8_var))
    }

    /// Like [`Credentials::load`], with the file and the environment given.
    /// `file` must exist when given; `env` may hold unrelated variables.
    pub fn from_env_and_file(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Credentials, GitError> {
        let mut credentials = Credentials::new();
        if let Some(file) = file {
            for (name, credential) in read_file(file)? {
                let key = normalise(&name);
                if let Some(other) = credentials.by_key.get(&key) {
                    return Err(GitError::InvalidCredential {
                        name,
                        origin: file.display().to_string(),
                        reason: format!(
                            "it names the same credential as `{}` (names are compared upper-cased, with `-` and `.` as `_`)",
                            other.name
                        ),
                    });
                }
                let add_urls =
                    format!("add `urls = [\"{EXAMPLE_PREFIX}\"]` to its table `[{name}]`");
                credential.check(&name, &file.display().to_string(), &add_urls)?;
                credentials.by_key.insert(key, Named { name, credential });
            }
        }
        for (key, credential) in from_env(env)? {
            let origin = format!("{ENV_PREFIX}{key}");
            let add_urls = format!(
                "set {origin}{ENV_URLS_SUFFIX}=\"{EXAMPLE_PREFIX}\" (spaces or commas between several)"
            );
            credential.check(&key.to_ascii_lowercase(), &origin, &add_urls)?;
            let name = match credentials.by_key.remove(&key) {
                Some(named) => named.name,
                None => key.to_ascii_lowercase(),
            };
            credentials.by_key.insert(key, Named { name, credential });
        }
        Ok(credentials)
    }

    /// Adds (or replaces) a credential.
    pub fn insert(&mut self, name: impl Into<String>, credential: Credential) {
        let name = name.into();
        self.by_key
            .insert(normalise(&name), Named { name, credential });
    }

    /// The credential of this name, if any.
    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.by_key.get(&normalise(name)).map(|n| &n.credential)
    }

    /// The credential `name`, if a request to `url` may carry it: `url`
    /// holds no credential of its own, the credential exists, `url` is
    /// http(s), and one of its URL prefixes covers `url` (see
    /// [`UrlPrefix`]). Every use of a credential goes through here.
    pub fn authorize(&self, name: &str, url: &str) -> Result<&Credential, GitError> {
        crate::url::check(url)?;
        let credential = self.get(name).ok_or_else(|| GitError::UnknownCredential {
            name: name.to_owned(),
            url: url.to_owned(),
            known: match self.names() {
                names if names.is_empty() => "none".to_owned(),
                names => names.join(", "),
            },
        })?;
        if !crate::url::is_http(url) {
            return Err(GitError::CredentialNeedsHttp {
                name: name.to_owned(),
                url: url.to_owned(),
            });
        }
        let refuse = |reason: String| GitError::CredentialNotForUrl {
            name: name.to_owned(),
            url: url.to_owned(),
            reason,
        };
        match scope::any_covers(&credential.urls, url) {
            Ok(true) => Ok(credential),
            Ok(false) => {
                let allowed: Vec<String> = credential.urls.iter().map(|p| p.to_string()).collect();
                Err(refuse(format!(
                    "it may only be sent to URLs under {}",
                    allowed.join(", ")
                )))
            }
            Err(reason) => Err(refuse(reason)),
        }
    }

    /// The names of all credentials, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_key.values().map(|n| n.name.clone()).collect();
        names.sort();
        names
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every secret string of every credential, for redaction.
    pub(crate) fn secrets(&self) -> Vec<String> {
        self.by_key
            .values()
            .flat_map(|n| n.credential.secrets())
            .collect()
    }
}

/// The key a credential name is known by, which is also the suffix of its
/// environment variable: upper-cased, `-` and `.` turned into `_`.
pub fn normalise(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

fn utf8_var((key, value): (std::ffi::OsString, std::ffi::OsString)) -> Option<(String, String)> {
    Some((key.into_string().ok()?, value.into_string().ok()?))
}

fn read_file(file: &Path) -> Result<Vec<(String, Credential)>, GitError> {
    let io_error = |source| GitError::CredentialsFile {
        path: file.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(file)
        .map_err(io_error)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(GitError::CredentialsFileMode {
            path: file.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(file).map_err(io_error)?;
    let entries: BTreeMap<String, FileEntry> =
        toml::from_str(&text).map_err(|e| GitError::CredentialsFileSyntax {
            path: PathBuf::from(file),
            // toml's messages quote the offending line, which may hold a
            // token; keep only the first line, which says what and where.
            message: e.message().lines().next().unwrap_or_default().to_owned(),
        })?;
    entries
        .into_iter()
        .map(|(name, entry)| {
            let urls = prefixes(&name, &file.display().to_string(), &entry.urls)?;
            let credential = match entry.username {
                Some(user) => Credential::basic(user, entry.token, urls),
                None => Credential::bearer(entry.token, urls),
            };
            Ok((name, credential))
        })
        .collect()
}

/// Parses a credential's URL prefixes, naming the credential at fault.
fn prefixes(
    name: &str,
    origin: &str,
    texts: &[impl AsRef<str>],
) -> Result<Vec<UrlPrefix>, GitError> {
    texts
        .iter()
        .map(|text| {
            text.as_ref()
                .parse()
                .map_err(|e: GitError| GitError::InvalidCredential {
                    name: name.to_owned(),
                    origin: origin.to_owned(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Credentials from `BERTH_CREDENTIAL_<KEY>` variables, keyed by `KEY`.
/// `BERTH_CREDENTIAL_<KEY>_USERNAME` is the username of `<KEY>` when that
/// variable exists too; otherwise it is a credential of its own.
/// `BERTH_CREDENTIAL_<KEY>_URLS` lists the URL prefixes of `<KEY>`, which
/// must exist.
fn from_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, Credential>, GitError> {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ENV_PREFIX)?.to_owned(), v)))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    let part_of_another = |key: &str, suffix: &str| {
        key.strip_suffix(suffix)
            .is_some_and(|base| !base.is_empty() && vars.contains_key(base))
    };
    let mut credentials = BTreeMap::new();
    for (key, token) in &vars {
        if part_of_another(key, ENV_USERNAME_SUFFIX) || part_of_another(key, ENV_URLS_SUFFIX) {
            continue;
        }
        if let Some(base) = key.strip_suffix(ENV_URLS_SUFFIX) {
            return Err(GitError::InvalidCredential {
                name: base.to_ascii_lowercase(),
                origin: format!("{ENV_PREFIX}{key}"),
                reason: format!(
                    "it gives the URLs of a credential, but {ENV_PREFIX}{base} is not set"
                ),
            });
        }
        let urls = match vars.get(&format!("{key}{ENV_URLS_SUFFIX}")) {
            Some(list) => {
                let texts: Vec<&str> = list
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|text| !text.is_empty())
                    .collect();
                let origin = format!("{ENV_PREFIX}{key}{ENV_URLS_SUFFIX}");
                prefixes(&key.to_ascii_lowercase(), &origin, &texts)?
            }
            None => Vec::new(),
        };
        let credential = match vars.get(&format!("{key}{ENV_USERNAME_SUFFIX}")) {
            Some(user) => Credential::basic(user.clone(), token.clone(), urls),
            None => Credential::bearer(token.clone(), urls),
        };
        credentials.insert(key.clone(), credential);
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URLS: &str = "urls = [\"https://git.example.com/team/\"]\n";

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let file = dir.join(CREDENTIALS_FILE);
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn prefix(text: &str) -> UrlPrefix {
        text.parse().unwrap()
    }

    #[test]
    fn file_and_environment_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            &format!(
                "[github]\ntoken = \"ghp-file\"\nusername = \"x-access-token\"\n\
                 urls = [\"https://github.com/org/\", \"https://github.com/other/\"]\n\n\
                 [my-repo]\ntoken = \"t1\"\n{URLS}"
            ),
            0o600,
        );
        let creds = Credentials::from_env_and_file(
            Some(&file),
            env(&[
                ("BERTH_CREDENTIAL_MY_REPO", "from-env"),
                (
                    "BERTH_CREDENTIAL_MY_REPO_URLS",
                    "https://env.example.com/a/",
                ),
                ("BERTH_CREDENTIAL_GITLAB", "gl"),
                ("BERTH_CREDENTIAL_GITLAB_USERNAME", "oauth2"),
                (
                    "BERTH_CREDENTIAL_GITLAB_URLS",
                    " https://gitlab.com/a/,https://gitlab.com/b/ https://gitlab.com/c/ ",
                ),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(creds.names(), ["github", "gitlab", "my-repo"]);
        assert_eq!(
            creds.get("github").unwrap().authorization(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("x-access-token:ghp-file")
            )
        );
        assert_eq!(
            creds.get("github").unwrap().urls(),
            [
                prefix("https://github.com/org/"),
                prefix("https://github.com/other/")
            ]
        );
        // The variable overrides the file's entry of the same name, URLs
        // included.
        let my_repo = creds.get("my-repo").unwrap();
        assert_eq!(my_repo.authorization(), "Bearer from-env");
        assert_eq!(my_repo.urls(), [prefix("https://env.example.com/a/")]);
        assert_eq!(creds.get("my.repo"), creds.get("my-repo"));
        let gitlab = creds.get("gitlab").unwrap();
        assert_eq!(gitlab.username(), Some("oauth2"));
        assert_eq!(
            gitlab.urls(),
            ["a", "b", "c"].map(|team| prefix(&format!("https://gitlab.com/{team}/")))
        );
        assert!(creds.get("nope").is_none());
    }

    #[test]
    fn a_username_variable_without_its_base_is_a_credential() {
        let creds = Credentials::from_env_and_file(
            None,
            env(&[
                ("BERTH_CREDENTIAL_CI_USERNAME", "tok"),
                (
                    "BERTH_CREDENTIAL_CI_USERNAME_URLS",
                    "https://ci.example.com/",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(creds.names(), ["ci_username"]);
        assert_eq!(creds.get("ci-username").unwrap().username(), None);
    }

    #[test]
    fn a_credential_file_without_urls_is_refused_saying_how_to_add_them() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "[forge]\ntoken = \"t\"\n",
            "[forge]\ntoken = \"t\"\nurls = []\n",
        ] {
            let file = write(dir.path(), text, 0o600);
            let err = Credentials::from_env_and_file(Some(&file), []).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid credential `forge` from {}: it lists no URLs it may be sent to; \
                     add `urls = [\"https://git.example.com/team/\"]` to its table `[forge]`, \
                     the URL prefixes of the repositories it is for",
                    file.display()
                )
            );
        }
    }

    #[test]
    fn a_credential_variable_without_urls_is_refused_saying_how_to_add_them() {
        let err = Credentials::from_env_and_file(None, env(&[("BERTH_CREDENTIAL_FORGE", "t")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid credential `forge` from BERTH_CREDENTIAL_FORGE: it lists no URLs it may be \
             sent to; set BERTH_CREDENTIAL_FORGE_URLS=\"https://git.example.com/team/\" (spaces \
             or commas between several), the URL prefixes of the repositories it is for"
        );
        let err = Credentials::from_env_and_file(
            None,
            env(&[("BERTH_CREDENTIAL_FORGE_URLS", "https://git.example.com/")]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("BERTH_CREDENTIAL_FORGE is not set"), "{text}");
    }

    #[test]
    fn a_bad_url_prefix_is_refused_naming_the_credential_and_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[forge]\ntoken = \"sekrit\"\nurls = [\"https://git.example.com/team/../\"]\n",
            0o600,
        );
        let err = Credentials::from_env_and_file(Some(&file), []).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`forge`"), "{text}");
        assert!(text.contains("https://git.example.com/team/../"), "{text}");
        assert!(text.contains("`..`"), "{text}");
        assert!(!text.contains("sekrit"), "{text}");

        let err = Credentials::from_env_and_file(
            None,
            env(&[
                ("BERTH_CREDENTIAL_FORGE", "t"),
                (
                    "BERTH_CREDENTIAL_FORGE_URLS",
                    "https://ok.example.com/, ftp://x/",
                ),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("BERTH_CREDENTIAL_FORGE_URLS"), "{text}");
        assert!(text.contains("ftp://x/"), "{text}");
    }

    #[test]
    fn a_credential_is_authorized_only_for_urls_under_its_prefixes() {
        let mut creds = Credentials::new();
        creds.insert(
            "forge",
            Credential::bearer("t", [prefix("https://git.example.com/team/")]),
        );
        let ok = "https://git.example.com/team/api.git";
        assert!(creds.authorize("forge", ok).is_ok());

        let evil = "https://git.example.com/team-evil/api.git";
        let err = creds.authorize("forge", evil).unwrap_err();
        assert!(matches!(err, GitError::CredentialNotForUrl { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "credential `forge` may not be sent to {evil}: it may only be sent to URLs \
                 under https://git.example.com/team/"
            )
        );
        let err = creds
            .authorize("forge", "https://git.example.com/team/../evil/x")
            .unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        let err = creds
            .authorize("forge", "https://git.example.com:s3cret@evil.org/team/x")
            .unwrap_err();
        assert!(matches!(err, GitError::UrlHasCredentials { .. }), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(matches!(
            creds.authorize("nope", ok),
            Err(GitError::UnknownCredential { .. })
        ));
        assert!(matches!(
            creds.authorize("forge", "git@git.example.com:team/api.git"),
            Err(GitError::CredentialNeedsHttp { .. })
        ));
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[a]\ntoken = \"t\"\n{URLS}");
        let file = write(dir.path(), &text, 0o644);
        let err = Credentials::load(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(
            err,
            GitError::CredentialsFileMode { mode: 0o644, .. }
        ));
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains("0644"), "{message}");
        write(dir.path(), &text, 0o400);
        assert_eq!(Credentials::load(dir.path()).unwrap().names(), ["a"]);
    }

    #[test]
    fn no_file_is_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::from_env_and_file(None, env(&[("PATH", "/bin")])).unwrap();
        assert!(creds.is_empty());
        assert!(Credentials::load(dir.path()).is_ok());
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            &format!("[a]\ntoken = \"sekrit\"\ncolour = 1\n{URLS}"),
            0o600,
        );
        let err = Credentials::from_env_and_file(Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert!(!err.to_string().contains("sekrit"), "{err}");

        let file = write(
            dir.path(),
            &format!("[a]\ntoken = \"sek\\nrit\"\n{URLS}"),
            0o600,
        );
        let err = Credentials::from_env_and_file(Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("control characters"), "{err}");
        assert!(!err.to_string().contains("sek"), "{err}");

        let err = Credentials::from_env_and_file(
            None,
            env(&[
                ("BERTH_CREDENTIAL_X", ""),
                ("BERTH_CREDENTIAL_X_URLS", "https://x.example.com/"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("BERTH_CREDENTIAL_X"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let mut creds = Credentials::new();
        creds.insert(
            "a",
            Credential::basic("u", "hunter2", [prefix("https://a.example.com/")]),
        );
        let text = format!("{creds:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("https://a.example.com/"), "{text}");
    }
}
