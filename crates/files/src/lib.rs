//! File operations rooted at a workspace directory that never reach
//! outside it: `..`, absolute paths, symlinks leading out and `/proc` magic
//! links are refused, race-free, by the kernel (`openat2`) or by a careful
//! walk where the kernel is too old.
//!
//! Shared by the `local` runtime and the in-workspace agent, so it is small
//! (std, rustix) and synchronous: async callers use `spawn_blocking`.

mod error;
mod resolve;
mod root;

pub use error::FilesError;
pub use resolve::Resolution;
pub use root::{Root, remove_tree_at};
