//! Tar streams for the Engine's archive API: a host directory packed as
//! it should land in a container (import), and an archive downloaded from
//! a container unpacked into a host directory (copy out, export). The
//! `tar` crate is synchronous, so both run on blocking threads and meet the
//! async side through a channel or a bridged reader.

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Bytes buffered before a chunk is handed to the upload.
const CHUNK: usize = 256 * 1024;

/// A tar stream of `host_dir`'s contents placed at `dest` (a relative path
/// from the container's root, like `workspace/repo`), every ancestor of
/// `dest` included as a directory so the upload needs none to exist.
/// Entries are owned by root: the host user's ids mean nothing inside.
/// The handle yields the packing's own error, which explains a failed
/// upload better than the Engine's.
pub fn pack(
    host_dir: PathBuf,
    dest: String,
) -> (
    impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    JoinHandle<io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let handle = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = write_tar(writer, &host_dir, &dest);
        if let Err(e) = &result {
            // The upload ends with an error rather than a truncated tar.
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (stream, handle)
}

fn write_tar(writer: ChannelWriter, host_dir: &Path, dest: &str) -> io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    let dest = dest.trim_matches('/');
    let mut ancestor = PathBuf::new();
    let parts: Vec<&str> = dest.split('/').filter(|p| !p.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        ancestor.push(part);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(now());
        header.set_size(0);
        builder.append_data(&mut header, &ancestor, io::empty())?;
    }
    let meta = fs::metadata(host_dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a directory", host_dir.display()),
        ));
    }
    append(&mut builder, host_dir, Path::new(dest), &meta)?;
    builder.into_inner()?.flush()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends `path` (already stat'ed) as `name`, and a directory's contents
/// after it, in name order so archives are reproducible.
fn append(
    builder: &mut tar::Builder<ChannelWriter>,
    path: &Path,
    name: &Path,
    meta: &fs::Metadata,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    header.set_uid(0);
    header.set_gid(0);
    let kind = meta.file_type();
    if kind.is_dir() {
        header.set_size(0);
        builder.append_data(&mut header, name, io::empty())?;
        let mut entries = fs::read_dir(path)?.collect::<io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = entry.path();
            let meta = fs::symlink_metadata(&child)?;
            append(builder, &child, &name.join(entry.file_name()), &meta)?;
        }
    } else if kind.is_symlink() {
        header.set_size(0);
        builder.append_link(&mut header, name, fs::read_link(path)?)?;
    } else if kind.is_file() {
        builder.append_data(&mut header, name, File::open(path)?)?;
    }
    // Sockets, fifos and devices have no place in a workspace import.
    Ok(())
}

/// Hands written bytes to the async side in chunks.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload ended early"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

/// Unpacks a downloaded archive into the directory `under` of `dest`
/// (both created if missing), with modes and times but not owners,
/// through [`berth_layers::extract`]: the archive is the workspace's to
/// shape, so entries that would land outside are refused and nothing
/// already in `dest` (a link an earlier download left, `under` itself
/// included) is written through.
pub async fn unpack<S, E>(stream: S, dest: PathBuf, under: PathBuf) -> io::Result<()>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let stream = Box::pin(stream.map_err(|e| io::Error::other(e.to_string())));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || berth_layers::extract(reader, &dest, &under).map(drop))
        .await
        .map_err(io::Error::other)?
}

/// The paths and kinds of a downloaded archive's entries, contents
/// skipped.
pub async fn list<S, E>(stream: S) -> io::Result<Vec<(String, berth_core::FileKind)>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let stream = Box::pin(stream.map_err(|e| io::Error::other(e.to_string())));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(reader);
        let mut out = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let kind = match entry.header().entry_type() {
                tar::EntryType::Directory => berth_core::FileKind::Dir,
                tar::EntryType::Symlink => berth_core::FileKind::Symlink,
                tar::EntryType::Regular | tar::EntryType::Link => berth_core::FileKind::File,
                _ => berth_core::FileKind::Other,
            };
            let path = entry
                .path()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            out.push((path, kind));
        }
        Ok(out)
    })
    .await
    .map_err(io::Error::other)?
}

