//! Provider-held mirrors: one bare repository per upstream URL, kept in
//! berth's state directory and brought up to date by the only git process
//! that ever holds a credential. Workspaces are cloned from a mirror and
//! fed bundles made from it, so no git process that touches a workspace's
//! files talks to the network or sees a credential, and a second clone of a
//! URL downloads only what is new.
//!
//! A lock file next to each mirror serialises everyone who updates or reads
//! it: several provisions of one URL at once, in one berth process or many.
//! Every git process working on a mirror holds the lock too, so it is not
//! free again until the last of them has ended, even when they outlive the
//! berth process that took it. While held, the lock file names the process
//! holding it; it is emptied on release. A lock found taken but not
//! released means its holder died: whatever that holder was making (a
//! partial clone, bundles, git's own lock files) is removed before the
//! mirror is used again, at berth's start ([`Mirrors::recover`]) or by
//! `berth gc` ([`Mirrors::gc`]).

use crate::command::{Auth, Runner};
use crate::mirror_lock::{Entry, Wait, any_dead_holder, io_error, sweep, take_lock};
use crate::{Git, GitError, check_ref, looks_like_commit, remote_failure, url};
use berth_core::spec::Repository;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The directory holding every mirror. For the mirror named `H` (a hash of
/// its URL): `H.git` is the bare repository, `H.lock` its lock, `H.partial`
/// the first clone while it is made, `scratch/H-*` bundles being made.
#[derive(Debug, Clone)]
pub struct Mirrors {
    root: PathBuf,
}

impl Mirrors {
    /// Mirrors kept in `root` (created when first needed), conventionally
    /// `$BERTH_HOME/git/mirrors`.
    pub fn new(root: impl Into<PathBuf>) -> Mirrors {
        Mirrors { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the mirror of `url` lives: named by a hash of the URL, so that
    /// any URL makes a safe file name and none can name another's mirror.
    pub fn path_for(&self, url: &str) -> PathBuf {
        self.root.join(format!("{}.git", hash(url)))
    }

    /// Takes the lock of `url`'s mirror, waiting for whoever holds it, and
    /// clears what a holder that died left.
    async fn lock(&self, url: &str) -> Result<Mirror, GitError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(io_error(&self.root))?;
        let entry = Entry::new(&self.root, &hash(url));
        let lock_path = entry.lock_file();
        // `flock` blocks, so it waits on a blocking thread.
        let (entry, file) = tokio::task::spawn_blocking(move || {
            let file = take_lock(&entry.lock_file(), Wait::Yes)?
                .ok_or_else(|| io::Error::other("waited for the lock and did not get it"))?;
            entry.claim(&file)?;
            Ok((entry, file))
        })
        .await
        .map_err(|e| GitError::Io {
            path: lock_path.clone(),
            source: io::Error::other(e),
        })?
        .map_err(io_error(&lock_path))?;
        Ok(Mirror {
            path: entry.repository(),
            url: url.to_owned(),
            entry,
            lock: Arc::new(file),
        })
    }

    /// Clears what berth processes that died while holding a mirror left,
    /// for every mirror nobody holds now: run when berth starts. Returns
    /// what was removed.
    pub async fn recover(&self) -> Result<Vec<PathBuf>, GitError> {
        // Nearly every start finds nothing to clear, which a directory read
        // and a stat per mirror tell here, for less than a blocking
        // thread costs to start.
        if !any_dead_holder(&self.root)? {
            return Ok(Vec::new());
        }
        self.sweep(false).await
    }

    /// Like [`Mirrors::recover`], and also removes what a crash could have
    /// left under a lock that was released: partial clones, bundles, git's
    /// lock files, and the lock files of mirrors that were never made.
    pub async fn gc(&self) -> Result<Vec<PathBuf>, GitError> {
        self.sweep(true).await
    }

    async fn sweep(&self, everything: bool) -> Result<Vec<PathBuf>, GitError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sweep(&root, everything))
            .await
            .map_err(|e| GitError::Io {
                path: self.root.clone(),
                source: io::Error::other(e),
            })?
    }
}

