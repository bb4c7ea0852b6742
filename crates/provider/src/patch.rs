//! A repository's patch made on the host, for the common case: a
//! workspace whose layers name every changed file, provisioned by this
//! process from commits whose trees its files are (no setup script ran),
//! where the step edited or deleted tracked text files. The changed paths
//! come from the layers, the new contents through the runtime's reads
//! (beneath the workspace, links leading out refused, size bounded), the
//! base contents from the provider's mirror of the repository, the hunks
//! from `similar`. The patch is what `git diff --binary` in the workspace
//! would write, up to the choice among equally minimal hunks.
//!
//! Whatever it cannot make exactly as git would, it declines: links,
//! submodules, binary, large or non-UTF-8 files, carriage returns, new
//! files (which `.gitignore` may exclude), attributes, paths git would
//! quote, a repository whose git settings or base ref the workspace
//! changed. The diff script inside the workspace makes that patch.

use crate::Provider;
use berth_core::spec::Repository;
use berth_core::{Change, ChangeKind, FileKind, Runtime, Workspace, WorkspacePath};
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

/// What a workspace's repositories were provisioned at.
#[derive(Debug, Clone)]
pub(crate) struct Provisioned {
    /// In the spec's order.
    pub commits: Vec<String>,
    /// Whether the provisioned files are those commits' trees exactly (no
    /// setup script ran on them).
    pub exact: bool,
}

/// The most changed files a patch is made of on the host.
const MAX_FILES: usize = 64;

/// The largest file, before or after, a patch made on the host holds.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The most bytes of files, before and after, a patch made on the host
/// holds at once.
const MAX_TOTAL_BYTES: u64 = 8 << 20;

/// The most bytes read from the mirror for one patch: the files before,
/// and the trees of their directories.
const MAX_READ_BYTES: u64 = 2 * MAX_TOTAL_BYTES;

/// How long the hunks of one file may take to find; past it they are
/// still correct, only not minimal.
const DIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// What git's object id of nothing is.
const NULL_ID: &str = "0000000000000000000000000000000000000000";

/// A changed file of the repository, at `path` relative to it.
struct Changed {
    path: String,
    deleted: bool,
}

impl Provider {
    /// The patch of `repo` (the spec's `index`-th repository) made on the
    /// host, its paths prefixed with `prefix`; `None` when it cannot be
    /// made exactly here.
    pub(crate) async fn host_patch(
        &self,
        ws: &Workspace,
        runtime: &dyn Runtime,
        (index, repo): (usize, &Repository),
        prefix: &str,
        changes: &[Change],
    ) -> Option<Vec<u8>> {
        let provisioned = self.provisioned_of(ws.id.as_str())?;
        if !provisioned.exact {
            return None;
        }
        let commit = provisioned.commits.get(index)?;
        let changed = select(&repo.path, changes)?;
        if changed.is_empty() {
            return Some(Vec::new());
        }
        let made = self
            .make_patch(ws, runtime, repo, commit, prefix, &changed)
            .await;
        if made.is_none() {
            tracing::debug!(workspace = %ws.id, repository = %repo.path, "the patch is made in the workspace");
        }
        made
    }

