//! Ending what a command left behind when the agent has no cgroups to
//! find it by. A process that leaves the command's process group and
//! whose parent then ends (a double fork, a `setsid` child outliving its
//! shell) is orphaned, and comes to the agent, which is PID 1 or a child
//! subreaper: every child of the agent that no task of it started is such
//! an orphan. When a command is ended, the orphans the agent adopted since
//! the command started are ended with it, with all their descendants.
//!
//! What no cgroup can tell apart: an orphan of another command that ran
//! at the same time goes too.

use crate::Agent;
use crate::procfs::{self, ProcStat};
use rustix::process::{Pid, Signal};
use std::collections::HashSet;
use std::time::Duration;

/// How often the ending orphans are looked at until they are gone.
const POLL: Duration = Duration::from_millis(10);

/// The start time of process `pid`, to tell later processes by.
pub fn start_time(pid: u32) -> Option<u64> {
    procfs::stat(pid as i32).map(|s| s.start_time)
}

/// Ends the orphans adopted since `since` (a start time) and their
/// descendants: SIGTERM, up to the grace period, then SIGKILL.
pub async fn end_since(agent: &Agent, since: u64) {
    let targets = adopted_since(agent, since);
    if targets.is_empty() {
        return;
    }
    signal(&targets, Signal::TERM);
    let deadline = tokio::time::Instant::now() + agent.grace;
    while tokio::time::Instant::now() < deadline && !alive(&targets).is_empty() {
        tokio::time::sleep(POLL).await;
    }
    // Descendants started meanwhile go too.
    let mut left = alive(&targets);
    left.extend(adopted_since(agent, since));
    signal(&left, Signal::KILL);
}

/// The orphans the agent adopted since `since`, and their descendants.
fn adopted_since(agent: &Agent, since: u64) -> HashSet<i32> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let all = procfs::all().unwrap_or_default();
    let mut tree: HashSet<i32> = all
        .iter()
        .filter(|p| p.ppid == me && p.state != 'Z' && !agent.reaper.owns(p.pid))
        .filter(|p| p.start_time >= since)
        .map(|p| p.pid)
        .collect();
    // Descendants, to a fixed point: a parent may be listed after its
    // children.
    loop {
        let before = tree.len();
        tree.extend(
            all.iter()
                .filter(|p: &&ProcStat| tree.contains(&p.ppid) && p.state != 'Z')
                .map(|p| p.pid)
                .collect::<Vec<_>>(),
        );
        if tree.len() == before {
            return tree;
        }
    }
}

fn alive(pids: &HashSet<i32>) -> HashSet<i32> {
    pids.iter()
        .copied()
        .filter(|pid| procfs::stat(*pid).is_some_and(|s| s.state != 'Z'))
        .collect()
}

fn signal(pids: &HashSet<i32>, signal: Signal) {
    for pid in pids {
        if let Some(pid) = Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}
