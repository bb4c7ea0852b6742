//! What `berth show` says of a workspace's isolation: namespaces, limits,
//! and notes on what is weaker here.

use super::Inner;
use super::state::State;
use berth_core::{Isolation, ResourceDefaults};

impl Inner {
    /// Whether each command gets a cgroup of its own: the agent runs
    /// them, and this host has cgroup v2 beneath which it can make them.
    pub(super) fn commands_have_cgroups(&self) -> bool {
        self.config.agent_program.is_some()
            && self
                .cgroups
                .as_ref()
                .is_ok_and(|layout| layout.commands_root(&layout.cgroups("probe")).is_some())
    }

    pub(super) fn isolation_of(&self, state: &State, spec: &berth_core::Spec) -> Isolation {
        let mut namespaces = vec!["mount", "pid", "uts", "ipc", "cgroup"];
        if self.config.id_map.is_some() {
            namespaces.insert(0, "user");
        }
        if state.private_network {
            namespaces.push("net");
        }
        let mut notes = Vec::new();
        let mut limits = Vec::new();
        match &self.cgroups {
            Ok(layout) => {
                if let Some(memory) = state.limits.memory {
                    limits.push(format!("memory={memory}"));
                }
                if let Some(pids) = state.limits.pids {
                    limits.push(format!("pids={pids}"));
                }
                if let Some(cpus) = state.limits.cpus {
                    limits.push(format!("cpus={cpus}"));
                }
                notes.push(format!("limits through cgroup {}", layout.version()));
            }
            Err(reason) => notes.push(format!("no limits: {reason}")),
        }
        let shm = self.shm_size(state);
        limits.push(format!("shm={shm}"));
        if let Some(tmp) = state.tmp_size {
            limits.push(format!("tmp={tmp}"));
        }
        match (&self.cgroups, state.limits.memory) {
            (Ok(_), Some(memory)) => {
                notes.extend(ResourceDefaults::notes(spec, memory, shm, state.tmp_size));
            }
            _ => notes.push(match state.tmp_size {
                Some(tmp) => format!(
                    "/tmp is a tmpfs of {}, charged to no memory limit here",
                    berth_core::spec::format_bytes(tmp)
                ),
                None => "/tmp is on disk with the workspace's other files, unbounded".into(),
            }),
        }
        match self.config.id_map {
            Some(map) => notes.push(format!("root inside is host uid {}", map.host)),
            None => notes.push(
                "no user namespace: root inside is host root with reduced capabilities".into(),
            ),
        }
        notes.push("Docker's default capabilities and seccomp allow list; no_new_privs".into());
        notes.push(if self.commands_have_cgroups() {
            "each command, session and terminal runs in a cgroup of its own (cgroup v2): \
             a timeout or a cancel ends everything it started, however it detached"
                .into()
        } else {
            "no cgroup v2 for commands here: each command runs under a shepherd, its \
             child subreaper, and a timeout or a cancel ends every process beneath it, \
             however it detached; what a session or terminal leaves runs until the \
             workspace stops"
                .into()
        });
        Isolation {
            isolated: true,
            namespaces: namespaces.into_iter().map(String::from).collect(),
            limits,
            seccomp: true,
            network: if state.private_network {
                "none (loopback only)"
            } else {
                "host"
            }
            .into(),
            notes,
        }
    }
}
