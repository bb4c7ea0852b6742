//! How the sandbox runtime is set up on a host: [`SandboxConfig`] and the
//! defaults it starts from.

use crate::config::IdMap;
use berth_core::ResourceDefaults;
use std::path::PathBuf;

/// Root inside maps to this host uid and gid, and the next 65535 ids too.
pub const DEFAULT_ID_MAP: IdMap = IdMap {
    host: 100_000,
    size: 65_536,
};
/// The pids limit when a spec gives none: a fork bomb must not reach the
/// host's limit.
pub const DEFAULT_PIDS: u32 = 4096;

/// How the sandbox runtime is set up on this host.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// berth's state directory; layers go in `layers/`, workspaces in
    /// `sandbox/`.
    pub home: PathBuf,
    /// The stage-1 init binary (`berth-sandbox-init`, or the agent).
    pub init_program: PathBuf,
    /// Arguments put before stage 1's own: `["sandbox-init"]` when the
    /// init program is the agent, which plays both roles.
    pub init_args: Vec<String>,
    /// The agent, run as each workspace's PID 1 when given; otherwise the
    /// init's own minimal reaper is.
    pub agent_program: Option<PathBuf>,
    /// More host paths bound read-only into `host`-based workspaces (for
    /// toolchains installed outside the system directories).
    pub host_binds: Vec<PathBuf>,
    /// `None` runs without a user namespace (root inside is host root
    /// with fewer capabilities): weaker, so only with `accept_weaker`.
    pub id_map: Option<IdMap>,
    /// Whether to run when a mechanism (user namespace, cgroups) is
    /// missing instead of refusing.
    pub accept_weaker: bool,
    /// Whether a running workspace, once reset, keeps a standby instance
    /// on its provisioned stack, which makes its next reset a switch
    /// instead of a start, at the memory cost of a second idle instance.
    pub standby: bool,
    /// The memory limit of a workspace whose spec sets none, and the size
    /// of every workspace's `/dev/shm`.
    pub defaults: ResourceDefaults,
}

impl SandboxConfig {
    /// The defaults for `home`, with the init binary and the agent found
    /// next to the current executable (or in `BERTH_SANDBOX_INIT` and
    /// `BERTH_AGENT`), extra binds in `BERTH_SANDBOX_HOST_BINDS`
    /// (colon-separated), standbys unless `BERTH_SANDBOX_STANDBY=0`, and
    /// this host's resource defaults.
    pub fn from_env(home: impl Into<PathBuf>) -> Self {
        let init_program = std::env::var_os("BERTH_SANDBOX_INIT")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(|d| d.join("berth-sandbox-init")))
            })
            .unwrap_or_else(|| PathBuf::from("berth-sandbox-init"));
        let host_binds = std::env::var("BERTH_SANDBOX_HOST_BINDS")
            .map(|v| {
                v.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        SandboxConfig {
            home: home.into(),
            init_program,
            init_args: Vec::new(),
            agent_program: std::env::var_os("BERTH_AGENT")
                .map(PathBuf::from)
                .or_else(|| {
                    let exe = std::env::current_exe().ok()?;
                    let agent = exe.parent()?.join("berth-agent");
                    agent.is_file().then_some(agent)
                }),
            host_binds,
            id_map: Some(DEFAULT_ID_MAP),
            accept_weaker: std::env::var("BERTH_SANDBOX_ACCEPT_WEAKER").is_ok_and(|v| v == "1"),
            standby: std::env::var("BERTH_SANDBOX_STANDBY").map_or(true, |v| v != "0"),
            defaults: ResourceDefaults::for_this_host(),
        }
    }
}
