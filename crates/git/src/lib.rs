//! Clone and fetch git repositories with credentials the provider holds.
//!
//! berth runs the `git` executable. A repository names a credential; its
//! token reaches git only as an `http.<url>.extraHeader` set through the git
//! process's environment, so it is in no argv, in no file of the checkout,
//! and in no error (everything git prints is redacted); only for a URL the
//! credential is bound to; and only in git processes that end with berth.
//!
//! Fetching into an existing checkout is careful about two things. It never
//! destroys local work: it only fast-forwards, and says why when it cannot.
//! And it never lets the checkout's own `.git/config` (which whoever uses the
//! workspace can edit) act on an authenticated request: the network fetch runs
//! in a private repository of the provider that borrows the checkout's objects,
//! and only then are the new objects and refs copied into the checkout, by a
//! git process that holds no credential.
//!
//! The provider clones through [`Mirrors`]: one bare repository per URL, the
//! only place a credential is used, so a second clone of a URL downloads only
//! what is new. Checkouts inside isolated workspaces are never touched by the
//! provider's git at all: [`inside`] has the workspace's own git take in a
//! bundle made from the mirror ([`Git::catch_up`]); a workspace without git
//! gets [`Git::fetch_copy`] on a copy, under berth's configuration, not the
//! copy's. [`Git::fetch`], in place, is for checkouts with no isolation to
//! keep (the `local` runtime).

mod blobs;
mod command;
mod copied;
mod credentials;
mod error;
pub mod inside;
mod mirror;
mod mirror_lock;
mod publish;
mod scope;
mod session;
mod url;

pub use blobs::{CommitFile, CommitFiles};
pub use credentials::{
    CREDENTIALS_FILE, Credential, Credentials, ENV_PREFIX, ENV_URLS_SUFFIX, ENV_USERNAME_SUFFIX,
    normalise,
};
pub use error::GitError;
pub use mirror::{CatchUp, Mirror, Mirrors};
pub use publish::Publication;
pub use scope::UrlPrefix;

use berth_core::spec::Repository;
use command::{Auth, Finished, Redactor, Runner};
use std::path::{Path, PathBuf};

/// What a fetch did to a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// The commit checked out after the fetch.
    pub commit: String,
    /// The commit checked out before it.
    pub previous: String,
    /// Whether the checkout moved.
    pub updated: bool,
}

/// Clones and fetches with a set of credentials.
#[derive(Debug, Clone)]
pub struct Git {
    credentials: Credentials,
    runner: Runner,
}

impl Git {
    /// Runs the `git` found on `PATH`.
    pub fn new(credentials: Credentials) -> Git {
        let redactor = Redactor::new(credentials.secrets());
        Git {
            credentials,
            runner: Runner {
                program: command::on_path(PathBuf::from("git")),
                redactor,
                hold: None,
            },
        }
    }

    /// Runs this git executable instead.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Git {
        self.runner.program = command::on_path(program.into());
        self
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Replaces every known secret in `text` with `***`; for callers that
    /// log or show text that may have passed near git.
    pub fn redact(&self, text: &str) -> String {
        self.runner.redactor.redact(text)
    }

    /// Clones `repo.url` into `dest` (which must not exist or be empty) and
    /// checks out `repo.reference`: a branch, a tag or a commit, the remote's
    /// default branch when there is none. A branch is checked out as a local
    /// branch tracking `origin`; a tag or commit as a detached HEAD. Returns
    /// the checked-out commit. On failure `dest` is left as it was found.
    pub async fn clone(&self, repo: &Repository, dest: &Path) -> Result<String, GitError> {
        url::check(&repo.url)?;
        let auth = self.auth(repo)?;
        if let Some(reference) = &repo.reference {
            check_ref(reference, &repo.url)?;
        }
        let existed = prepare_destination(&repo.url, dest).await?;
        let result = self.clone_into(repo, dest, auth.as_ref()).await;
        if result.is_err() {
            // Best effort: the clone's own error is the one worth reporting.
            let _ = if existed {
                empty_directory(dest).await
            } else {
                tokio::fs::remove_dir_all(dest).await
            };
        }
        result
    }

