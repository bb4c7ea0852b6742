//! The disk space a directory tree takes, as a cache budget counts it.
//!
//! Written here because it is a dozen lines of `std` and the crates that
//! measure trees follow links or count apparent sizes, while a cache entry
//! holds files a workspace wrote: sparse files and hard links are counted
//! by the blocks they hold, once, and no link is followed.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes of disk the tree at `root` holds: allocated blocks of every
/// entry, each inode once, links not followed. A missing `root` holds 0.
pub fn disk_usage(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Gone while it was measured, or never there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            total = total.saturating_add(meta.blocks().saturating_mul(512));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once_and_links_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        let empty = disk_usage(&tree).unwrap();
        std::fs::write(tree.join("sub/data"), vec![7u8; 1 << 20]).unwrap();
        let one = disk_usage(&tree).unwrap();
        assert!(one >= empty + (1 << 20), "{one} after {empty}");
        std::fs::hard_link(tree.join("sub/data"), tree.join("again")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 4 << 20]).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        let linked = disk_usage(&tree).unwrap();
        assert!(
            linked < one + (1 << 20),
            "{linked} counts what links lead to"
        );
        assert_eq!(disk_usage(&tmp.path().join("missing")).unwrap(), 0);
    }
}