fn hash(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An up-to-date mirror, locked for as long as this value lives and any git
/// process started on it runs.
#[derive(Debug)]
pub struct Mirror {
    path: PathBuf,
    url: String,
    entry: Entry,
    /// Held for the lock; released when dropped and no git process holds
    /// it any more.
    lock: Arc<File>,
}

impl Mirror {
    /// The bare repository.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The upstream URL it mirrors.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `git`'s runner, its processes holding this mirror's lock.
    pub(crate) fn runner(&self, git: &Git) -> Runner {
        git.runner.holding(&self.lock)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // Released in good order: nothing to clear for the next holder.
        let _ = self.lock.set_len(0);
    }
}

/// What a workspace's checkout needs to catch up with a branch of the
/// mirror: the branch's commit, and a bundle of the objects the checkout
/// lacks (none when it has them all already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// `refs/heads/NAME`, the ref the bundle holds.
    pub branch_ref: String,
    pub commit: String,
    pub bundle: Option<Vec<u8>>,
}

impl Git {
    /// Brings the mirror of `repo.url` up to date with upstream's branches
    /// and tags (and `repo.reference`, when that is a commit or a ref
    /// outside them), creating it on first use, and returns it locked.
    pub async fn mirror(&self, repo: &Repository, mirrors: &Mirrors) -> Result<Mirror, GitError> {
        url::check(&repo.url)?;
        let auth = self.auth(repo)?;
        if let Some(reference) = &repo.reference {
            check_ref(reference, &repo.url)?;
        }
        let mirror = mirrors.lock(&repo.url).await?;
        if mirror.path.join("HEAD").is_file() {
            self.update_mirror(repo, &mirror, auth.as_ref()).await?;
        } else {
            self.create_mirror(repo, &mirror, auth.as_ref()).await?;
        }
        if let Some(reference) = &repo.reference {
            self.mirror_reference(repo, &mirror, reference, auth.as_ref())
                .await?;
        }
        Ok(mirror)
    }

    /// Clones `repo` like [`Git::clone`], through its mirror: the mirror is
    /// updated (the one step with the credential), then `dest` is cloned
    /// from it with `origin` set to the repository's own URL. Only what is
    /// new upstream since the mirror's last update is downloaded.
    pub async fn clone_with_mirror(
        &self,
        repo: &Repository,
        mirrors: &Mirrors,
        dest: &Path,
    ) -> Result<String, GitError> {
        url::check(&repo.url)?;
        self.auth(repo)?;
        if let Some(reference) = &repo.reference {
            check_ref(reference, &repo.url)?;
        }
        let existed = crate::prepare_destination(&repo.url, dest).await?;
        let result = async {
            let mirror = self.mirror(repo, mirrors).await?;
            self.clone_from_mirror(repo, &mirror, dest).await
        }
        .await;
        if result.is_err() {
            // Best effort: the clone's own error is the one worth reporting.
            let _ = if existed {
                crate::empty_directory(dest).await
            } else {
                tokio::fs::remove_dir_all(dest).await
            };
        }
        result
    }

    /// What a checkout holding the commits `have` (those the mirror does
    /// not know are ignored) needs to reach `branch` as the mirror has it;
    /// `None` when upstream has no such branch.
    pub async fn catch_up(
        &self,
        mirror: &Mirror,
        branch: &str,
        have: &[String],
    ) -> Result<Option<CatchUp>, GitError> {
        let branch_ref = format!("refs/heads/{branch}");
        check_ref(branch, &mirror.url)?;
        let format = self
            .runner
            .try_run(
                Path::new("."),
                ["check-ref-format", branch_ref.as_str()],
                None,
            )
            .await?;
        if !format.success {
            return Err(GitError::InvalidRef {
                reference: branch.escape_debug().to_string(),
                url: mirror.url.clone(),
                reason: "it is not a valid branch name".to_owned(),
            });
        }
        let Some(commit) = self.resolve(&mirror.path, &branch_ref).await? else {
            return Ok(None);
        };
        let mut known = Vec::new();
        for candidate in have {
            if !is_full_hash(candidate) || known.contains(candidate) {
                continue;
            }
            if let Some(found) = self.resolve(&mirror.path, candidate).await? {
                known.push(found);
            }
        }
        for held in &known {
            if *held == commit || self.is_ancestor(&mirror.path, &commit, held).await? {
                return Ok(Some(CatchUp {
                    branch_ref,
                    commit,
                    bundle: None,
                }));
            }
        }
        let scratch_dir = mirror.entry.scratch();
        tokio::fs::create_dir_all(&scratch_dir)
            .await
            .map_err(io_error(&scratch_dir))?;
        // Removed when dropped, on every path out of here; by the next
        // holder of the lock if this process dies first.
        let scratch = tempfile::Builder::new()
            .prefix(&mirror.entry.scratch_prefix())
            .tempdir_in(&scratch_dir)
            .map_err(io_error(&scratch_dir))?;
        let file = scratch.path().join("fetch.bundle");
        let mut args = vec![
            "bundle".to_owned(),
            "create".to_owned(),
            "--quiet".to_owned(),
            file.display().to_string(),
            branch_ref.clone(),
        ];
        // Everything reachable from what the checkout has is left out; with
        // nothing known, the bundle holds the branch's whole history.
        args.extend(known.iter().map(|held| format!("^{held}")));
        mirror.runner(self).run(&mirror.path, &args, None).await?;
        let bundle = tokio::fs::read(&file)
            .await
            .map_err(|source| GitError::Io { path: file, source })?;
        Ok(Some(CatchUp {
            branch_ref,
            commit,
            bundle: Some(bundle),
        }))
    }