    /// Fetches upstream into an existing checkout of `repo` and, when it is
    /// on a branch whose upstream moved ahead, fast-forwards it. Uncommitted
    /// changes that do not conflict are kept; a checkout that has diverged
    /// from upstream, or whose uncommitted changes would be overwritten, is
    /// left untouched and reported as [`GitError::CannotFastForward`].
    pub async fn fetch(
        &self,
        repo: &Repository,
        checkout: &Path,
    ) -> Result<FetchOutcome, GitError> {
        url::check(&repo.url)?;
        let auth = self.auth(repo)?;
        if !checkout.join(".git").is_dir() {
            return Err(GitError::NotACheckout {
                path: checkout.to_path_buf(),
            });
        }
        let previous = self.head(checkout).await?;
        let sha256 = previous.len() == 64;
        self.fetch_objects(repo, checkout, sha256, auth.as_ref())
            .await?;
        self.fast_forward(checkout, previous).await
    }

    /// Fast-forwards the branch of `checkout` (whose HEAD was at `previous`
    /// before its remote-tracking branches were updated) onto its upstream,
    /// when that loses nothing.
    async fn fast_forward(
        &self,
        checkout: &Path,
        previous: String,
    ) -> Result<FetchOutcome, GitError> {
        let unchanged = || FetchOutcome {
            commit: previous.clone(),
            previous: previous.clone(),
            updated: false,
        };

        let Some(branch) = self.current_branch(checkout).await? else {
            // A tag or commit checkout: there is nothing to follow.
            return Ok(unchanged());
        };
        let Some(upstream) = self.upstream(checkout, &branch).await? else {
            return Ok(unchanged());
        };
        let target = self
            .runner
            .run(
                checkout,
                ["rev-parse", "--verify", &format!("{upstream}^{{commit}}")],
                None,
            )
            .await?
            .trim()
            .to_owned();
        if target == previous || self.is_ancestor(checkout, &target, &previous).await? {
            // Up to date, or only local commits on top of upstream.
            return Ok(unchanged());
        }
        let upstream_short = upstream.strip_prefix("refs/remotes/").unwrap_or(&upstream);
        if !self.is_ancestor(checkout, &previous, &target).await? {
            let counts = self
                .runner
                .run(
                    checkout,
                    [
                        "rev-list",
                        "--left-right",
                        "--count",
                        &format!("{previous}...{target}"),
                    ],
                    None,
                )
                .await?;
            let mut counts = counts.split_whitespace();
            let ahead = counts.next().unwrap_or("some");
            let behind = counts.next().unwrap_or("some");
            return Err(GitError::CannotFastForward {
                path: checkout.to_path_buf(),
                reason: format!(
                    "local branch `{branch}` has diverged from `{upstream_short}` \
                     ({ahead} local and {behind} upstream commits); merge or rebase it in the workspace"
                ),
            });
        }
        let merge = self
            .runner
            .try_run(checkout, ["merge", "--ff-only", "--quiet", &target], None)
            .await?;
        if !merge.success {
            return Err(GitError::CannotFastForward {
                path: checkout.to_path_buf(),
                reason: format!(
                    "fast-forwarding `{branch}` to `{upstream_short}` would lose local changes, \
                     so nothing was changed; commit or stash them in the workspace, then fetch again. git said: {}",
                    merge.stderr
                ),
            });
        }
        let commit = self.head(checkout).await?;
        Ok(FetchOutcome {
            updated: commit != previous,
            commit,
            previous,
        })
    }