    async fn make_patch(
        &self,
        ws: &Workspace,
        runtime: &dyn Runtime,
        repo: &Repository,
        commit: &str,
        prefix: &str,
        changed: &[Changed],
    ) -> Option<Vec<u8>> {
        let mirrors = crate::provision::mirrors(self.home());
        let paths: Vec<String> = changed.iter().map(|c| c.path.clone()).collect();
        let base = self
            .git()
            .commit_files(&mirrors, &repo.url, commit, &paths, MAX_READ_BYTES)
            .await
            .ok()??;
        // With attributes, git could convert or filter what it compares.
        if base.attributes {
            return None;
        }
        let mut bases = Vec::with_capacity(changed.len());
        for file in &base.files {
            let file = file.as_ref()?;
            if !matches!(file.mode, 0o100644 | 0o100755) || file.data.len() as u64 > MAX_FILE_BYTES
            {
                return None;
            }
            bases.push(file);
        }
        let modes = self.modes(ws, runtime, &repo.path, changed).await?;
        let total: u64 = bases.iter().map(|b| b.data.len() as u64).sum::<u64>()
            + modes.iter().flatten().map(|(_, size)| size).sum::<u64>();
        if total > MAX_TOTAL_BYTES {
            return None;
        }
        let mut patch = String::new();
        for ((file, base), mode) in changed.iter().zip(&bases).zip(&modes) {
            let new = match mode {
                None => None,
                Some((mode, size)) => {
                    let at = repo.path.join(&WorkspacePath::parse(&file.path).ok()?);
                    let stream = runtime.read_file(ws, &at).await.ok()?;
                    let data = stream.read_all(MAX_FILE_BYTES).await.ok()?;
                    // Changed since it was looked at: the workspace is
                    // busy; the script takes what is there.
                    if data.len() as u64 != *size {
                        return None;
                    }
                    Some((*mode, data))
                }
            };
            let old = text(&base.data)?;
            let new = match &new {
                Some((mode, data)) => Some((*mode, text(data)?)),
                None => None,
            };
            write_file(
                &mut patch,
                &format!("{prefix}{}", file.path),
                (base.mode, &base.id, old),
                new,
            );
        }
        Some(patch.into_bytes())
    }

    /// The mode and size of each changed file as it is now, `None` for
    /// one deleted; `None` in all when one is no longer a regular file.
    async fn modes(
        &self,
        ws: &Workspace,
        runtime: &dyn Runtime,
        repo: &WorkspacePath,
        changed: &[Changed],
    ) -> Option<Vec<Option<(u32, u64)>>> {
        let mut listed: HashMap<String, HashMap<String, (FileKind, u32, u64)>> = HashMap::new();
        let mut modes = Vec::with_capacity(changed.len());
        for file in changed {
            if file.deleted {
                modes.push(None);
                continue;
            }
            let (dir, name) = match file.path.rsplit_once('/') {
                Some((dir, name)) => (dir.to_owned(), name),
                None => (String::new(), file.path.as_str()),
            };
            if !listed.contains_key(&dir) {
                let at = if dir.is_empty() {
                    repo.clone()
                } else {
                    repo.join(&WorkspacePath::parse(&dir).ok()?)
                };
                let entries = runtime.list_files(ws, &at).await.ok()?;
                let by_name = entries
                    .into_iter()
                    .filter_map(|e| {
                        let name = std::path::Path::new(&e.path).file_name()?.to_str()?;
                        Some((name.to_owned(), (e.kind, e.mode, e.size)))
                    })
                    .collect();
                listed.insert(dir.clone(), by_name);
            }
            let (kind, mode, size) = *listed.get(&dir)?.get(name)?;
            if kind != FileKind::File {
                return None;
            }
            let mode = if mode & 0o100 != 0 {
                0o100755
            } else {
                0o100644
            };
            modes.push(Some((mode, size)));
        }
        Some(modes)
    }
}

