//! berth's `docker` runtime: any local image becomes a workspace. The
//! static berth agent is bind-mounted read-only into the container as its
//! entrypoint and serves the agent protocol on a socket in a directory
//! mounted from the host, so every command, session, terminal and file
//! operation goes through the agent — never `docker exec` — while the
//! Engine API (through `bollard`, honouring `DOCKER_HOST`, Podman's
//! compatible socket included) makes, commits, archives and removes.
//!
//! - [`plan`]: what is asked of the Engine, decided without it (names,
//!   labels, the container's configuration, isolation, change filtering).
//! - [`archive`]: tar streams in and out of containers.
//! - `engine`: connecting, with the API version from the Engine's ping.
//! - [`DockerRuntime`]: the [`berth_core::Runtime`] implementation.
//!
//! The Engine must run on this host: the agent and the socket directory
//! are bind mounts of host paths.

pub mod archive;
mod engine;
pub mod plan;
mod runtime;

pub use runtime::DockerRuntime;