    /// What `repo`'s ref points to upstream now, asked without fetching
    /// anything: the commit of its branch or tag, or of the remote's default
    /// branch when it names none. `None` when the ref is no branch or tag
    /// upstream but looks like a commit hash, which never moves. This is
    /// how to tell, cheaply, whether a checkout needs a fetch.
    pub async fn upstream_commit(&self, repo: &Repository) -> Result<Option<String>, GitError> {
        url::check(&repo.url)?;
        let auth = self.auth(repo)?;
        let wanted: Vec<String> = match &repo.reference {
            None => vec!["HEAD".to_owned()],
            Some(reference) => {
                check_ref(reference, &repo.url)?;
                let tag = |name: &str| {
                    [
                        format!("refs/tags/{name}^{{}}"),
                        format!("refs/tags/{name}"),
                    ]
                };
                if let Some(name) = reference.strip_prefix("refs/tags/") {
                    tag(name).into()
                } else if reference.starts_with("refs/") {
                    vec![reference.clone()]
                } else {
                    let mut wanted = vec![format!("refs/heads/{reference}")];
                    wanted.extend(tag(reference));
                    wanted
                }
            }
        };
        let listed = match self.advertised_refs(&repo.url).await {
            Some(listed) => listed,
            None => {
                let mut args = vec!["ls-remote", "--", &repo.url];
                args.extend(wanted.iter().map(String::as_str));
                let listed = self
                    .runner
                    .try_run(Path::new("."), args, auth.as_ref())
                    .await?;
                if !listed.success {
                    return Err(remote_failure(listed, &repo.url, auth.as_ref()));
                }
                listed
                    .stdout
                    .lines()
                    .filter_map(|line| line.split_once('\t'))
                    .map(|(commit, name)| (commit.to_owned(), name.to_owned()))
                    .collect()
            }
        };
        // In order of preference: a branch, a tag's commit, the tag itself.
        let found = wanted.iter().find_map(|name| {
            listed
                .iter()
                .find(|(_, listed)| listed == name)
                .map(|(commit, _)| commit.clone())
        });
        match (found, &repo.reference) {
            (Some(commit), _) => Ok(Some(commit)),
            (None, Some(reference)) if looks_like_commit(reference) => Ok(None),
            (None, reference) => Err(GitError::MissingRef {
                reference: reference.clone().unwrap_or_else(|| "HEAD".to_owned()),
                url: repo.url.clone(),
            }),
        }
    }

    /// The refs of a repository on this host (a plain path), as its
    /// `git upload-pack` advertises them: what `ls-remote` reads too, without
    /// the client git and the shell it starts upload-pack through. `None`
    /// for any other URL, or when upload-pack fails, for `ls-remote` to
    /// ask and to say why.
    async fn advertised_refs(&self, url: &str) -> Option<Vec<(String, String)>> {
        if !url::is_local_path(url) {
            return None;
        }
        let args = ["upload-pack", "--advertise-refs", "--", url];
        let listed = self.runner.try_read(Path::new("."), args).await.ok()?;
        if !listed.success {
            return None;
        }
        parse_advertisement(&listed.stdout)
    }

    /// The ref recording the commit a workspace's checkout was provisioned
    /// at; `berth diff` shows the changes made since.
    pub const BASE_REF: &'static str = "refs/berth/base";

    /// Points [`Git::BASE_REF`] at the commit HEAD is at now.
    pub async fn mark_base(&self, checkout: &Path) -> Result<String, GitError> {
        let head = self.head(checkout).await?;
        self.runner
            .run(
                checkout,
                ["update-ref", Self::BASE_REF, head.as_str()],
                None,
            )
            .await?;
        Ok(head)
    }

    /// The commit HEAD points to (full hash).
    pub async fn head(&self, checkout: &Path) -> Result<String, GitError> {
        if !checkout.join(".git").exists() {
            return Err(GitError::NotACheckout {
                path: checkout.to_path_buf(),
            });
        }
        let out = self
            .runner
            .run(checkout, ["rev-parse", "--verify", "HEAD^{commit}"], None)
            .await?;
        Ok(out.trim().to_owned())
    }

    /// The header for `repo`, if it names a credential that may be sent to
    /// its URL.
    fn auth(&self, repo: &Repository) -> Result<Option<Auth>, GitError> {
        let Some(name) = &repo.credential else {
            return Ok(None);
        };
        let credential = self.credentials.authorize(name, &repo.url)?;
        Ok(Some(Auth {
            url: repo.url.clone(),
            name: name.clone(),
            header: format!("Authorization: {}", credential.authorization()),
        }))
    }