/// Whether a downloaded archive of a directory holds anything besides the
/// directory itself; reads no further than the second entry's header.
pub async fn has_children<S, E>(stream: S) -> io::Result<bool>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let stream = Box::pin(stream.map_err(|e| io::Error::other(e.to_string())));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries()?;
        entries.next().transpose()?;
        Ok(entries.next().transpose()?.is_some())
    })
    .await
    .map_err(io::Error::other)?
}

/// What the link `path` of a downloaded archive points to, contents
/// skipped; `None` when the archive holds no link there.
pub async fn link_target<S, E>(stream: S, path: PathBuf) -> io::Result<Option<PathBuf>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let stream = Box::pin(stream.map_err(|e| io::Error::other(e.to_string())));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let entry = entry?;
            if entry.header().entry_type() == tar::EntryType::Symlink && *entry.path()? == *path {
                return Ok(entry.link_name()?.map(|target| target.into_owned()));
            }
        }
        Ok(None)
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    async fn packed(dir: &Path, dest: &str) -> Vec<u8> {
        let (stream, handle) = pack(dir.to_path_buf(), dest.into());
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        handle.await.unwrap().unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn an_archive_of_a_directory_has_children_unless_it_holds_only_itself() {
        let src = tempfile::tempdir().unwrap();
        let of = |tar: Vec<u8>| futures::stream::iter([Ok::<_, io::Error>(Bytes::from(tar))]);
        let empty = packed(src.path(), "tmp").await;
        assert!(!has_children(of(empty)).await.unwrap());
        fs::write(src.path().join("hello.txt"), b"hi").unwrap();
        let full = packed(src.path(), "tmp").await;
        assert!(has_children(of(full)).await.unwrap());
    }

    #[tokio::test]
    async fn a_packed_tree_unpacks_to_the_same_files_under_its_destination() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("sub/deeper")).unwrap();
        fs::write(src.path().join("sub/deeper/file.txt"), b"hello").unwrap();
        fs::write(src.path().join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("sub/deeper/file.txt", src.path().join("link")).unwrap();

        let tar = packed(src.path(), "workspace/repo").await;
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names[..2], ["workspace", "workspace/repo"]);
        for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
            assert_eq!(entry.unwrap().header().uid().unwrap(), 0);
        }

        let out = tempfile::tempdir().unwrap();
        let chunks = futures::stream::iter(
            tar.chunks(1000)
                .map(|c| Ok::<_, io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        unpack(chunks, out.path().to_path_buf(), PathBuf::new())
            .await
            .unwrap();
        let repo = out.path().join("workspace/repo");
        assert_eq!(
            fs::read(repo.join("sub/deeper/file.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(
            fs::metadata(repo.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(repo.join("link")).unwrap(),
            Path::new("sub/deeper/file.txt")
        );
    }

    /// One download's bytes as the Engine streams them.
    fn streamed(tar: Vec<u8>) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        futures::stream::iter(vec![Ok(Bytes::from(tar))])
    }

    #[tokio::test]
    async fn a_download_under_a_link_an_earlier_download_left_stays_in_the_staging_directory() {
        let host = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        // The first download: `d` was a link to a host directory by then.
        let mut link = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        link.append_link(&mut header, "d", host.path()).unwrap();
        unpack(
            streamed(link.into_inner().unwrap()),
            staging.path().to_path_buf(),
            PathBuf::new(),
        )
        .await
        .unwrap();
        // The next one, of `d/x`, lands in `d`.
        let mut file = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(7);
        header.set_mode(0o644);
        file.append_data(&mut header, "x", &b"planted"[..]).unwrap();
        unpack(
            streamed(file.into_inner().unwrap()),
            staging.path().to_path_buf(),
            PathBuf::from("d"),
        )
        .await
        .unwrap();
        assert!(
            !host.path().join("x").exists(),
            "the download was written through the link into the host directory"
        );
        assert!(
            fs::symlink_metadata(staging.path().join("d"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(fs::read(staging.path().join("d/x")).unwrap(), b"planted");
    }

    #[tokio::test]
    async fn packing_a_missing_directory_fails_the_upload_stream() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let (stream, handle) = pack(missing.clone(), "workspace/x".into());
        let result: io::Result<Vec<Bytes>> = stream.try_collect().await;
        assert!(result.is_err());
        let err = handle.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
