//! Fetching into a copy of a checkout brought out of an isolated workspace
//! that has no git of its own (an image without it), to be put back after.
//!
//! The copy is the workspace's: its `.git/config` could define filters,
//! hooks or a file-system monitor that run programs, and here the git that
//! reads it would be the provider's. So the configuration is set aside for
//! the whole fetch and git works under one berth writes (core settings and
//! `origin`); the workspace's file is put back, byte for byte, before the
//! copy returns to it. Layouts that would lead git outside the copy (a
//! `.git` that is a link or a `gitdir:` file, a link or a special file
//! anywhere beneath it, linked worktrees, object alternates) are refused. The network step happens in the mirror, as
//! always; the copy only ever fetches from the mirror, without credentials.

use crate::mirror::Mirrors;
use crate::{FetchOutcome, Git, GitError, url};
use berth_core::spec::Repository;
use std::path::Path;

impl Git {
    /// Fetches `repo` from its (updated) mirror into `copy`, a checkout
    /// copied out of a workspace, and fast-forwards it like [`Git::fetch`],
    /// moving [`Git::BASE_REF`] along when it moved. Nothing of the copy's
    /// own git configuration is read.
    pub async fn fetch_copy(
        &self,
        repo: &Repository,
        mirrors: &Mirrors,
        copy: &Path,
    ) -> Result<FetchOutcome, GitError> {
        url::check(&repo.url)?;
        let dot_git = copy.join(".git");
        check_layout(copy, &dot_git).await?;
        let config = dot_git.join("config");
        let io = |source| GitError::Io {
            path: config.clone(),
            source,
        };
        let original = match tokio::fs::symlink_metadata(&config).await {
            Ok(meta) if meta.is_file() => Some(tokio::fs::read(&config).await.map_err(io)?),
            Ok(_) => return Err(unsafe_layout(copy, "`.git/config` is not a plain file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let sha256 = original.as_deref().is_some_and(names_sha256);
        tokio::fs::write(&config, own_config(&repo.url, sha256))
            .await
            .map_err(io)?;
        let fetched = self.fetch_copy_with_own_config(repo, mirrors, copy).await;
        let restored = match &original {
            Some(bytes) => tokio::fs::write(&config, bytes).await,
            None => tokio::fs::remove_file(&config).await,
        };
        let outcome = fetched?;
        restored.map_err(io)?;
        Ok(outcome)
    }

    async fn fetch_copy_with_own_config(
        &self,
        repo: &Repository,
        mirrors: &Mirrors,
        copy: &Path,
    ) -> Result<FetchOutcome, GitError> {
        let previous = self.head(copy).await?;
        {
            let mirror = self.mirror(repo, mirrors).await?;
            let from = mirror.path().as_os_str();
            for refspec in [
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ] {
                let mut args: Vec<&std::ffi::OsStr> =
                    vec!["fetch".as_ref(), "--quiet".as_ref(), "--no-tags".as_ref()];
                if refspec.starts_with("+refs/heads/") {
                    // Branches gone upstream go; the copy's own tags stay.
                    args.push("--prune".as_ref());
                }
                args.extend([from, refspec.as_ref()]);
                mirror.runner(self).run(copy, args, None).await?;
            }
        }
        let outcome = self.fast_forward(copy, previous).await?;
        if outcome.updated {
            self.mark_base(copy).await?;
        }
        Ok(outcome)
    }
}

/// Refuses a copy whose `.git` could send git elsewhere on the host.
async fn check_layout(copy: &Path, dot_git: &Path) -> Result<(), GitError> {
    let kind = |path: &Path| {
        let path = path.to_path_buf();
        async move { tokio::fs::symlink_metadata(&path).await.ok() }
    };
    match kind(dot_git).await {
        None => {
            return Err(GitError::NotACheckout {
                path: copy.to_path_buf(),
            });
        }
        Some(meta) if !meta.is_dir() => {
            return Err(unsafe_layout(
                copy,
                "`.git` is a link or a `gitdir:` file, not a directory",
            ));
        }
        Some(_) => {}
    }
    for dir in ["objects", "refs"] {
        if !kind(&dot_git.join(dir)).await.is_some_and(|m| m.is_dir()) {
            return Err(unsafe_layout(
                copy,
                "`.git/objects` or `.git/refs` is missing or a link",
            ));
        }
    }
    for file in ["commondir", "objects/info/alternates"] {
        if kind(&dot_git.join(file)).await.is_some() {
            return Err(unsafe_layout(
                copy,
                "it borrows from another repository (`.git/commondir` or object alternates)",
            ));
        }
    }
    let walked = dot_git.to_path_buf();
    match tokio::task::spawn_blocking(move || first_unsafe_entry(&walked)).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(entry))) => Err(unsafe_layout(
            copy,
            &format!(
                "`{}` is a link or a special file, which git would follow or block on",
                entry.strip_prefix(copy).unwrap_or(&entry).display()
            ),
        )),
        Ok(Err(source)) => Err(GitError::Io {
            path: dot_git.to_path_buf(),
            source,
        }),
        Err(e) => Err(GitError::Io {
            path: dot_git.to_path_buf(),
            source: std::io::Error::other(e),
        }),
    }
}

/// The first entry beneath `dir` that is neither a directory nor a regular
/// file (a link the workspace planted, a fifo, a device), if any. git
/// makes none in a repository: through one, the provider's git would
/// write objects and refs to, or read them from, wherever it leads.
fn first_unsafe_entry(dir: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if !kind.is_file() {
                return Ok(Some(entry.path()));
            }
        }
    }
    Ok(None)
}

fn unsafe_layout(copy: &Path, reason: &str) -> GitError {
    GitError::UnsafeCheckout {
        path: copy.to_path_buf(),
        reason: reason.to_owned(),
    }
}

/// The configuration git works under while it fetches into the copy.
fn own_config(url: &str, sha256: bool) -> String {
    let (version, extensions) = if sha256 {
        (1, "[extensions]\n\tobjectformat = sha256\n")
    } else {
        (0, "")
    };
    // The URL was checked (no credentials, no control characters); quoted
    // with its backslashes and quotes escaped, it cannot break the file.
    let url = url.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n\
         {extensions}[remote \"origin\"]\n\turl = \"{url}\"\n\
         \tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    )
}

/// Whether a configuration file declares SHA-256 objects. Read as text,
/// never by git: only the object format is taken from it.
fn names_sha256(config: &[u8]) -> bool {
    String::from_utf8_lossy(config).lines().any(|line| {
        let line: String = line
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        line == "objectformat=sha256"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_format_is_read_as_text() {
        assert!(names_sha256(
            b"[core]\n\trepositoryformatversion = 1\n[extensions]\n\tObjectFormat = sha256\n"
        ));
        assert!(!names_sha256(b"[core]\n\tbare = false\n"));
    }

    #[test]
    fn the_own_configuration_names_only_origin() {
        let text = own_config("https://example.com/a\"b.git", false);
        assert!(
            text.contains("url = \"https://example.com/a\\\"b.git\""),
            "{text}"
        );
        assert!(!text.contains("extensions"));
        assert!(own_config("x", true).contains("objectformat = sha256"));
    }
}