/// The changed files of the repository at `repo` that a patch made on the
/// host can show, sorted; `None` when some change needs the script.
fn select(repo: &WorkspacePath, changes: &[Change]) -> Option<Vec<Changed>> {
    let prefix = if repo.is_root() {
        String::new()
    } else {
        format!("{repo}/")
    };
    let mut changed = Vec::new();
    for change in changes {
        let raw = change.raw_path();
        let Ok(path) = std::str::from_utf8(&raw) else {
            // Not UTF-8: outside this repository or not for the host.
            if raw.starts_with(prefix.as_bytes()) {
                return None;
            }
            continue;
        };
        let Some(path) = path.strip_prefix(prefix.as_str()) else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        if let Some(inside) = path.strip_prefix(".git/") {
            if changes_the_diff(inside) {
                return None;
            }
            continue;
        }
        let mut parts = path.split('/');
        if parts.any(|part| part == ".git") {
            // The repository's own `.git` replaced, or a repository within.
            return None;
        }
        if change.file_kind == FileKind::Dir {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        if change.file_kind != FileKind::File
            || change.kind == ChangeKind::Added
            || matches!(name, ".gitattributes" | ".gitmodules")
            || needs_quoting(path)
        {
            return None;
        }
        changed.push(Changed {
            path: path.to_owned(),
            deleted: change.kind == ChangeKind::Deleted,
        });
        if changed.len() > MAX_FILES {
            return None;
        }
    }
    changed.sort_by(|a, b| a.path.cmp(&b.path));
    Some(changed)
}

/// Whether a change at `path` inside `.git` could change what the diff
/// script shows: the repository's settings, attributes or excludes, or
/// the ref it diffs against.
fn changes_the_diff(path: &str) -> bool {
    matches!(path, "config" | "packed-refs" | "commondir")
        || path.starts_with("info/")
        || path.starts_with("refs/berth/")
        || path.starts_with("objects/info/")
}

/// Whether git quotes `path` in a patch (with `core.quotepath` off).
fn needs_quoting(path: &str) -> bool {
    path.bytes()
        .any(|b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
}

/// `data` as text git would diff line by line, as `similar` splits lines:
/// `None` for what git takes as binary (a NUL in its first 8000 bytes),
/// what is not UTF-8, and carriage returns, which `similar` ends lines at.
fn text(data: &[u8]) -> Option<&str> {
    if data[..data.len().min(8000)].contains(&0) || data.contains(&b'\r') {
        return None;
    }
    std::str::from_utf8(data).ok()
}

/// Git's id of a blob of `data`.
fn blob_id(data: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", data.len()).as_bytes());
    hasher.update(data.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Appends the patch of one file at `path`, `old` as the base has it
/// (mode, id, text), `new` as it is now (mode, text) or `None` when
/// deleted, as `git diff --binary` writes it.
fn write_file(out: &mut String, path: &str, old: (u32, &str, &str), new: Option<(u32, &str)>) {
    let (old_mode, old_id, old_text) = old;
    let (new_text, new_id) = match new {
        Some((_, text)) => (text, blob_id(text)),
        None => ("", NULL_ID.to_owned()),
    };
    if let Some((new_mode, _)) = new
        && new_mode == old_mode
        && new_id == old_id
    {
        return;
    }
    // git ends a name with a space in the `---`/`+++` lines with a tab.
    let tab = if path.contains(' ') { "\t" } else { "" };
    let _ = writeln!(out, "diff --git a/{path} b/{path}");
    match new {
        None => {
            let _ = writeln!(out, "deleted file mode {old_mode:o}");
            let _ = writeln!(out, "index {old_id}..{new_id}");
        }
        Some((new_mode, _)) if new_mode != old_mode => {
            let _ = writeln!(out, "old mode {old_mode:o}\nnew mode {new_mode:o}");
            if new_id != old_id {
                let _ = writeln!(out, "index {old_id}..{new_id}");
            }
        }
        Some((mode, _)) => {
            let _ = writeln!(out, "index {old_id}..{new_id} {mode:o}");
        }
    }
    if new_id == old_id || (new.is_none() && old_text.is_empty()) {
        return;
    }
    let _ = writeln!(out, "--- a/{path}{tab}");
    match new {
        Some(_) => {
            let _ = writeln!(out, "+++ b/{path}{tab}");
        }
        None => out.push_str("+++ /dev/null\n"),
    }
    let diff = similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Myers)
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old_text, new_text);
    for hunk in diff
        .unified_diff()
        .context_radius(3)
        .missing_newline_hint(true)
        .iter_hunks()
    {
        let _ = write!(out, "{hunk}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::ChangeKind;
    use std::path::Path;

    fn change(path: &str, kind: ChangeKind, file_kind: FileKind) -> Change {
        Change::new(Path::new(path), kind, file_kind)
    }

    fn patch_of(path: &str, old: (u32, &str), new: Option<(u32, &str)>) -> String {
        let mut out = String::new();
        let id = blob_id(old.1);
        write_file(&mut out, path, (old.0, &id, old.1), new);
        out
    }

    #[test]
    fn blob_ids_are_gits() {
        assert_eq!(blob_id(""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(
            blob_id("hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn an_edit_is_written_as_git_writes_it() {
        let patch = patch_of(
            "app/version.txt",
            (0o100644, "a\nversion 1\nb\n"),
            Some((0o100644, "a\nversion 2\nb\n")),
        );
        assert_eq!(
            patch,
            format!(
                "diff --git a/app/version.txt b/app/version.txt\n\
                 index {}..{} 100644\n\
                 --- a/app/version.txt\n\
                 +++ b/app/version.txt\n\
                 @@ -1,3 +1,3 @@\n a\n-version 1\n+version 2\n b\n",
                blob_id("a\nversion 1\nb\n"),
                blob_id("a\nversion 2\nb\n"),
            )
        );
    }

    #[test]
    fn deletions_mode_changes_and_missing_newlines_are_written_as_git_writes_them() {
        let gone = patch_of("gone.txt", (0o100644, "bye\n"), None);
        assert!(gone.contains("deleted file mode 100644\n"), "{gone}");
        assert!(gone.contains(&format!("..{NULL_ID}\n")), "{gone}");
        assert!(
            gone.ends_with("--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n"),
            "{gone}"
        );
        let empty = patch_of("empty", (0o100644, ""), None);
        assert!(!empty.contains("---"), "{empty}");
        let chmod = patch_of("run.sh", (0o100644, "x\n"), Some((0o100755, "x\n")));
        assert_eq!(
            chmod,
            "diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n"
        );
        let cut = patch_of("a b", (0o100644, "x\ny\n"), Some((0o100644, "x\ny")));
        assert!(cut.contains("--- a/a b\t\n+++ b/a b\t\n"), "{cut}");
        assert!(
            cut.ends_with("-y\n+y\n\\ No newline at end of file\n"),
            "{cut}"
        );
        assert!(patch_of("same", (0o100644, "x\n"), Some((0o100644, "x\n"))).is_empty());
    }

    #[test]
    fn what_git_would_show_differently_is_left_to_the_script() {
        let repo = WorkspacePath::parse("app").unwrap();
        let edit = change("app/a.txt", ChangeKind::Modified, FileKind::File);
        let ok = select(
            &repo,
            &[
                edit.clone(),
                change("other/x", ChangeKind::Added, FileKind::File),
            ],
        );
        assert_eq!(ok.unwrap().len(), 1);
        for declined in [
            change("app/new.txt", ChangeKind::Added, FileKind::File),
            change("app/link", ChangeKind::Modified, FileKind::Symlink),
            change("app/.git/config", ChangeKind::Modified, FileKind::File),
            change(
                "app/.git/info/attributes",
                ChangeKind::Added,
                FileKind::File,
            ),
            change(
                "app/.git/refs/berth/base",
                ChangeKind::Modified,
                FileKind::File,
            ),
            change("app/.gitattributes", ChangeKind::Modified, FileKind::File),
            change("app/sub/.git", ChangeKind::Added, FileKind::Dir),
            change("app/quote\"d", ChangeKind::Modified, FileKind::File),
        ] {
            assert!(
                select(&repo, &[edit.clone(), declined.clone()]).is_none(),
                "{declined:?}"
            );
        }
        // A commit's objects, refs and index do not change what is diffed.
        let committed = [
            edit,
            change("app/.git/index", ChangeKind::Modified, FileKind::File),
            change(
                "app/.git/refs/heads/main",
                ChangeKind::Modified,
                FileKind::File,
            ),
        ];
        assert_eq!(select(&repo, &committed).unwrap().len(), 1);
        assert!(text(b"a\0b").is_none() && text(b"a\r\n").is_none() && text(b"\xff").is_none());
    }
}
