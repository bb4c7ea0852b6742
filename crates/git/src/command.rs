//! Running the git executable safely: a clean environment, configuration
//! that turns off everything able to prompt or run other programs, the
//! credential header only for commands that talk to the remote, redaction
//! of everything git says before it reaches an error, and a process tree
//! that ends with berth (see [`crate::session`]).
//!
//! All configuration travels in `GIT_CONFIG_COUNT` / `GIT_CONFIG_KEY_n` /
//! `GIT_CONFIG_VALUE_n`: never in argv (`git -c` is visible in `ps`) and never
//! through `git clone -c` (which writes it into `.git/config`).

use crate::GitError;
use crate::session::Session;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

/// Variables passed through from the provider's environment: what git needs
/// to find programs, certificates, proxies and an ssh agent. Everything else,
/// and every `GIT_*` variable in particular, is left out.
const INHERITED: &[&str] = &[
    "PATH",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "SSH_AUTH_SOCK",
];

/// The most lines of git's stderr kept in an error.
const STDERR_LINES: usize = 20;

/// The credential of one remote URL, as git will send it.
pub(crate) struct Auth {
    /// The repository URL the header is scoped to.
    pub url: String,
    /// The credential's name, for error messages.
    pub name: String,
    /// `Authorization: ...`.
    pub header: String,
}

/// Replaces known secrets in text with `***`.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    /// Longest first, so that a secret containing another is replaced whole.
    secrets: Vec<String>,
}

/// Never prints the secrets.
impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub fn new(mut secrets: Vec<String>) -> Redactor {
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
    }
}

/// A git command that ran to completion.
pub(crate) struct Finished {
    pub success: bool,
    /// The exit code, when it exited rather than being killed.
    pub code: Option<i32>,
    /// How it ended, e.g. `exit code 128`.
    pub status: String,
    pub stdout: String,
    /// Redacted and trimmed to its last lines.
    pub stderr: String,
    /// The command, for error messages.
    pub command: String,
    /// Where it ran, unless that was the provider's working directory.
    pub dir: Option<PathBuf>,
}

impl Finished {
    /// The error for a command that failed.
    pub fn error(self) -> GitError {
        GitError::Command {
            command: self.command,
            dir: self.dir,
            status: self.status,
            stderr: self.stderr,
        }
    }
}

/// Runs git commands with one program and one set of secrets to redact.
#[derive(Clone, Debug)]
pub(crate) struct Runner {
    pub program: PathBuf,
    pub redactor: Redactor,
    /// A lock every git process of this runner holds too, so that it is
    /// not released while any of them still runs.
    pub hold: Option<Arc<std::fs::File>>,
}

impl Runner {
    /// This runner, its processes holding `lock` as well.
    pub fn holding(&self, lock: &Arc<std::fs::File>) -> Runner {
        Runner {
            hold: Some(lock.clone()),
            ..self.clone()
        }
    }

