//! The git commands of a fetch that run inside an isolated workspace.
//!
//! A checkout in a sandbox or container belongs to the workspace: its
//! `.git/config` may define filters, hooks or a file-system monitor that run
//! programs. So the provider never runs git on it. Instead it asks the
//! workspace's own git (through [`Runtime::exec`]) where the checkout
//! stands, makes a bundle of what is missing from its mirror, and has the
//! workspace's git take the bundle in and fast-forward. Whatever the
//! checkout's configuration does then happens inside the workspace, with
//! no credential anywhere near it.
//!
//! This module only builds the requests and reads their answers; the caller
//! runs them. Everything a workspace prints is untrusted and checked.
//!
//! [`Runtime::exec`]: berth_core::Runtime::exec

use crate::mirror::is_full_hash;
use crate::{FetchOutcome, GitError};
use berth_core::{ExecRequest, WorkspacePath};
use std::path::PathBuf;

/// The exit code of a shell whose command was not found.
const NOT_FOUND: i32 = 127;
/// Exit codes the scripts below use for their own refusals.
const NOT_A_CHECKOUT: i32 = 3;
const NO_HEAD: i32 = 4;
const DIVERGED: i32 = 10;
const MERGE_REFUSED: i32 = 11;

/// Prints where a checkout stands, one `KEY VALUE` line each.
const PROBE: &str = r#"
command -v git >/dev/null 2>&1 || exit 127
[ -e .git ] || exit 3
head=$(git rev-parse --verify --quiet 'HEAD^{commit}') || exit 4
echo "head $head"
branch=$(git symbolic-ref --quiet --short HEAD) || exit 0
echo "branch $branch"
upstream=$(git rev-parse --symbolic-full-name --verify --quiet "$branch@{upstream}") &&
    echo "upstream $upstream"
for ref in refs/berth/base "refs/remotes/origin/$branch" "$upstream"; do
    [ -n "$ref" ] || continue
    commit=$(git rev-parse --verify --quiet "$ref^{commit}") && echo "have $commit"
done
exit 0
"#;

/// Takes in the bundle `$3` (if any) as the remote-tracking ref `$1` (or
/// just points `$1` at `$2`, whose objects are already here), then
/// fast-forwards the current branch to `$2` when that loses nothing.
const ADVANCE: &str = r#"
remote=$1 target=$2 bundle=$3 source=$4
if [ -n "$bundle" ]; then
    git fetch --quiet --no-tags "$bundle" "+$source:$remote" || exit 5
else
    git update-ref "$remote" "$target" || exit 5
fi
previous=$(git rev-parse --verify --quiet 'HEAD^{commit}') || exit 4
if [ "$previous" = "$target" ]; then echo "current $previous"; exit 0; fi
git merge-base --is-ancestor "$target" "$previous"
case $? in 0) echo "current $previous"; exit 0 ;; 1) ;; *) exit 6 ;; esac
git merge-base --is-ancestor "$previous" "$target"
case $? in
    0) ;;
    1) echo "diverged $(git rev-list --left-right --count "$previous...$target")"; exit 10 ;;
    *) exit 6 ;;
esac
git merge --ff-only --quiet "$target" || exit 11
git update-ref refs/berth/base "$target" || exit 5
echo "updated $previous $target"
"#;

/// Where a workspace's checkout stands, as its own git reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The commit HEAD points to.
    pub head: String,
    /// The branch HEAD is on; `None` when detached (a tag or commit).
    pub branch: Option<String>,
    /// The branch on `origin` that the checkout follows (its configured
    /// upstream when that is on `origin`, else `origin`'s branch of the same
    /// name); `None` when it follows nothing.
    pub upstream: Option<String>,
    /// Commits the checkout holds (HEAD, the provisioned base, the
    /// remote-tracking branch), for leaving them out of a bundle.
    pub have: Vec<String>,
}

