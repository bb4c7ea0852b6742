//! A commit's files as the provider's mirror of their repository holds
//! them: what a patch made on the host compares a workspace's files with.
//! Only the mirror is read, never a workspace; it is read without its
//! lock, as git's objects are never changed once written.
//!
//! One `git cat-file --batch` reads everything: the trees of the files'
//! directories (their modes, and any `.gitattributes` on the way) and the
//! files themselves, its output bounded.

use crate::mirror::is_full_hash;
use crate::{Git, GitError, Mirrors};
use std::collections::{BTreeSet, HashMap};

/// A file of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFile {
    /// `0o100644`, `0o100755`, `0o120000` (a link), `0o160000` (a
    /// submodule), `0o40000` (a directory).
    pub mode: u32,
    /// The object's id, in hex.
    pub id: String,
    /// A blob's contents; empty for what is no blob.
    pub data: Vec<u8>,
}

/// What a commit holds at some paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFiles {
    /// In the order asked; `None` for a path the commit does not have.
    pub files: Vec<Option<CommitFile>>,
    /// Whether a `.gitattributes` is in the root or in a directory on the
    /// way to any of the paths: git could then convert or filter them.
    pub attributes: bool,
}

impl Git {
    /// What `commit` holds at `paths` (exact paths from the root, not
    /// patterns) in the mirror of `url`. `None` when reading it would take
    /// more than `limit` bytes.
    pub async fn commit_files(
        &self,
        mirrors: &Mirrors,
        url: &str,
        commit: &str,
        paths: &[String],
        limit: u64,
    ) -> Result<Option<CommitFiles>, GitError> {
        let bad = |what: String| GitError::MirrorRead {
            url: url.to_owned(),
            what,
        };
        if !is_full_hash(commit) {
            return Err(bad(format!("`{commit}` is no commit id")));
        }
        if let Some(path) = paths.iter().find(|p| p.is_empty() || p.contains('\n')) {
            return Err(bad(format!(
                "`{}` is no path cat-file can take",
                path.escape_debug()
            )));
        }
        // Every directory on the way to a path, the root (``) first.
        let dirs: BTreeSet<&str> = paths
            .iter()
            .flat_map(|path| {
                std::iter::once("").chain(path.match_indices('/').map(|(i, _)| &path[..i]))
            })
            .collect();
        let input: String = dirs
            .iter()
            .copied()
            .chain(paths.iter().map(String::as_str))
            .map(|name| format!("{commit}:{name}\n"))
            .collect();
        let Some(out) = self
            .runner
            .run_bytes_within(
                &mirrors.path_for(url),
                &["cat-file", "--batch"],
                input.into_bytes(),
                limit,
            )
            .await?
        else {
            return Ok(None);
        };
        let id_bytes = commit.len() / 2;
        let mut answers = Answers { rest: &out };
        let mut trees: HashMap<&str, Vec<TreeEntry>> = HashMap::new();
        for dir in &dirs {
            let answer = answers
                .next()
                .ok_or_else(|| bad("cut-short cat-file output".into()))?;
            // A file or nothing where a directory would be: the paths below
            // it are not in the commit.
            if let Some(("tree", data)) = answer {
                let entries = parse_tree(data, id_bytes)
                    .ok_or_else(|| bad(format!("an unreadable tree at `{dir}`")))?;
                trees.insert(dir, entries);
            }
        }
        let attributes = trees
            .values()
            .any(|entries| entries.iter().any(|e| e.name == b".gitattributes"));
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let answer = answers
                .next()
                .ok_or_else(|| bad("cut-short cat-file output".into()))?;
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            let entry = trees
                .get(dir)
                .and_then(|entries| entries.iter().find(|e| e.name == name.as_bytes()));
            files.push(entry.map(|entry| CommitFile {
                mode: entry.mode,
                id: entry.id.clone(),
                data: match answer {
                    Some(("blob", data)) => data.to_vec(),
                    _ => Vec::new(),
                },
            }));
        }
        Ok(Some(CommitFiles { files, attributes }))
    }
}

/// `cat-file --batch` answers, one per line asked: `ID TYPE SIZE\n`, the
/// object, `\n`; or `NAME missing\n`.
struct Answers<'a> {
    rest: &'a [u8],
}

impl<'a> Answers<'a> {
    /// The next answer: `Some(None)` for a missing object, `None` when the
    /// output ends or cannot be read.
    fn next(&mut self) -> Option<Option<(&'a str, &'a [u8])>> {
        let end = self.rest.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&self.rest[..end]).ok()?;
        let after = &self.rest[end + 1..];
        if header.ends_with(" missing") || header.ends_with(" ambiguous") {
            self.rest = after;
            return Some(None);
        }
        let mut fields = header.split(' ');
        let (_id, kind, size) = (fields.next()?, fields.next()?, fields.next()?);
        let size: usize = size.parse().ok()?;
        let data = after.get(..size)?;
        self.rest = after.get(size + 1..)?;
        Some(Some((kind, data)))
    }
}

/// An entry of a raw tree object.
struct TreeEntry {
    mode: u32,
    name: Vec<u8>,
    id: String,
}

/// A raw tree: `MODE NAME\0ID` entries, the mode in octal text, the id
/// `id_bytes` raw bytes.
fn parse_tree(mut data: &[u8], id_bytes: usize) -> Option<Vec<TreeEntry>> {
    let mut entries = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ')?;
        let mode = u32::from_str_radix(std::str::from_utf8(&data[..space]).ok()?, 8).ok()?;
        let rest = &data[space + 1..];
        let nul = rest.iter().position(|b| *b == 0)?;
        let name = rest[..nul].to_vec();
        let id = rest.get(nul + 1..nul + 1 + id_bytes)?;
        entries.push(TreeEntry {
            mode,
            name,
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
        });
        data = &rest[nul + 1 + id_bytes..];
    }
    Some(entries)
}
