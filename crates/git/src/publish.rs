//! Publishing a change: a patch committed on the commit it was made
//! against and pushed as a branch, by berth's own git in a scratch
//! repository of the provider, with the repository's credential (bound to
//! its URLs as for clones). Nothing of it happens in a workspace.

use crate::{Git, GitError, check_ref, url};
use berth_core::spec::Repository;
use std::path::Path;

/// What to publish.
#[derive(Debug, Clone)]
pub struct Publication<'a> {
    /// Where to fetch the base from and push to, with its credential.
    pub repository: &'a Repository,
    /// The commit the patch applies to.
    pub base: &'a str,
    /// A `git diff` of the change (binary included).
    pub patch: &'a [u8],
    pub branch: &'a str,
    pub message: &'a str,
    /// What berth pushed to the branch before: the push goes through only
    /// if the branch is still there (force-with-lease); `None`: the branch
    /// must not exist yet.
    pub previous: Option<&'a str>,
}

/// Who berth's commits are by.
const IDENTITY: [&str; 4] = ["-c", "user.name=berth", "-c", "user.email=berth@localhost"];

impl Git {
    /// Commits `publication.patch` on its base in a new repository at
    /// `scratch` (which must not exist; it is removed after) and pushes the
    /// commit to the branch. Returns the commit pushed.
    pub async fn publish(
        &self,
        publication: &Publication<'_>,
        scratch: &Path,
    ) -> Result<String, GitError> {
        let result = self.publish_in(publication, scratch).await;
        let _ = tokio::fs::remove_dir_all(scratch).await;
        result
    }

    async fn publish_in(
        &self,
        publication: &Publication<'_>,
        scratch: &Path,
    ) -> Result<String, GitError> {
        let repo = publication.repository;
        url::check(&repo.url)?;
        check_ref(publication.branch, &repo.url)?;
        if !publication.base.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(GitError::MissingRef {
                reference: publication.base.to_owned(),
                url: repo.url.clone(),
            });
        }
        let auth = self.auth(repo)?;
        tokio::fs::create_dir_all(scratch)
            .await
            .map_err(|source| GitError::Io {
                path: scratch.to_path_buf(),
                source,
            })?;
        let run = &self.runner;
        run.run(scratch, ["init", "--quiet"], None).await?;
        let upstream = repo.reference.as_deref().unwrap_or("HEAD");
        run.run(
            scratch,
            ["fetch", "--quiet", "--no-tags", repo.url.as_str(), upstream],
            auth.as_ref(),
        )
        .await?;
        let base_commit = format!("{}^{{commit}}", publication.base);
        let has_base = run
            .try_run(scratch, ["cat-file", "-e", base_commit.as_str()], None)
            .await?
            .success;
        if !has_base {
            run.run(
                scratch,
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    repo.url.as_str(),
                    publication.base,
                ],
                auth.as_ref(),
            )
            .await?;
        }
        let patch = scratch.join(".git").join("berth-publish.patch");
        tokio::fs::write(&patch, publication.patch)
            .await
            .map_err(|source| GitError::Io {
                path: patch.clone(),
                source,
            })?;
        run.run(scratch, ["read-tree", publication.base], None)
            .await?;
        let patch_arg = patch.to_string_lossy().into_owned();
        run.run(
            scratch,
            ["apply", "--cached", "--binary", patch_arg.as_str()],
            None,
        )
        .await?;
        let tree = run.run(scratch, ["write-tree"], None).await?;
        let mut commit_args: Vec<&str> = IDENTITY.to_vec();
        commit_args.extend([
            "commit-tree",
            tree.trim(),
            "-p",
            publication.base,
            "-m",
            publication.message,
        ]);
        let commit = run.run(scratch, commit_args, None).await?;
        let commit = commit.trim().to_owned();
        let target = format!("refs/heads/{}", publication.branch);
        let lease = format!(
            "--force-with-lease={target}:{}",
            publication.previous.unwrap_or("")
        );
        let refspec = format!("{commit}:{target}");
        run.run(
            scratch,
            ["push", lease.as_str(), repo.url.as_str(), refspec.as_str()],
            auth.as_ref(),
        )
        .await?;
        Ok(commit)
    }
}
