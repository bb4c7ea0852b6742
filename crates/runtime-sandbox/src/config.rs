//! The instructions the stage-1 init follows, written as JSON by the
//! runtime: what to mount where, which namespaces, which ids, what to run.
//! Plain data so that the plan is checked without root and the init stays
//! free of any policy.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The format version of [`InitConfig`].
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitConfig {
    pub version: u32,
    /// The directory that becomes `/`: where the overlay is mounted.
    pub rootfs: PathBuf,
    /// Mounts made by the init, on the host side, before the workspace's
    /// namespaces exist; targets are relative to `rootfs`.
    pub mounts: Vec<Mount>,
    /// Maps root inside to an unprivileged host range; `None` keeps host
    /// ids (weaker isolation, only when explicitly accepted).
    pub id_map: Option<IdMap>,
    /// Whether the workspace gets its own network namespace (loopback
    /// only); otherwise it shares the host's network.
    pub private_network: bool,
    pub hostname: String,
    /// cgroup directories (one per v1 hierarchy, or the v2 one) the
    /// workspace's processes are born in.
    pub cgroups: Vec<PathBuf>,
    /// Whether to install the default seccomp filter.
    pub seccomp: bool,
    /// When set, PID 1 is handed the workspace's cgroup of v2 (the root of
    /// its cgroup namespace) as an open directory, by this flag and the
    /// descriptor's number after its own arguments (`--cgroup-fd 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate_cgroup: Option<String>,
    /// The runtime's home: once it is deleted, the init ends the
    /// workspace, whose files and records went with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    /// The workspace's PID 1, its environment and working directory.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

/// One id range: ids `0..size` inside are `host..host + size` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host: u32,
    pub size: u32,
}

/// A mount made on the host side; `target` is relative to the rootfs
/// (empty for the rootfs itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    /// The workspace's root: lower layers topmost first.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A host path bound in; a missing target is created like the source.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    Tmpfs {
        target: PathBuf,
        mode: u32,
        /// Its size in bytes; the kernel's default (half of the host's
        /// memory) when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// Whether it starts with a copy of what the rootfs holds at
        /// `target` (see [`crate::seed`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        seed: bool,
    },
    /// A directory (a mount point the workspace's init fills).
    Dir {
        target: PathBuf,
        mode: u32,
    },
    Symlink {
        link: PathBuf,
        target: PathBuf,
    },
}
