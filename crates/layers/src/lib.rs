//! berth's layer store: immutable filesystem layers in overlayfs upper-dir
//! format, shared by workspaces, cache entries and snapshots; the change
//! list of a writable upper directory; and export of those changes.
//!
//! A layer is a directory tree where deletions are whiteouts (0:0 character
//! devices) and replaced directories carry the `trusted.overlay.opaque`
//! xattr, exactly what overlayfs writes into an upper directory, so freezing
//! a workspace's upper directory into a layer is one rename.

mod beneath;
pub mod changes;
pub mod export;
pub mod id;
mod sparse;
pub mod store;
mod target;
pub mod tree;

pub use changes::changes;
pub use export::{IdShift, export_archive, export_dir, extract, extract_archive};
pub use id::LayerId;
pub use store::{Layer, LayerKind, LayerMeta, LayerStore, StoreError, unpack_tarball};
