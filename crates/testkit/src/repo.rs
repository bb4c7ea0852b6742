//! Git repositories made by tests: create one with files, then add commits,
//! branches and tags to it so that "upstream" can move under a clone.

use std::path::Path;
use std::process::Command;

/// Runs `git ARGS` in `dir` with a fixed identity and no user or system
/// configuration; returns stdout, trimmed. Panics with git's stderr when it
/// fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "berth test")
        .env("GIT_AUTHOR_EMAIL", "test@berth.invalid")
        .env("GIT_COMMITTER_NAME", "berth test")
        .env("GIT_COMMITTER_EMAIL", "test@berth.invalid")
        .output()
        .unwrap_or_else(|e| panic!("cannot run git: {e}"));
    if !output.status.success() {
        panic!(
            "`git {}` in {} failed ({}): {}",
            args.join(" "),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Creates a repository at `dir` (created if missing) on branch `main` with
/// one commit holding `files` (`(path, contents)`, parents created); returns
/// the commit.
pub fn make_repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    git(dir, &["init", "--quiet", "--initial-branch=main"]);
    commit_files(dir, files, "initial commit")
}

/// Writes `files` into the repository at `repo` and commits them on the
/// current branch; returns the new commit.
pub fn commit_files(repo: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, contents) in files {
        let file = repo.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&file, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    }
    git(repo, &["add", "--all"]);
    git(repo, &["commit", "--quiet", "--allow-empty", "-m", message]);
    head(repo)
}

/// Creates branch `name` at the current commit (without switching to it).
pub fn create_branch(repo: &Path, name: &str) {
    git(repo, &["branch", name]);
}

/// Switches the repository to branch `name`.
pub fn checkout(repo: &Path, name: &str) {
    git(repo, &["checkout", "--quiet", name]);
}

/// Creates an annotated tag `name` at the current commit.
pub fn tag(repo: &Path, name: &str) {
    git(repo, &["tag", "-a", "-m", name, name]);
}

/// The commit HEAD points to.
pub fn head(repo: &Path) -> String {
    git(repo, &["rev-parse", "HEAD"])
}
