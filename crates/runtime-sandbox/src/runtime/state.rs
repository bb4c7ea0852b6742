//! What a workspace is on disk: `$BERTH_HOME/sandbox/<id>/` with its
//! `state.json` ([`State`]), its upper, run and work directories, and the
//! names of its instances' configs and cgroups.

use super::{DEFAULT_PIDS, Inner, io_err, other};
use crate::cgroup;
use crate::plan::Dirs;
use berth_core::spec::Network;
use berth_core::{RuntimeError, Workspace};
use berth_layers::{LayerId, LayerKind};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::PathBuf;

const STATE_VERSION: u32 = 1;

/// A running instance's init, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Init {
    pub(super) pid: u32,
    /// The process's start time (clock ticks after boot), which tells it
    /// from a later process that reuses the pid.
    pub(super) start_time: u64,
    /// Which instance of the workspace it runs: names its cgroups, overlay
    /// work directory and init config.
    #[serde(default)]
    pub(super) instance: u64,
}

impl Init {
    /// Whether this init still runs (and not another process that got its
    /// pid since).
    pub(super) fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// A standby instance: started on the provisioned stack with an empty
/// upper directory of its own, so that a reset to the provisioned state
/// only switches to it and no start is on the reset's path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Standby {
    pub(super) init: Init,
    /// The stack it runs on: a reset uses it only while it is still the
    /// provisioned stack.
    pub(super) stack: Vec<LayerId>,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) version: u32,
    pub(super) id: String,
    /// The layers under the upper directory, bottom first.
    pub(super) stack: Vec<LayerId>,
    /// The stack a reset without a snapshot returns to.
    pub(super) provisioned: Vec<LayerId>,
    pub(super) host_base: bool,
    pub(super) private_network: bool,
    pub(super) limits: cgroup::Limits,
    /// The size of the tmpfs at `/dev/shm`; `None` in states written
    /// before it was recorded, which get the runtime's default.
    #[serde(default)]
    pub(super) shm_size: Option<u64>,
    /// The size of the tmpfs at `/tmp`; `None` in states written before
    /// `/tmp` was a tmpfs, whose `/tmp` stays on disk in the overlay as
    /// it was made (their cached layers may hold files there).
    #[serde(default)]
    pub(super) tmp_size: Option<u64>,
    /// Set while a workspace made from a base has not been frozen into
    /// the cache: its `/tmp` is then the overlay's, so the cache layer
    /// holds what the setup script left there; from then on it is the
    /// tmpfs of [`State::tmp_size`], seeded with that.
    #[serde(default)]
    pub(super) provisioning: bool,
    #[serde(default)]
    pub(super) init: Option<Init>,
    /// Counts instances: each start gets its own cgroups, overlay work
    /// directory and init config, so the previous instance can be torn
    /// down in the background while the next one starts (a reset does not
    /// wait).
    #[serde(default)]
    pub(super) instance: u64,
    #[serde(default)]
    pub(super) standby: Option<Standby>,
}

