//! What the agent reports about itself: version, interpreters, resources.

use serde::{Deserialize, Serialize};

/// The answer to an `info` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent binary's version.
    pub version: String,
    /// The protocol version it serves.
    pub protocol: u32,
    pub pid: u32,
    /// Time since the agent started, in milliseconds.
    pub uptime_ms: u64,
    /// The workspace root commands and paths are relative to.
    pub root: String,
    pub interpreters: Vec<Interpreter>,
    pub resources: Resources,
    /// The agent's nice value (the highest of its threads'): the one it
    /// started at, whatever the workspace did to it, when the runtime let
    /// it hold its priority.
    #[serde(default)]
    pub nice: i32,
}

/// An interpreter or shell found in the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// `python`, `node`, `ruby`, `go`, `java`, `perl`, `R`, `bash`, `sh`,
    /// or a name from the hints file.
    pub name: String,
    /// Absolute path of the executable.
    pub path: String,
    /// The version it reported, when it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where this entry came from.
    pub source: InterpreterSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpreterSource {
    /// Found on the search path and probed.
    Detected,
    /// Named by the image's hints file.
    Hint,
}

/// Resource use, read from `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// The agent's own resident memory, in bytes.
    pub agent_rss_bytes: u64,
    /// CPU time the agent used, in milliseconds.
    pub agent_cpu_ms: u64,
    /// Processes visible in the workspace (all of `/proc` in a PID
    /// namespace), the agent included.
    pub processes: u32,
    /// Operations running on all connections.
    pub operations: u32,
    /// Memory the kernel reports available, in bytes.
    pub memory_available_bytes: u64,
    /// Load average over one minute, times 100.
    pub load_1m_centi: u64,
}
