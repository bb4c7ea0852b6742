//! A commit's files as the provider's mirror of their repository holds
//! them: what a patch made on the host compares a workspace's files with.
//! Only the mirror is read, never a workspace; it is read without its
//! lock, as git's objects are never changed once written.

use crate::mirror::is_full_hash;
use crate::{Git, GitError, Mirrors};
use std::collections::HashMap;

/// An entry of a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// `0o100644`, `0o100755`, `0o120000` (a link), `0o160000` (a
    /// submodule), `0o40000` (a directory).
    pub mode: u32,
    /// The object's id, in hex.
    pub id: String,
    /// The blob's size; `None` for what is no blob.
    pub size: Option<u64>,
}

impl Git {
    /// The entries of `commit`'s tree at `paths` (exact paths from the
    /// root, not patterns) in the mirror of `url`, in order; `None` for a
    /// path the tree does not have.
    pub async fn tree_files(
        &self,
        mirrors: &Mirrors,
        url: &str,
        commit: &str,
        paths: &[String],
    ) -> Result<Vec<Option<TreeFile>>, GitError> {
        let bad = |what: String| GitError::MirrorRead {
            url: url.to_owned(),
            what,
        };
        if !is_full_hash(commit) {
            return Err(bad(format!("`{commit}` is no commit id")));
        }
        let mut args = vec![
            "--literal-pathspecs",
            "ls-tree",
            "-z",
            "-l",
            "--full-tree",
            commit,
            "--",
        ];
        args.extend(paths.iter().map(String::as_str));
        let listed = self
            .runner
            .run_bytes(&mirrors.path_for(url), &args, Vec::new())
            .await?;
        let mut found = HashMap::new();
        for record in listed.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let parsed = std::str::from_utf8(record).ok().and_then(parse_entry);
            let (path, file) = parsed.ok_or_else(|| {
                bad(format!(
                    "unexpected `ls-tree` output `{}`",
                    String::from_utf8_lossy(record)
                ))
            })?;
            found.insert(path, file);
        }
        Ok(paths
            .iter()
            .map(|path| found.remove(path.as_str()))
            .collect())
    }

    /// The contents of the blobs `ids` in the mirror of `url`, in order.
    /// The caller bounds their sizes (see [`Git::tree_files`]).
    pub async fn blobs(
        &self,
        mirrors: &Mirrors,
        url: &str,
        ids: &[&str],
    ) -> Result<Vec<Vec<u8>>, GitError> {
        let bad = |what: String| GitError::MirrorRead {
            url: url.to_owned(),
            what,
        };
        if let Some(id) = ids.iter().find(|id| !is_full_hash(id)) {
            return Err(bad(format!("`{id}` is no object id")));
        }
        let input: String = ids.iter().map(|id| format!("{id}\n")).collect();
        let out = self
            .runner
            .run_bytes(
                &mirrors.path_for(url),
                &["cat-file", "--batch"],
                input.into_bytes(),
            )
            .await?;
        // Per object: `ID TYPE SIZE\n`, the content, `\n`.
        let mut rest = out.as_slice();
        let mut blobs = Vec::with_capacity(ids.len());
        for id in ids {
            let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let header = String::from_utf8_lossy(&rest[..end]).into_owned();
            let size = match header.split(' ').collect::<Vec<_>>()[..] {
                [got, "blob", size] if got == *id => size.parse::<usize>().ok(),
                _ => None,
            };
            let Some(size) = size.filter(|size| end + 1 + size < rest.len()) else {
                return Err(bad(format!("no blob {id}: `{header}`")));
            };
            let start = end + 1;
            blobs.push(rest[start..start + size].to_vec());
            rest = &rest[start + size + 1..];
        }
        Ok(blobs)
    }
}

/// `MODE TYPE ID SIZE\tPATH`, the size padded, `-` for no blob.
fn parse_entry(record: &str) -> Option<(&str, TreeFile)> {
    let (meta, path) = record.split_once('\t')?;
    let mut fields = meta.split_whitespace();
    let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
    let _kind = fields.next()?;
    let id = fields.next()?.to_owned();
    let size = fields.next()?.parse().ok();
    Some((path, TreeFile { mode, id, size }))
}
