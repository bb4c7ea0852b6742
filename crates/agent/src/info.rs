//! The `info` operation: version, interpreters, uptime and resource use.

use crate::server::Outbox;
use crate::{Agent, procfs};
use berth_proto::{AgentInfo, AgentMessage, PROTOCOL_VERSION, Resources};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Clock ticks per second of `/proc/*/stat` times; fixed on Linux.
const TICKS_PER_SECOND: u64 = 100;

pub async fn run(agent: &Arc<Agent>, detect: bool, out: Outbox) {
    let interpreters = agent.detector.get(&agent.env, &agent.reaper, detect).await;
    let info = AgentInfo {
        version: crate::VERSION.into(),
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        uptime_ms: agent.started.elapsed().as_millis() as u64,
        root: agent.root.to_string_lossy().into_owned(),
        interpreters,
        resources: resources(agent),
        nice: nice(),
    };
    out.message(AgentMessage::Info { info }).await;
}

/// The highest nice value of the agent's threads.
fn nice() -> i32 {
    let mut highest = rustix::process::getpriority_process(None).unwrap_or(0);
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let tid = task.file_name().to_str().and_then(|name| name.parse().ok());
            if let Some(nice) = tid
                .and_then(rustix::process::Pid::from_raw)
                .and_then(|tid| rustix::process::getpriority_process(Some(tid)).ok())
            {
                highest = highest.max(nice);
            }
        }
    }
    highest
}

fn resources(agent: &Agent) -> Resources {
    let me = procfs::stat(std::process::id() as i32);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Resources {
        agent_rss_bytes: procfs::kb_field("/proc/self/status", "VmRSS").unwrap_or(0),
        agent_cpu_ms: me.map_or(0, |s| s.cpu_ticks * 1000 / TICKS_PER_SECOND),
        processes: procfs::count().unwrap_or(0),
        // This request is one of them; report the others.
        operations: agent.operations.load(Ordering::Relaxed).saturating_sub(1),
        memory_available_bytes: procfs::kb_field("/proc/meminfo", "MemAvailable").unwrap_or(0),
        load_1m_centi: (load * 100.0).round() as u64,
    }
}