    /// Runs `git ARGS` in `dir`; a non-zero exit is an error.
    pub async fn run<I, S>(
        &self,
        dir: &Path,
        args: I,
        auth: Option<&Auth>,
    ) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let finished = self.try_run(dir, args, auth).await?;
        if finished.success {
            Ok(finished.stdout)
        } else {
            Err(finished.error())
        }
    }

    /// Runs `git ARGS` in `dir` with `input` on its stdin, for a command
    /// that only reads the repository and whose output is bytes, not text,
    /// reading at most `limit` bytes of it: `None` past them (git is
    /// ended). A non-zero exit is an error. No credential is sent; git
    /// runs as a [`Session::reader`].
    pub async fn run_bytes_within(
        &self,
        dir: &Path,
        args: &[&str],
        input: Vec<u8>,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, GitError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(environment(None, |key| std::env::var_os(key)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source| GitError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let mut session = Session::reader(command).map_err(spawn_error)?;
        if let Some(mut stdin) = session.stdin() {
            // Written beside the reading of the output, which could
            // otherwise fill its pipe and wait for a reader forever.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(&input).await;
            });
        }
        let Some(output) = session.output_within(limit).await.map_err(spawn_error)? else {
            return Ok(None);
        };
        if output.status.success() {
            return Ok(Some(output.stdout));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(GitError::Command {
            command: self.redactor.redact(&args.join(" ")),
            dir: (dir != Path::new(".")).then(|| dir.to_path_buf()),
            status: match output.status.code() {
                Some(code) => format!("exit code {code}"),
                None => "killed".to_owned(),
            },
            stderr: self.redactor.redact(stderr.trim()),
        })
    }

    /// Runs `git ARGS` in `dir` and reports how it ended, failure included.
    pub async fn try_run<I, S>(
        &self,
        dir: &Path,
        args: I,
        auth: Option<&Auth>,
    ) -> Result<Finished, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.try_run_as(dir, args, auth, false).await
    }

    /// [`Runner::try_run`] for a command that only reads a repository on
    /// this host and starts no other program, with no credential: git runs
    /// as a [`Session::reader`].
    pub async fn try_read<I, S>(&self, dir: &Path, args: I) -> Result<Finished, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.try_run_as(dir, args, None, true).await
    }

    async fn try_run_as<I, S>(
        &self,
        dir: &Path,
        args: I,
        auth: Option<&Auth>,
        reader: bool,
    ) -> Result<Finished, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&args)
            .current_dir(dir)
            .env_clear()
            .envs(environment(auth, |key| std::env::var_os(key)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source| GitError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        // Dropping this future (a cancelled provision) drops the session,
        // which ends the whole tree.
        let session = if reader {
            Session::reader(command)
        } else {
            Session::start(command, self.hold.as_ref().map(|lock| lock.as_fd()))
        }
        .map_err(spawn_error)?;
        let output = session.output().await.map_err(spawn_error)?;
        let code = output.status.code();
        let status = match (code, output.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "ended without a status".to_owned(),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
        let command_text = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Finished {
            success: code == Some(0),
            code,
            status,
            stdout: self
                .redactor
                .redact(&String::from_utf8_lossy(&output.stdout)),
            stderr: self.redactor.redact(&tail),
            command: self.redactor.redact(&command_text),
            dir: (dir != Path::new(".")).then(|| dir.to_path_buf()),
        })
    }
}

/// `program` by path: named bare, it is looked up on `PATH` (which git
/// inherits), as exec would. The standard library starts a command whose
/// environment sets `PATH` with a fork unless its program is a path, and a
/// fork copies berth's address space; a path lets it use `posix_spawn`.
/// Not found, it is left bare for the spawn to say so.
pub(crate) fn on_path(program: PathBuf) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    if program.as_os_str().as_bytes().contains(&b'/') {
        return program;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(&program))
                .find(|candidate| is_executable(candidate))
        })
        .unwrap_or(program)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The complete environment of a git process. `inherited` looks up the
/// provider's variables (a parameter so tests can give their own).
pub(crate) fn environment(
    auth: Option<&Auth>,
    inherited: impl Fn(&str) -> Option<OsString>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = INHERITED
        .iter()
        .filter_map(|key| Some((OsString::from(key), inherited(key)?)))
        .collect();
    let fixed = [
        // Not the provider user's home: curl would send the logins of its
        // `~/.netrc` to any host a spec names there. (ssh finds its keys
        // through the password database, not HOME.)
        ("HOME", "/nonexistent"),
        // English messages, so errors read the same everywhere.
        ("LC_ALL", "C"),
        // Never wait for a password nobody will type.
        ("GIT_TERMINAL_PROMPT", "0"),
        // Empty (not unset) stops git falling back to SSH_ASKPASS.
        ("GIT_ASKPASS", ""),
        ("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        // The provider user's own git configuration (credential helpers,
        // URL rewrites) has no say in what berth clones.
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ];
    env.extend(
        fixed
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    let config = config(auth, &inherited);
    env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string().into()));
    for (n, (key, value)) in config.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{n}").into(), key.into()));
        env.push((format!("GIT_CONFIG_VALUE_{n}").into(), value.into()));
    }
    env
}