/// How a command run inside the workspace ended.
#[derive(Debug, Clone, Default)]
pub struct Ran {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The request that asks a checkout at `path` where it stands.
pub fn probe(path: &WorkspacePath) -> ExecRequest {
    script(path, PROBE, &[])
}

/// Reads the answer to [`probe`].
pub fn read_probe(path: &WorkspacePath, ran: &Ran) -> Result<Probe, GitError> {
    check_exit(path, ran)?;
    let mut probe = Probe {
        head: String::new(),
        branch: None,
        upstream: None,
        have: Vec::new(),
    };
    let mut configured = None;
    for line in ran.stdout.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "head" if is_full_hash(value) => {
                probe.head = value.to_owned();
                probe.have.push(value.to_owned());
            }
            "branch" if plain(value) => probe.branch = Some(value.to_owned()),
            "upstream" if plain(value) => configured = Some(value.to_owned()),
            "have" if is_full_hash(value) && !probe.have.iter().any(|h| h == value) => {
                probe.have.push(value.to_owned());
            }
            _ => {}
        }
    }
    if probe.head.is_empty() {
        return Err(unexpected(path, "the commit HEAD points to", ran));
    }
    probe.upstream = match (&probe.branch, configured) {
        (_, Some(name)) => name.strip_prefix("refs/remotes/origin/").map(str::to_owned),
        (Some(branch), None) => Some(branch.clone()),
        (None, None) => None,
    };
    Ok(probe)
}

/// The request that brings `upstream` (a branch on `origin`) to `commit`
/// in the checkout at `path` and fast-forwards onto it. `bundle` is where
/// the bundle was put, relative to the checkout, when one was needed;
/// `branch_ref` is the ref it holds.
pub fn advance(
    path: &WorkspacePath,
    upstream: &str,
    commit: &str,
    bundle: Option<&str>,
    branch_ref: &str,
) -> ExecRequest {
    let remote = format!("refs/remotes/origin/{upstream}");
    script(
        path,
        ADVANCE,
        &[&remote, commit, bundle.unwrap_or_default(), branch_ref],
    )
}

/// Reads the answer to [`advance`]: what the fetch did, or why the
/// checkout was left as it was.
pub fn read_advance(
    path: &WorkspacePath,
    upstream: &str,
    ran: &Ran,
) -> Result<FetchOutcome, GitError> {
    let refused = |reason: String| GitError::CannotFastForward {
        path: PathBuf::from(path.as_str()),
        reason,
    };
    let words: Vec<&str> = ran.stdout.split_whitespace().collect();
    match (ran.code, words.as_slice()) {
        (Some(0), ["current", commit]) if is_full_hash(commit) => Ok(FetchOutcome {
            commit: commit.to_string(),
            previous: commit.to_string(),
            updated: false,
        }),
        (Some(0), ["updated", previous, commit])
            if is_full_hash(previous) && is_full_hash(commit) =>
        {
            Ok(FetchOutcome {
                commit: commit.to_string(),
                previous: previous.to_string(),
                updated: true,
            })
        }
        (Some(DIVERGED), ["diverged", ahead, behind]) => Err(refused(format!(
            "the checked-out branch has diverged from `origin/{upstream}` ({ahead} local and \
             {behind} upstream commits); merge or rebase it in the workspace"
        ))),
        (Some(MERGE_REFUSED), _) => Err(refused(format!(
            "fast-forwarding to `origin/{upstream}` would lose local changes, so nothing was \
             changed; commit or stash them in the workspace, then fetch again. git said: {}",
            tail(&ran.stderr)
        ))),
        _ => {
            check_exit(path, ran)?;
            Err(unexpected(path, "the result of the fast-forward", ran))
        }
    }
}