/// The start time of a process, or `None` if there is no such process.
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields restart
    // after the last `)`. starttime is field 22, the 20th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Inner {
    pub(super) fn ws_dir(&self, id: &str) -> PathBuf {
        self.config.home.join("sandbox").join(id)
    }

    pub(super) fn dirs(&self, id: &str) -> Dirs {
        let dir = self.ws_dir(id);
        Dirs {
            rootfs: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            run: dir.join("run"),
        }
    }

    pub(super) fn load(&self, id: &str) -> Result<State, RuntimeError> {
        let path = self.ws_dir(id).join("state.json");
        let text = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RuntimeError::Gone {
                id: id.to_string(),
                detail: "no sandbox state".into(),
            },
            _ => RuntimeError::io(format!("cannot read `{}`", path.display()), e),
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| other(format!("malformed `{}`: {e}", path.display())))
    }

    pub(super) fn save(&self, state: &State) -> Result<(), RuntimeError> {
        let path = self.ws_dir(&state.id).join("state.json");
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).map_err(other)?;
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_err(format!("cannot write `{}`", path.display())))
    }

    pub(super) fn running(&self, state: &State) -> Option<Init> {
        state.init.filter(Init::alive)
    }

    pub(super) fn shift(&self) -> (u32, u32) {
        match self.config.id_map {
            Some(map) => (map.host, map.size),
            None => (0, 0),
        }
    }

    fn limits_of(&self, ws: &Workspace) -> cgroup::Limits {
        cgroup::Limits {
            memory: Some(self.config.defaults.memory(&ws.spec)),
            pids: Some(ws.spec.limits.pids.unwrap_or(DEFAULT_PIDS)),
            cpus: ws.spec.limits.cpus,
        }
    }

    /// The size of a workspace's `/tmp` tmpfs for its next start; `None`
    /// while it is provisioned or when it was made before `/tmp` was one.
    pub(super) fn tmp_tmpfs(&self, state: &State) -> Option<u64> {
        state.tmp_size.filter(|_| !state.provisioning)
    }

    /// The size of a workspace's `/dev/shm`: as recorded, else the
    /// default within its memory limit.
    pub(super) fn shm_size(&self, state: &State) -> u64 {
        state.shm_size.unwrap_or_else(|| {
            let memory = state.limits.memory.unwrap_or(self.config.defaults.memory);
            self.config.defaults.shm.min(memory)
        })
    }

    fn new_state(
        &self,
        ws: &Workspace,
        stack: Vec<LayerId>,
        provisioned: Vec<LayerId>,
        host_base: bool,
        provisioning: bool,
    ) -> State {
        State {
            version: STATE_VERSION,
            id: ws.id.to_string(),
            stack,
            provisioned,
            host_base,
            private_network: ws.spec.network.unwrap_or(Network::None) != Network::Host,
            limits: self.limits_of(ws),
            shm_size: Some(self.config.defaults.shm(&ws.spec)),
            tmp_size: Some(self.config.defaults.tmp(&ws.spec)),
            provisioning,
            init: None,
            instance: 0,
            standby: None,
        }
    }

    pub(super) fn make_workspace(
        &self,
        ws: &Workspace,
        stack: Vec<LayerId>,
        provisioned: Vec<LayerId>,
        provisioning: bool,
    ) -> Result<serde_json::Value, RuntimeError> {
        let id = ws.id.to_string();
        let host_base = stack
            .first()
            .and_then(|l| self.store.get(l).ok())
            .is_some_and(|l| l.meta.kind == LayerKind::HostSkeleton);
        let dirs = self.dirs(&id);
        if self.ws_dir(&id).exists() {
            return Err(other(format!(
                "workspace {id} already exists in the sandbox runtime"
            )));
        }
        fs::create_dir_all(self.ws_dir(&id))
            .map_err(io_err("cannot create the workspace directory"))?;
        self.fresh_upper(&dirs, ws.spec.root())?;
        self.set_refs(&id, &[], &stack)?;
        self.set_refs(&id, &[], &provisioned)?;
        let state = self.new_state(ws, stack, provisioned, host_base, provisioning);
        self.save(&state)?;
        Ok(self.info(&state))
    }

    pub(super) fn info(&self, state: &State) -> serde_json::Value {
        serde_json::json!({
            "dir": self.ws_dir(&state.id),
            "stack": state.stack,
            "pid": state.init.map(|i| i.pid),
        })
    }

    pub(super) fn config_path(&self, id: &str, instance: u64) -> PathBuf {
        self.ws_dir(id).join(format!("init.{instance}.json"))
    }

    pub(super) fn work_dir(&self, id: &str, instance: u64) -> PathBuf {
        self.ws_dir(id).join(format!("work.{instance}"))
    }

    /// What the cgroups of workspace `id`'s instances are named after:
    /// the home's id and the workspace's, so that homes never share one.
    pub(super) fn cgroup_prefix(&self, id: &str) -> String {
        format!("{}-{id}", self.home_id)
    }

    pub(super) fn cgroup_name(&self, id: &str, instance: u64) -> String {
        format!("{}.{instance}", self.cgroup_prefix(id))
    }
}
