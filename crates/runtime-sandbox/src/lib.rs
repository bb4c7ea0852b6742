//! berth's `sandbox` runtime: each workspace is an overlay of shared
//! layers plus a private upper directory, run in its own user, mount, PID,
//! UTS, IPC, cgroup and network namespaces, under cgroup limits, with
//! capabilities dropped, `no_new_privs` and a seccomp filter. No daemon.
//!
//! The work is split so that the privileged part is small and the policy
//! is testable without root: [`plan`] turns a workspace into an
//! [`InitConfig`] (pure), and [`stage1`] carries it out in a fresh
//! single-threaded process before anything else runs there.

#[cfg(all(target_os = "linux", feature = "runtime"))]
pub mod cgroup;
#[cfg(target_os = "linux")]
pub mod config;
#[cfg(all(target_os = "linux", feature = "runtime"))]
pub mod plan;
#[cfg(target_os = "linux")]
pub mod seccomp;
#[cfg(target_os = "linux")]
pub mod seed;
#[cfg(target_os = "linux")]
pub mod stage1;
#[cfg(target_os = "linux")]
mod sys;

#[cfg(target_os = "linux")]
pub use config::{IdMap, InitConfig, Mount};
#[cfg(all(target_os = "linux", feature = "runtime"))]
pub mod runtime;

#[cfg(all(target_os = "linux", feature = "runtime"))]
pub use runtime::{Base, EngineExporter, ImageExporter, SandboxConfig, SandboxRuntime};