    async fn clone_into(
        &self,
        repo: &Repository,
        dest: &Path,
        auth: Option<&Auth>,
    ) -> Result<String, GitError> {
        let mut args = vec!["clone", "--quiet"];
        if repo.reference.is_some() {
            args.push("--no-checkout");
        }
        args.extend(["--", &repo.url]);
        let mut args: Vec<&std::ffi::OsStr> = args.into_iter().map(AsRef::as_ref).collect();
        args.push(dest.as_os_str());
        let cloned = self.runner.try_run(Path::new("."), args, auth).await?;
        if !cloned.success {
            return Err(remote_failure(cloned, &repo.url, auth));
        }
        if let Some(reference) = &repo.reference {
            self.check_out(repo, dest, reference, auth).await?;
        }
        self.head(dest).await
    }

    /// Checks out a branch, tag or commit in a fresh `--no-checkout` clone.
    async fn check_out(
        &self,
        repo: &Repository,
        dest: &Path,
        reference: &str,
        auth: Option<&Auth>,
    ) -> Result<(), GitError> {
        if !reference.starts_with("refs/tags/") {
            let branch = reference.strip_prefix("refs/heads/").unwrap_or(reference);
            let remote = format!("refs/remotes/origin/{branch}");
            if self.resolve(dest, &remote).await?.is_some() {
                self.runner
                    .run(
                        dest,
                        ["checkout", "--quiet", "-B", branch, &remote, "--"],
                        None,
                    )
                    .await?;
                return Ok(());
            }
        }
        let tag = reference.strip_prefix("refs/tags/").unwrap_or(reference);
        let mut commit = self.resolve(dest, &format!("refs/tags/{tag}")).await?;
        if commit.is_none() && !reference.starts_with("refs/") {
            commit = self.resolve(dest, reference).await?;
        }
        if commit.is_none() {
            // Not among what the clone brought: a commit no branch or tag
            // reaches, or a ref outside heads and tags. Ask for it by name.
            let fetched = self
                .runner
                .try_run(dest, ["fetch", "--quiet", "origin", reference], auth)
                .await?;
            if !fetched.success {
                return Err(match remote_failure(fetched, &repo.url, auth) {
                    err @ GitError::Authentication { .. } => err,
                    _ => GitError::MissingRef {
                        reference: reference.to_owned(),
                        url: repo.url.clone(),
                    },
                });
            }
            commit = self.resolve(dest, "FETCH_HEAD").await?;
        }
        let Some(commit) = commit else {
            return Err(GitError::MissingRef {
                reference: reference.to_owned(),
                url: repo.url.clone(),
            });
        };
        self.runner
            .run(
                dest,
                ["checkout", "--quiet", "--detach", &commit, "--"],
                None,
            )
            .await?;
        Ok(())
    }

    /// The commit a revision names, if it names one.
    async fn resolve(&self, dir: &Path, revision: &str) -> Result<Option<String>, GitError> {
        let out = self
            .runner
            .try_run(
                dir,
                [
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{revision}^{{commit}}"),
                ],
                None,
            )
            .await?;
        Ok(out.success.then(|| out.stdout.trim().to_owned()))
    }