    async fn create_mirror(
        &self,
        repo: &Repository,
        mirror: &Mirror,
        auth: Option<&Auth>,
    ) -> Result<(), GitError> {
        // A repository without HEAD is one `git clone` never finished:
        // start again.
        let partial = mirror.entry.partial();
        for leftover in [&mirror.path, &partial] {
            match tokio::fs::remove_dir_all(leftover).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(GitError::Io {
                        path: leftover.clone(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        // `clone --bare` takes the remote's object format and default
        // branch; its branches and tags land as the mirror's own.
        let mut args: Vec<std::ffi::OsString> = vec![
            "clone".into(),
            "--quiet".into(),
            "--bare".into(),
            "--".into(),
        ];
        args.push(repo.url.clone().into());
        args.push(partial.clone().into_os_string());
        let cloned = mirror
            .runner(self)
            .try_run(Path::new("."), &args, auth)
            .await?;
        if !cloned.success {
            let _ = tokio::fs::remove_dir_all(&partial).await;
            return Err(remote_failure(cloned, &repo.url, auth));
        }
        tokio::fs::rename(&partial, &mirror.path)
            .await
            .map_err(|source| GitError::Io {
                path: mirror.path.clone(),
                source,
            })
    }

    /// Lists upstream's branches and tags first (one round trip) and
    /// fetches only when they differ from the mirror's: a cache hit on an
    /// unchanged repository costs no more than the listing.
    async fn update_mirror(
        &self,
        repo: &Repository,
        mirror: &Mirror,
        auth: Option<&Auth>,
    ) -> Result<(), GitError> {
        let listed = mirror
            .runner(self)
            .try_run(
                Path::new("."),
                [
                    "ls-remote",
                    "--symref",
                    "--",
                    &repo.url,
                    "HEAD",
                    "refs/heads/*",
                    "refs/tags/*",
                ],
                auth,
            )
            .await?;
        if !listed.success {
            return Err(remote_failure(listed, &repo.url, auth));
        }
        let mut upstream = std::collections::BTreeSet::new();
        let mut head = None;
        for line in listed.stdout.lines() {
            let Some((left, name)) = line.split_once('\t') else {
                continue;
            };
            if let Some(target) = left.strip_prefix("ref: ") {
                if name == "HEAD" && target.starts_with("refs/heads/") {
                    head = Some(target.to_owned());
                }
            } else if name.starts_with("refs/") && !name.ends_with("^{}") {
                upstream.insert((left.to_owned(), name.to_owned()));
            }
        }
        let held = mirror
            .runner(self)
            .run(
                &mirror.path,
                [
                    "for-each-ref",
                    "--format=%(objectname)\t%(refname)",
                    "refs/heads",
                    "refs/tags",
                ],
                None,
            )
            .await?;
        let held: std::collections::BTreeSet<(String, String)> = held
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(commit, name)| (commit.to_owned(), name.to_owned()))
            .collect();
        if held != upstream {
            let fetched = mirror
                .runner(self)
                .try_run(
                    &mirror.path,
                    [
                        "fetch",
                        "--quiet",
                        "--prune",
                        "--no-tags",
                        "--",
                        &repo.url,
                        "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                    auth,
                )
                .await?;
            if !fetched.success {
                return Err(remote_failure(fetched, &repo.url, auth));
            }
        }
        // The default branch is what a clone without a ref checks out;
        // upstream may have changed it since the mirror was made.
        if let Some(head) = head {
            mirror
                .runner(self)
                .run(&mirror.path, ["symbolic-ref", "HEAD", &head], None)
                .await?;
        }
        Ok(())
    }

    /// Makes sure a reference that is no branch or tag (a commit, or a ref
    /// such as `refs/pull/1/head`) is in the mirror, fetching it by name.
    async fn mirror_reference(
        &self,
        repo: &Repository,
        mirror: &Mirror,
        reference: &str,
        auth: Option<&Auth>,
    ) -> Result<(), GitError> {
        let short = reference
            .strip_prefix("refs/heads/")
            .or_else(|| reference.strip_prefix("refs/tags/"))
            .unwrap_or(reference);
        let mut candidates = Vec::new();
        if reference.starts_with("refs/") {
            candidates.push(reference.to_owned());
        } else {
            candidates.push(format!("refs/heads/{short}"));
            candidates.push(format!("refs/tags/{short}"));
            if looks_like_commit(reference) {
                candidates.push(reference.to_owned());
            }
        }
        for candidate in &candidates {
            if self.resolve(&mirror.path, candidate).await?.is_some() {
                return Ok(());
            }
        }
        let missing = || GitError::MissingRef {
            reference: reference.to_owned(),
            url: repo.url.clone(),
        };
        // Branches and tags were just fetched: only a commit or another
        // kind of ref can still be found upstream.
        let stored = if reference.starts_with("refs/") {
            reference.to_owned()
        } else if is_full_hash(reference) {
            format!("refs/berth/commits/{reference}")
        } else {
            return Err(missing());
        };
        let fetched = mirror
            .runner(self)
            .try_run(
                &mirror.path,
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--",
                    &repo.url,
                    &format!("+{reference}:{stored}"),
                ],
                auth,
            )
            .await?;
        if !fetched.success {
            return Err(match remote_failure(fetched, &repo.url, auth) {
                err @ GitError::Authentication { .. } => err,
                _ => missing(),
            });
        }
        Ok(())
    }

    async fn clone_from_mirror(
        &self,
        repo: &Repository,
        mirror: &Mirror,
        dest: &Path,
    ) -> Result<String, GitError> {
        // Copies, not hard links: the clone is handed to a workspace, whose
        // root may own and write its files; a link would let it rewrite
        // the mirror's objects under every later workspace.
        let mut args: Vec<std::ffi::OsString> =
            vec!["clone".into(), "--quiet".into(), "--no-hardlinks".into()];
        if repo.reference.is_some() {
            args.push("--no-checkout".into());
        }
        args.push("--".into());
        args.push(mirror.path.clone().into_os_string());
        args.push(dest.as_os_str().to_owned());
        mirror.runner(self).run(Path::new("."), &args, None).await?;
        if let Some(reference) = &repo.reference {
            // `origin` is still the mirror, which holds whatever the ref
            // names: nothing here needs the network or a credential.
            self.check_out(repo, dest, reference, None).await?;
        }
        mirror
            .runner(self)
            .run(dest, ["remote", "set-url", "origin", &repo.url], None)
            .await?;
        self.head(dest).await
    }
}

/// A full SHA-1 or SHA-256 commit hash, as git prints them.
pub(crate) fn is_full_hash(text: &str) -> bool {
    matches!(text.len(), 40 | 64)
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names_are_hashes_of_the_url() {
        let mirrors = Mirrors::new("/m");
        let a = mirrors.path_for("https://example.com/a.git");
        assert_ne!(a, mirrors.path_for("https://example.com/b.git"));
        assert_eq!(a, mirrors.path_for("https://example.com/a.git"));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 64 + 4, "{name}");
        assert!(name.ends_with(".git"));
        assert_eq!(
            mirrors.path_for("../../etc").parent(),
            Some(Path::new("/m"))
        );
    }

    #[test]
    fn only_full_lowercase_hashes_pass() {
        assert!(is_full_hash(&"a".repeat(40)));
        assert!(is_full_hash(&"0".repeat(64)));
        assert!(!is_full_hash(&"a".repeat(39)));
        assert!(!is_full_hash(&"A".repeat(40)));
        assert!(!is_full_hash(&format!("-{}", "a".repeat(39))));
    }
}