/// Configuration given to every git command. It is read after the
/// repository's own `.git/config`, so for single-valued keys it wins over
/// whatever a workspace wrote there.
fn config(
    auth: Option<&Auth>,
    inherited: &impl Fn(&str) -> Option<OsString>,
) -> Vec<(String, String)> {
    let mut config: Vec<(String, String)> = [
        // An empty value clears the list of helpers: nothing stores or
        // supplies credentials behind berth's back.
        ("credential.helper", ""),
        // No hooks, no filesystem monitor, no `ext::` remotes: nothing from
        // a repository runs a program.
        ("core.hooksPath", "/dev/null"),
        ("core.fsmonitor", "false"),
        ("protocol.ext.allow", "never"),
        ("gc.auto", "0"),
        ("maintenance.auto", "false"),
        ("fetch.recurseSubmodules", "false"),
        ("submodule.recurse", "false"),
        ("advice.detachedHead", "false"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(auth) = auth {
        // The proxy the provider's environment asks for (as git itself would
        // pick it), or none: a proxy from the repository's configuration
        // would see the header of a plain-http request.
        let proxy = proxy_for(&auth.url, inherited).unwrap_or_default();
        config.push(("http.proxy".into(), proxy.to_string_lossy().into_owned()));
        // Scoped to the repository URL, so the header goes nowhere else
        // (not to another host on redirect, not to other repositories).
        config.push((
            format!("http.{}.extraHeader", auth.url),
            auth.header.clone(),
        ));
    }
    config
}

/// The proxy git would take from the environment for this URL.
fn proxy_for(url: &str, inherited: &impl Fn(&str) -> Option<OsString>) -> Option<OsString> {
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    let keys: &[&str] = if https {
        &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
    } else {
        &["http_proxy", "all_proxy", "ALL_PROXY"]
    };
    keys.iter().find_map(|key| inherited(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn as_strings(env: Vec<(OsString, OsString)>) -> Vec<(String, String)> {
        env.into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect()
    }

    #[test]
    fn a_bare_program_is_found_on_the_path_and_a_path_is_kept() {
        let found = on_path("git".into());
        assert!(found.is_absolute() && found.ends_with("git"), "{found:?}");
        assert!(is_executable(&found));
        assert_eq!(on_path("./bin/git".into()), Path::new("./bin/git"));
        assert_eq!(
            on_path("berth-no-such-git".into()),
            Path::new("berth-no-such-git")
        );
    }

    #[test]
    fn only_known_variables_are_inherited() {
        let env = as_strings(environment(
            None,
            lookup(&[
                ("PATH", "/usr/bin"),
                ("HOME", "/home/provider"),
                ("GIT_DIR", "/elsewhere"),
                ("GIT_TRACE_CURL", "1"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
            ]),
        ));
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"PATH"));
        assert!(!keys.contains(&"GIT_DIR"));
        assert!(!keys.contains(&"GIT_TRACE_CURL"));
        assert!(!keys.contains(&"AWS_SECRET_ACCESS_KEY"));
        assert!(env.contains(&("HOME".into(), "/nonexistent".into())));
        assert!(!env.iter().any(|(_, v)| v == "/home/provider"), "no netrc");
        assert!(env.contains(&("GIT_TERMINAL_PROMPT".into(), "0".into())));
        assert!(env.contains(&("GIT_ASKPASS".into(), "".into())));
    }

    #[test]
    fn the_header_is_configured_through_the_environment_for_its_url_only() {
        let auth = Auth {
            url: "https://example.com/org/repo.git".into(),
            name: "gh".into(),
            header: "Authorization: Bearer tok".into(),
        };
        let env = as_strings(environment(
            Some(&auth),
            lookup(&[
                ("https_proxy", "http://proxy:3128"),
                ("http_proxy", "http://other:1"),
            ]),
        ));
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let count: usize = get("GIT_CONFIG_COUNT").unwrap().parse().unwrap();
        let config: Vec<(String, String)> = (0..count)
            .map(|n| {
                (
                    get(&format!("GIT_CONFIG_KEY_{n}")).unwrap(),
                    get(&format!("GIT_CONFIG_VALUE_{n}")).unwrap(),
                )
            })
            .collect();
        assert!(config.contains(&(
            "http.https://example.com/org/repo.git.extraHeader".into(),
            "Authorization: Bearer tok".into()
        )));
        assert!(config.contains(&("credential.helper".into(), "".into())));
        assert!(config.contains(&("http.proxy".into(), "http://proxy:3128".into())));
        let without = as_strings(environment(None, lookup(&[])));
        assert!(!without.iter().any(|(_, v)| v.contains("tok")));
    }

    #[test]
    fn redaction_replaces_every_secret() {
        let r = Redactor::new(vec!["abc".into(), "abcdef".into(), String::new()]);
        assert_eq!(r.redact("x abcdef y abc z"), "x *** y *** z");
        assert_eq!(r.redact("nothing"), "nothing");
        assert!(!format!("{r:?}").contains("abc"));
    }
}