    /// Brings upstream's branches and tags into the checkout as
    /// `refs/remotes/origin/*` and `refs/tags/*`, without running an
    /// authenticated git in the checkout (see the crate documentation).
    async fn fetch_objects(
        &self,
        repo: &Repository,
        checkout: &Path,
        sha256: bool,
        auth: Option<&Auth>,
    ) -> Result<(), GitError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| GitError::Io { path, source }
        };
        let checkout = tokio::fs::canonicalize(checkout)
            .await
            .map_err(io(checkout))?;
        let private = tempfile::Builder::new()
            .prefix("berth-fetch-")
            .tempdir()
            .map_err(io(&std::env::temp_dir()))?;
        let private_path = private.path();
        // No templates: the private repository needs no hooks or samples,
        // and copying them is most of what `init` costs.
        let format = if sha256 { "sha256" } else { "sha1" };
        self.runner
            .run(
                Path::new("."),
                [
                    "init".as_ref(),
                    "--quiet".as_ref(),
                    "--bare".as_ref(),
                    "--template=".as_ref(),
                    format!("--object-format={format}").as_ref(),
                    private_path.as_os_str(),
                ],
                None,
            )
            .await?;
        // Borrow the checkout's objects, so only what is new is downloaded.
        let alternates = private_path.join("objects/info/alternates");
        let objects = checkout.join(".git/objects");
        tokio::fs::write(&alternates, format!("{}\n", objects.display()))
            .await
            .map_err(io(&alternates))?;
        // The checkout's branches tell the server what is already here. The
        // objects all exist through the alternate, so nothing is copied.
        self.runner
            .run(
                private_path,
                [
                    "fetch".as_ref(),
                    "--quiet".as_ref(),
                    "--no-tags".as_ref(),
                    checkout.as_os_str(),
                    "+refs/remotes/origin/*:refs/remotes/origin/*".as_ref(),
                    "+refs/heads/*:refs/berth/local/*".as_ref(),
                ],
                None,
            )
            .await?;
        let fetched = self
            .runner
            .try_run(
                private_path,
                [
                    "fetch",
                    "--quiet",
                    "--prune",
                    "--",
                    &repo.url,
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                auth,
            )
            .await?;
        if !fetched.success {
            return Err(match remote_failure(fetched, &repo.url, auth) {
                // Name the checkout, not the private repository.
                GitError::Command {
                    command,
                    status,
                    stderr,
                    ..
                } => GitError::Command {
                    command,
                    dir: Some(checkout.clone()),
                    status,
                    stderr,
                },
                err => err,
            });
        }
        // Into the checkout, credential-free. Branches are pruned; tags are
        // not (the checkout's own tags stay), but upstream's tags win.
        let from = private_path.as_os_str();
        self.runner
            .run(
                &checkout,
                [
                    "fetch".as_ref(),
                    "--quiet".as_ref(),
                    "--prune".as_ref(),
                    "--no-tags".as_ref(),
                    from,
                    "+refs/remotes/origin/*:refs/remotes/origin/*".as_ref(),
                ],
                None,
            )
            .await?;
        self.runner
            .run(
                &checkout,
                [
                    "fetch".as_ref(),
                    "--quiet".as_ref(),
                    "--no-tags".as_ref(),
                    from,
                    "+refs/tags/*:refs/tags/*".as_ref(),
                ],
                None,
            )
            .await?;
        Ok(())
    }

    /// The branch HEAD is on, or `None` when it is detached.
    async fn current_branch(&self, checkout: &Path) -> Result<Option<String>, GitError> {
        let out = self
            .runner
            .try_run(
                checkout,
                ["symbolic-ref", "--quiet", "--short", "HEAD"],
                None,
            )
            .await?;
        Ok(out.success.then(|| out.stdout.trim().to_owned()))
    }

    /// The `origin` branch that `branch` follows: its configured upstream
    /// when that is on `origin`, else the `origin` branch of the same name.
    async fn upstream(&self, checkout: &Path, branch: &str) -> Result<Option<String>, GitError> {
        let configured = self
            .runner
            .try_run(
                checkout,
                [
                    "rev-parse",
                    "--symbolic-full-name",
                    "--verify",
                    "--quiet",
                    &format!("{branch}@{{upstream}}"),
                ],
                None,
            )
            .await?;
        if configured.success {
            let name = configured.stdout.trim();
            return Ok(name
                .starts_with("refs/remotes/origin/")
                .then(|| name.to_owned()));
        }
        let same_name = format!("refs/remotes/origin/{branch}");
        Ok(self.resolve(checkout, &same_name).await?.map(|_| same_name))
    }

    async fn is_ancestor(&self, dir: &Path, ancestor: &str, of: &str) -> Result<bool, GitError> {
        let out = self
            .runner
            .try_run(dir, ["merge-base", "--is-ancestor", ancestor, of], None)
            .await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(out.error()),
        }
    }
}

/// The error for a failed command that talked to the remote: authentication
/// failures are told apart, since they are the common mistake.
fn remote_failure(finished: Finished, url: &str, auth: Option<&Auth>) -> GitError {
    let text = finished.stderr.to_ascii_lowercase();
    let refused = [
        "authentication failed",
        "could not read username",
        "could not read password",
        "returned error: 401",
        "returned error: 403",
    ]
    .iter()
    .any(|needle| text.contains(needle));
    if refused {
        return GitError::Authentication {
            url: url.to_owned(),
            credential: auth.map(|a| a.name.clone()),
            stderr: finished.stderr,
        };
    }
    finished.error()
}

