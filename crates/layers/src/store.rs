//! The layer store: `<root>/<id>/tree` is a layer's files, `meta.json`
//! what it is and what it sits on, `refs/<holder>` one empty file per
//! holder (a workspace, a cache entry, a snapshot).
//!
//! Metadata lives next to each layer as JSON rather than in the registry:
//! a layer and its metadata then appear and vanish together (one rename),
//! the store works from tests and tools without the registry, and taking
//! or dropping a reference is one file operation that a crash cannot leave
//! half-done. The provider reconciles holders it no longer knows with
//! [`LayerStore::drop_holders_except`].
//!
//! Every new layer is built under `.tmp/` and renamed into place, so a
//! layer either exists whole or not at all; removal renames into `.trash/`
//! first for the same reason.

use crate::id::LayerId;
use crate::tree;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The metadata format version written to `meta.json`.
pub const META_VERSION: u32 = 1;

/// What a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Mount points for the host's system directories, bound read-only
    /// over it at start: the `host` base.
    HostSkeleton,
    /// A base filesystem imported from a tarball or directory.
    Base,
    /// A provisioned state saved in the cache.
    Cache,
    /// A snapshot of a workspace.
    Snapshot,
}

/// A layer's `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub version: u32,
    pub id: LayerId,
    pub kind: LayerKind,
    /// The layers this one sits on, bottom first: its full stack.
    pub parents: Vec<LayerId>,
    /// Where it came from: a tarball digest, a directory, a workspace id.
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A layer in the store.
#[derive(Debug, Clone)]
pub struct Layer {
    pub meta: LayerMeta,
    /// The layer's files, in overlay upper-dir format.
    pub tree: PathBuf,
}

