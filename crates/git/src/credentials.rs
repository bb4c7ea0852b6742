//! Credentials held by the provider: named tokens read from a mode-0600 file
//! in berth's state directory and from `BERTH_CREDENTIAL_<NAME>` variables.
//!
//! A repository names the credential it needs; the token itself never leaves
//! the provider except as an HTTP header handed to the provider's own git
//! process through its environment.

use crate::GitError;
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

/// One secret: a token sent as `Authorization: Bearer <token>`, or with a
/// username as `Authorization: Basic base64(username:token)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    token: String,
    username: Option<String>,
}

impl Credential {
    /// A token sent as a bearer token.
    pub fn bearer(token: impl Into<String>) -> Credential {
        Credential {
            token: token.into(),
            username: None,
        }
    }

    /// A token sent as the password of Basic authentication.
    pub fn basic(username: impl Into<String>, token: impl Into<String>) -> Credential {
        Credential {
            token: token.into(),
            username: Some(username.into()),
        }
    }

    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
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

    /// Refuses what cannot be put in an HTTP header safely: an empty token,
    /// line breaks (header injection), a `:` in the username.
    fn check(&self, name: &str, origin: &str) -> Result<(), GitError> {
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
        Ok(())
    }
}

/// Never prints the token.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"***")
            .field("username", &self.username)
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
    /// ```
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
                credential.check(&name, &file.display().to_string())?;
                credentials.by_key.insert(key, Named { name, credential });
            }
        }
        for (key, credential) in from_env(env) {
            let origin = format!("{ENV_PREFIX}{key}");
            credential.check(&key.to_ascii_lowercase(), &origin)?;
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
    Ok(entries
        .into_iter()
        .map(|(name, entry)| {
            let credential = match entry.username {
                Some(user) => Credential::basic(user, entry.token),
                None => Credential::bearer(entry.token),
            };
            (name, credential)
        })
        .collect())
}

/// Credentials from `BERTH_CREDENTIAL_<KEY>` variables, keyed by `KEY`.
/// `BERTH_CREDENTIAL_<KEY>_USERNAME` is the username of `<KEY>` when that
/// variable exists too; otherwise it is a credential of its own.
fn from_env(env: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, Credential> {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ENV_PREFIX)?.to_owned(), v)))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    let is_username = |key: &str| {
        key.strip_suffix(ENV_USERNAME_SUFFIX)
            .is_some_and(|base| !base.is_empty() && vars.contains_key(base))
    };
    vars.iter()
        .filter(|(key, _)| !is_username(key))
        .map(|(key, token)| {
            let username = vars.get(&format!("{key}{ENV_USERNAME_SUFFIX}"));
            let credential = match username {
                Some(user) => Credential::basic(user.clone(), token.clone()),
                None => Credential::bearer(token.clone()),
            };
            (key.clone(), credential)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn file_and_environment_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[github]\ntoken = \"ghp-file\"\nusername = \"x-access-token\"\n\n[my-repo]\ntoken = \"t1\"\n",
            0o600,
        );
        let creds = Credentials::from_env_and_file(
            Some(&file),
            env(&[
                ("BERTH_CREDENTIAL_MY_REPO", "from-env"),
                ("BERTH_CREDENTIAL_GITLAB", "gl"),
                ("BERTH_CREDENTIAL_GITLAB_USERNAME", "oauth2"),
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
        // The variable overrides the file's entry of the same name.
        assert_eq!(
            creds.get("my-repo").unwrap().authorization(),
            "Bearer from-env"
        );
        assert_eq!(creds.get("my.repo"), creds.get("my-repo"));
        assert_eq!(creds.get("gitlab").unwrap().username(), Some("oauth2"));
        assert!(creds.get("nope").is_none());
    }

    #[test]
    fn a_username_variable_without_its_base_is_a_credential() {
        let creds =
            Credentials::from_env_and_file(None, env(&[("BERTH_CREDENTIAL_CI_USERNAME", "tok")]))
                .unwrap();
        assert_eq!(creds.names(), ["ci_username"]);
        assert_eq!(creds.get("ci-username").unwrap().username(), None);
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[a]\ntoken = \"t\"\n", 0o644);
        let err = Credentials::load(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(
            err,
            GitError::CredentialsFileMode { mode: 0o644, .. }
        ));
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("0644"), "{text}");
        write(dir.path(), "[a]\ntoken = \"t\"\n", 0o400);
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
        let file = write(dir.path(), "[a]\ntoken = \"sekrit\"\ncolour = 1\n", 0o600);
        let err = Credentials::from_env_and_file(Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert!(!err.to_string().contains("sekrit"), "{err}");

        let file = write(dir.path(), "[a]\ntoken = \"sek\\nrit\"\n", 0o600);
        let err = Credentials::from_env_and_file(Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("control characters"), "{err}");
        assert!(!err.to_string().contains("sek"), "{err}");

        let err =
            Credentials::from_env_and_file(None, env(&[("BERTH_CREDENTIAL_X", "")])).unwrap_err();
        assert!(err.to_string().contains("BERTH_CREDENTIAL_X"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let mut creds = Credentials::new();
        creds.insert("a", Credential::basic("u", "hunter2"));
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