/// `sh -c SCRIPT sh ARGS...` in the checkout, with English messages and
/// no prompts.
fn script(path: &WorkspacePath, text: &str, args: &[&str]) -> ExecRequest {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        text.to_owned(),
        "sh".to_owned(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut request = ExecRequest::argv(argv);
    request.cwd = (!path.as_str().is_empty()).then(|| path.as_str().to_owned());
    request.env.insert("LC_ALL".to_owned(), "C".to_owned());
    request
        .env
        .insert("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned());
    request
}

/// The errors every script can end with.
fn check_exit(path: &WorkspacePath, ran: &Ran) -> Result<(), GitError> {
    match ran.code {
        Some(0) => Ok(()),
        Some(NOT_FOUND) => Err(GitError::NoGitInside {
            path: path.to_string(),
        }),
        Some(NOT_A_CHECKOUT) => Err(GitError::NotACheckout {
            path: PathBuf::from(path.as_str()),
        }),
        Some(NO_HEAD) => Err(GitError::Inside {
            path: path.to_string(),
            what: "HEAD points to no commit".to_owned(),
        }),
        _ => Err(unexpected(path, "a git command", ran)),
    }
}

fn unexpected(path: &WorkspacePath, what: &str, ran: &Ran) -> GitError {
    let status = match ran.code {
        Some(code) => format!("exit code {code}"),
        None => "killed".to_owned(),
    };
    GitError::Inside {
        path: path.to_string(),
        what: format!("{what} failed ({status}): {}", tail(&ran.stderr)),
    }
}

/// The last lines of what a command printed, for an error message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// A ref or branch name that is safe to pass on: git's own rules are
/// checked where it is used, this keeps out what could be taken for an
/// option or break a line.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(code: i32, stdout: &str) -> Ran {
        Ran {
            code: Some(code),
            stdout: stdout.to_owned(),
            stderr: String::new(),
        }
    }

    fn path() -> WorkspacePath {
        WorkspacePath::parse("app").unwrap()
    }

    #[test]
    fn a_probe_follows_the_configured_upstream_on_origin_only() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let out = format!(
            "head {a}\nbranch work\nupstream refs/remotes/origin/main\nhave {a}\nhave {b}\nhave nonsense\n"
        );
        let probe = read_probe(&path(), &ran(0, &out)).unwrap();
        assert_eq!(probe.head, a);
        assert_eq!(probe.branch.as_deref(), Some("work"));
        assert_eq!(probe.upstream.as_deref(), Some("main"));
        assert_eq!(probe.have, vec![a.clone(), b]);

        let elsewhere = format!("head {a}\nbranch work\nupstream refs/remotes/fork/main\n");
        assert_eq!(
            read_probe(&path(), &ran(0, &elsewhere)).unwrap().upstream,
            None
        );
        let unset = format!("head {a}\nbranch work\n");
        assert_eq!(
            read_probe(&path(), &ran(0, &unset))
                .unwrap()
                .upstream
                .as_deref(),
            Some("work")
        );
        let detached = format!("head {a}\n");
        assert_eq!(
            read_probe(&path(), &ran(0, &detached)).unwrap().upstream,
            None
        );
    }

    #[test]
    fn a_workspace_without_git_is_told_apart() {
        let err = read_probe(&path(), &ran(127, "")).unwrap_err();
        assert!(matches!(err, GitError::NoGitInside { .. }), "{err}");
        assert!(err.to_string().contains("app"), "{err}");
        let err = read_probe(&path(), &ran(0, "head not-a-hash\n")).unwrap_err();
        assert!(matches!(err, GitError::Inside { .. }), "{err}");
    }

    #[test]
    fn a_refused_fast_forward_is_cannot_fast_forward() {
        let err = read_advance(&path(), "main", &ran(10, "diverged 1 2\n")).unwrap_err();
        assert!(matches!(err, GitError::CannotFastForward { .. }), "{err}");
        assert!(err.to_string().contains("1 local and 2 upstream"), "{err}");
        let err = read_advance(&path(), "main", &ran(11, "")).unwrap_err();
        assert!(
            err.to_string().contains("would lose local changes"),
            "{err}"
        );
    }
}