impl Layer {
    /// The stack this layer tops, bottom first, itself last.
    pub fn stack(&self) -> Vec<LayerId> {
        let mut stack = self.meta.parents.clone();
        stack.push(self.meta.id.clone());
        stack
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no layer {0} in the store")]
    Missing(LayerId),
    #[error("holder name `{0}` may only hold letters, digits and `._:-`")]
    BadHolder(String),
    #[error("cannot freeze `{path}`: it is not on the layer store's filesystem ({root})")]
    CrossDevice { path: PathBuf, root: PathBuf },
    #[error("layer {id}: {context}: {source}")]
    Layer {
        id: String,
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{context} `{path}`: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        context,
        path,
        source,
    }
}

/// The store rooted at one directory (`$BERTH_HOME/layers`).
#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// Opens (creating if needed) the store at `root` and clears what a
    /// crash may have left half-built.
    /// Several processes may share a store (a CLI next to a daemon), so
    /// only what processes that no longer run left behind is cleared.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in [".tmp", ".trash"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
            for entry in fs::read_dir(&dir).map_err(io_err("cannot list", &dir))? {
                let entry = entry.map_err(io_err("cannot list", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
                if owner.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let path = entry.path();
                    tree::remove_tree(&path).map_err(io_err("cannot clear", &path))?;
                }
            }
        }
        Ok(LayerStore { root })
    }

    /// A name for a scratch entry: the owning process, then a unique id.
    fn scratch_name() -> String {
        format!("{}-{}", std::process::id(), ulid::Ulid::generate())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &LayerId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// A fresh directory under `.tmp/` on the store's filesystem, for
    /// building something that will be renamed into place.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(".tmp").join(Self::scratch_name());
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        Ok(dir)
    }

    pub fn contains(&self, id: &LayerId) -> bool {
        self.dir(id).join("meta.json").is_file()
    }

    pub fn get(&self, id: &LayerId) -> Result<Layer, StoreError> {
        let dir = self.dir(id);
        let path = dir.join("meta.json");
        let text = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(id.clone()));
            }
            other => other.map_err(io_err("cannot read", &path))?,
        };
        let meta: LayerMeta = serde_json::from_slice(&text).map_err(|e| StoreError::Io {
            context: "malformed layer metadata",
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        Ok(Layer {
            meta,
            tree: dir.join("tree"),
        })
    }

    /// Every layer in the store.
    pub fn list(&self) -> Result<Vec<Layer>, StoreError> {
        let mut layers = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("cannot list", &self.root))? {
            let entry = entry.map_err(io_err("cannot list", &self.root))?;
            let Ok(id) = LayerId::parse(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            match self.get(&id) {
                Ok(layer) => layers.push(layer),
                Err(StoreError::Missing(_)) => {}
                Err(e) => return Err(e),
            }
        }
        layers.sort_by_key(|l| l.meta.created_at);
        Ok(layers)
    }

    /// The host paths of a stack's trees, topmost first, as overlayfs
    /// takes its lower directories.
    pub fn trees_top_first(&self, stack: &[LayerId]) -> Vec<PathBuf> {
        stack
            .iter()
            .rev()
            .map(|id| self.dir(id).join("tree"))
            .collect()
    }

    /// Moves a built `staging` directory (with `tree/`) into place as
    /// layer `meta.id`. If the layer already exists (the same content
    /// imported concurrently), the staging directory is dropped.
    fn commit(&self, staging: &Path, meta: &LayerMeta) -> Result<Layer, StoreError> {
        let id = meta.id.to_string();
        let layer_err = |context: &str| {
            let id = id.clone();
            let context = context.to_string();
            move |source| StoreError::Layer {
                id,
                context,
                source,
            }
        };
        let text = serde_json::to_vec_pretty(meta)
            .map_err(|e| io::Error::other(e.to_string()))
            .map_err(layer_err("cannot encode metadata"))?;
        fs::write(staging.join("meta.json"), text).map_err(layer_err("cannot write metadata"))?;
        fs::create_dir_all(staging.join("refs")).map_err(layer_err("cannot create refs"))?;
        let target = self.dir(&meta.id);
        match fs::rename(staging, &target) {
            Ok(()) => {}
            Err(e) if self.contains(&meta.id) => {
                let _ = e;
                tree::remove_tree(staging).map_err(layer_err("cannot drop duplicate"))?;
            }
            Err(e) => return Err(layer_err("cannot move into the store")(e)),
        }
        self.get(&meta.id)
    }

    /// Freezes a directory (a workspace's upper directory) into a new
    /// layer by renaming it: O(1), no copy. `upper` is gone afterwards.
    pub fn freeze(
        &self,
        upper: &Path,
        parents: &[LayerId],
        kind: LayerKind,
        source: &str,
    ) -> Result<Layer, StoreError> {
        let staging = self.staging_dir()?;
        if let Err(e) = fs::rename(upper, staging.join("tree")) {
            let _ = fs::remove_dir(&staging);
            if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) {
                return Err(StoreError::CrossDevice {
                    path: upper.to_path_buf(),
                    root: self.root.clone(),
                });
            }
            return Err(io_err("cannot freeze", upper)(e));
        }
        self.commit(
            &staging,
            &new_meta(LayerId::unique(parents), kind, parents, source),
        )
    }

    /// Freezes a copy of a directory that stays in use (the upper
    /// directory of a running workspace): O(size of the directory).
    pub fn freeze_copy(
        &self,
        upper: &Path,
        parents: &[LayerId],
        kind: LayerKind,
        source: &str,
    ) -> Result<Layer, StoreError> {
        let staging = self.staging_dir()?;
        tree::copy_tree(upper, &staging.join("tree")).map_err(io_err("cannot copy", upper))?;
        self.commit(
            &staging,
            &new_meta(LayerId::unique(parents), kind, parents, source),
        )
    }

    /// The layer named by `parts`, built by `build` into an empty `tree`
    /// directory if the store does not have it yet.
    pub fn get_or_build(
        &self,
        kind: LayerKind,
        parts: &[&[u8]],
        source: &str,
        build: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<Layer, StoreError> {
        let id = LayerId::derive(parts);
        if self.contains(&id) {
            return self.get(&id);
        }
        let staging = self.staging_dir()?;
        let tree = staging.join("tree");
        fs::create_dir(&tree).map_err(io_err("cannot create", &tree))?;
        if let Err(source) = build(&tree) {
            let _ = tree::remove_tree(&staging);
            return Err(StoreError::Layer {
                id: id.to_string(),
                context: "cannot build".into(),
                source,
            });
        }
        self.commit(&staging, &new_meta(id, kind, &[], source))
    }

    /// Imports a base filesystem from a tarball (plain or zstd-compressed),
    /// content-addressed by the archive's digest; ownership inside is
    /// shifted by `shift` for ids below `range`.
    pub fn import_tarball(&self, path: &Path, shift: u32, range: u32) -> Result<Layer, StoreError> {
        let mut file = File::open(path).map_err(io_err("cannot open", path))?;
        let mut hash = Sha256::new();
        io::copy(&mut file, &mut hash).map_err(io_err("cannot read", path))?;
        let digest = hex::encode(hash.finalize());
        file.rewind().map_err(io_err("cannot read", path))?;
        let shift_text = format!("{shift}:{range}");
        let source = format!("tarball {} sha256:{digest}", path.display());
        self.get_or_build(
            LayerKind::Base,
            &[b"tarball", digest.as_bytes(), shift_text.as_bytes()],
            &source,
            |tree| unpack_tarball(BufReader::new(file), tree, shift, range),
        )
    }

    /// Imports a base filesystem from a host directory: the directory is
    /// archived once (its digest is the layer's address) and unpacked.
    pub fn import_dir(&self, dir: &Path, shift: u32, range: u32) -> Result<Layer, StoreError> {
        let staging = self.staging_dir()?;
        let archive = staging.join("base.tar");
        let built = (|| -> io::Result<()> {
            let file = File::create(&archive)?;
            let mut builder = tar::Builder::new(io::BufWriter::new(file));
            builder.follow_symlinks(false);
            builder.append_dir_all(".", dir)?;
            builder.into_inner()?.flush()
        })();
        built.map_err(io_err("cannot archive", dir))?;
        let layer = self.import_tarball(&archive, shift, range);
        let _ = tree::remove_tree(&staging);
        layer
    }

    /// Takes a reference on a layer for `holder`.
    pub fn add_ref(&self, id: &LayerId, holder: &str) -> Result<(), StoreError> {
        check_holder(holder)?;
        if !self.contains(id) {
            return Err(StoreError::Missing(id.clone()));
        }
        let path = self.dir(id).join("refs").join(holder);
        File::create(&path).map_err(io_err("cannot create", &path))?;
        Ok(())
    }

    /// Drops `holder`'s reference; dropping a missing one succeeds.
    pub fn remove_ref(&self, id: &LayerId, holder: &str) -> Result<(), StoreError> {
        check_holder(holder)?;
        let path = self.dir(id).join("refs").join(holder);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("cannot remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// The holders of a layer's references.
    pub fn refs(&self, id: &LayerId) -> Result<Vec<String>, StoreError> {
        let dir = self.dir(id).join("refs");
        let mut holders = Vec::new();
        match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(holders),
            Err(e) => return Err(io_err("cannot list", &dir)(e)),
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_err("cannot list", &dir))?;
                    holders.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        holders.sort();
        Ok(holders)
    }

    /// Drops every reference whose holder starts with `prefix` and is not
    /// in `keep`: how the provider forgets holders that no longer exist.
    pub fn drop_holders_except(
        &self,
        prefix: &str,
        keep: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        for layer in self.list()? {
            for holder in self.refs(&layer.meta.id)? {
                if holder.starts_with(prefix) && !keep.contains(&holder) {
                    self.remove_ref(&layer.meta.id, &holder)?;
                }
            }
        }
        Ok(())
    }

    /// Removes every layer that no holder references, directly or as a
    /// parent of a referenced layer. Returns the removed ids.
    pub fn gc(&self) -> Result<Vec<LayerId>, StoreError> {
        self.collect(|_| true)
    }

    /// Like [`LayerStore::gc`], but only among `released` and the layers
    /// below them: what a holder just let go of. A layer another process
    /// has just made and not yet referenced is never among them.
    pub fn gc_released(&self, released: &[LayerId]) -> Result<Vec<LayerId>, StoreError> {
        let mut candidates = BTreeSet::new();
        for id in released {
            match self.get(id) {
                Ok(layer) => candidates.extend(layer.stack()),
                Err(StoreError::Missing(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // A candidate still referenced stays, and so does every layer it
        // stands on. When that keeps them all (a cached provisioning let
        // go of by a workspace), no other layer needs to be read: the whole
        // store's references are read only when something may go.
        let mut kept = BTreeSet::new();
        for id in &candidates {
            if !kept.contains(id) && !self.refs(id)?.is_empty() {
                match self.get(id) {
                    Ok(layer) => kept.extend(layer.stack()),
                    Err(StoreError::Missing(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if candidates.is_subset(&kept) {
            return Ok(Vec::new());
        }
        self.collect(|layer| candidates.contains(&layer.meta.id))
    }

    /// Removes the unreferenced layers that `candidate` accepts.
    fn collect(&self, candidate: impl Fn(&Layer) -> bool) -> Result<Vec<LayerId>, StoreError> {
        let layers = self.list()?;
        let mut live = BTreeSet::new();
        for layer in &layers {
            if !self.refs(&layer.meta.id)?.is_empty() {
                live.extend(layer.stack());
            }
        }
        let mut removed = Vec::new();
        for layer in layers {
            if live.contains(&layer.meta.id) || !candidate(&layer) {
                continue;
            }
            self.remove(&layer.meta.id)?;
            removed.push(layer.meta.id);
        }
        Ok(removed)
    }

    /// Removes one layer, whoever holds it.
    fn remove(&self, id: &LayerId) -> Result<(), StoreError> {
        let dir = self.dir(id);
        let trash = self.root.join(".trash").join(Self::scratch_name());
        match fs::rename(&dir, &trash) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other.map_err(io_err("cannot remove", &dir))?,
        }
        tree::remove_tree(&trash).map_err(io_err("cannot remove", &trash))
    }
}

fn new_meta(id: LayerId, kind: LayerKind, parents: &[LayerId], source: &str) -> LayerMeta {
    LayerMeta {
        version: META_VERSION,
        id,
        kind,
        parents: parents.to_vec(),
        source: source.to_string(),
        created_at: berth_core::now_ms(),
    }
}

fn check_holder(holder: &str) -> Result<(), StoreError> {
    let ok = !holder.is_empty()
        && !holder.starts_with('.')
        && holder
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadHolder(holder.to_string()))
    }
}

/// Unpacks a root filesystem tarball (zstd-compressed or not) into an
/// empty layer tree, keeping modes and xattrs, with owners shifted by
/// `shift` for ids below `range`. The archive may be hostile (an image
/// from anywhere): entries climbing out with `..` or through a link are
/// refused, and device nodes are left out, for a workspace gets its own
/// `/dev` and a node could name a device of the host.
pub fn unpack_tarball(
    reader: impl io::BufRead,
    into: &Path,
    shift: u32,
    range: u32,
) -> io::Result<()> {
    unpack_preserving(reader, into)?;
    tree::shift_ownership(into, shift, range)
}

/// Unpacks a tar stream (zstd-compressed or not) keeping owners, modes and
/// xattrs, as a base filesystem needs; `tar`'s `unpack_in` keeps every
/// entry beneath `into`.
fn unpack_preserving(mut reader: impl io::BufRead, into: &Path) -> io::Result<()> {
    let zstd_magic = [0x28, 0xb5, 0x2f, 0xfd];
    let compressed = reader.fill_buf()?.starts_with(&zstd_magic);
    let reader: Box<dyn Read> = if compressed {
        Box::new(zstd::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block
        ) {
            continue;
        }
        entry.unpack_in(into)?;
    }
    Ok(())
}