/// The refs in an upload-pack advertisement (protocol version 0): pkt-lines
/// of `ID NAME`, the first with the capabilities after a NUL, up to a flush.
/// A repository without refs advertises `capabilities^{}` alone.
fn parse_advertisement(text: &str) -> Option<Vec<(String, String)>> {
    let mut refs = Vec::new();
    let mut rest = text;
    loop {
        let length = usize::from_str_radix(rest.get(..4)?, 16).ok()?;
        if length == 0 {
            return Some(refs);
        }
        let line = rest.get(4..length)?;
        rest = &rest[length..];
        let line = line.split('\0').next()?.trim_end_matches('\n');
        let (id, name) = line.split_once(' ')?;
        if name != "capabilities^{}" {
            refs.push((id.to_owned(), name.to_owned()));
        }
    }
}

/// Refuses refs git could take for an option or that cannot name anything.
fn check_ref(reference: &str, url: &str) -> Result<(), GitError> {
    let reason = if reference.is_empty() {
        Some("it is empty")
    } else if reference.starts_with('-') {
        Some("it starts with `-`")
    } else if reference
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(GitError::InvalidRef {
            reference: reference.escape_debug().to_string(),
            url: url.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Whether a ref could be an abbreviated or full commit hash.
fn looks_like_commit(reference: &str) -> bool {
    (4..=64).contains(&reference.len()) && reference.chars().all(|c| c.is_ascii_hexdigit())
}

/// Checks that `dest` is absent or an empty directory; returns whether it
/// existed.
async fn prepare_destination(url: &str, dest: &Path) -> Result<bool, GitError> {
    let refuse = |reason: String| GitError::Destination {
        url: url.to_owned(),
        path: dest.to_path_buf(),
        reason,
    };
    match tokio::fs::symlink_metadata(dest).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(refuse(e.to_string())),
        Ok(meta) if !meta.is_dir() => Err(refuse("it exists and is not a directory".into())),
        Ok(_) => {
            let mut entries = tokio::fs::read_dir(dest)
                .await
                .map_err(|e| refuse(e.to_string()))?;
            match entries.next_entry().await {
                Ok(None) => Ok(true),
                Ok(Some(_)) => Err(refuse("the directory is not empty".into())),
                Err(e) => Err(refuse(e.to_string())),
            }
        }
    }
}

/// Removes everything inside `dir`, keeping `dir`.
async fn empty_directory(dir: &Path) -> std::io::Result<()> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_type().await?.is_dir() {
            tokio::fs::remove_dir_all(entry.path()).await?;
        } else {
            tokio::fs::remove_file(entry.path()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_advertisement;

    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    #[test]
    fn an_advertisement_gives_its_refs_without_the_capabilities() {
        let a = "1".repeat(40);
        let b = "2".repeat(40);
        let text = [
            pkt(&format!(
                "{a} HEAD\0multi_ack symref=HEAD:refs/heads/main\n"
            )),
            pkt(&format!("{a} refs/heads/main\n")),
            pkt(&format!("{b} refs/tags/v1\n")),
            pkt(&format!("{a} refs/tags/v1^{{}}\n")),
            "0000".to_owned(),
        ]
        .concat();
        let refs = parse_advertisement(&text).unwrap();
        let names: Vec<(&str, &str)> = refs.iter().map(|(i, n)| (i.as_str(), n.as_str())).collect();
        assert_eq!(
            names,
            [
                (a.as_str(), "HEAD"),
                (a.as_str(), "refs/heads/main"),
                (b.as_str(), "refs/tags/v1"),
                (a.as_str(), "refs/tags/v1^{}"),
            ]
        );
        let empty = [
            pkt(&format!(
                "{} capabilities^{{}}\0agent=git\n",
                "0".repeat(40)
            )),
            "0000".to_owned(),
        ]
        .concat();
        assert_eq!(parse_advertisement(&empty).unwrap(), Vec::new());
        assert_eq!(parse_advertisement("00zz"), None, "not pkt-lines");
        assert_eq!(
            parse_advertisement(&pkt("x refs/heads/main\n")),
            None,
            "no flush"
        );
    }
}
