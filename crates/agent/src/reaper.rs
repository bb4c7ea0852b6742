//! Reaping: the agent is PID 1 (or, outside a PID namespace, a child
//! subreaper), so every orphaned process of the workspace becomes its
//! child and must be waited for, or it stays a zombie forever.
//!
//! Commands the agent starts itself are waited for by their own tasks
//! (through `tokio::process`), so the reaper must never take their exit
//! status. It therefore never calls `waitpid(-1)`: it lists the agent's
//! zombie children and reaps only those no task owns. A task marks its
//! child as owned right after spawning it, in the same synchronous step;
//! the agent runs on a current-thread runtime, so the reaper (a task on
//! that same thread) cannot run in between.
//!
//! The reaper also keeps the processes it adopted apart: those it takes
//! as what finished commands left (a background server), and strays,
//! which a shepherd the command killed left (see
//! [`berth_exec::shepherd`]). It takes an adoptee as left by a finished
//! command only while every child a task owns is running: a killed
//! shepherd's processes come to the agent in the same step of the kernel
//! that makes the shepherd a zombie, and its task keeps it owned until it
//! has ended them.

use crate::procfs;
use rustix::process::{Pid, WaitOptions};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Shared {
    owned: Mutex<HashSet<i32>>,
    /// Adoptees taken as what finished commands left, by pid and start
    /// time (a pid may be used again).
    leftovers: Mutex<HashSet<(i32, u64)>>,
    wake: Notify,
}

/// Handle to the reaper task.
#[derive(Debug, Clone, Default)]
pub struct Reaper {
    shared: Arc<Shared>,
}

/// A child whose exit status belongs to its task; released on drop.
#[derive(Debug)]
pub struct Owned {
    pid: i32,
    shared: Arc<Shared>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Ok(mut owned) = self.shared.owned.lock() {
            owned.remove(&self.pid);
        }
        // A zombie that reused this pid while it was owned is now reapable.
        self.shared.wake.notify_one();
    }
}

impl Reaper {
    /// Becomes a subreaper (a no-op for PID 1) and starts reaping.
    pub fn start() -> Reaper {
        // Outside a PID namespace this makes orphans of commands come to
        // the agent instead of the host's init, so they are ended and
        // reaped here too. Failure only means they go to init instead.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let reaper = Reaper::default();
        let shared = reaper.shared.clone();
        tokio::spawn(async move {
            let mut sigchld = signal(SignalKind::child()).ok();
            loop {
                sweep(&shared);
                match sigchld.as_mut() {
                    Some(sigchld) => tokio::select! {
                        _ = sigchld.recv() => {}
                        () = shared.wake.notified() => {}
                    },
                    None => shared.wake.notified().await,
                }
            }
        });
        reaper
    }

    /// Whether `pid` is a child a task of the agent started and waits for.
    pub fn owns(&self, pid: i32) -> bool {
        is_owned(&self.shared, pid)
    }

    /// Marks `pid` as waited for by its own task. Call right after spawning.
    pub fn own(&self, pid: u32) -> Owned {
        let pid = pid as i32;
        if let Ok(mut owned) = self.shared.owned.lock() {
            owned.insert(pid);
        }
        Owned {
            pid,
            shared: self.shared.clone(),
        }
    }
}

fn is_owned(shared: &Shared, pid: i32) -> bool {
    shared
        .owned
        .lock()
        .map(|o| o.contains(&pid))
        .unwrap_or(true)
}

/// Reaps every zombie child that no task owns, and takes the live ones as
/// what finished commands left while every owned child is running.
fn sweep(shared: &Shared) {
    let Some(children) = children() else {
        sweep_without_proc(shared);
        return;
    };
    let mut live = HashSet::new();
    for child in children {
        match (child.state, is_owned(shared, child.pid)) {
            ('Z', false) => reap(child.pid),
            (_, false) => {
                live.insert((child.pid, child.start_time));
            }
            _ => {}
        }
    }
    // Owned children are looked at after the listing, so a shepherd
    // whose processes were listed is seen to have exited.
    let settled = shared.owned.lock().is_ok_and(|owned| {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        owned
            .iter()
            .all(|&pid| procfs::stat(pid).is_some_and(|s| s.state != 'Z' && s.ppid == me))
    });
    if let Ok(mut leftovers) = shared.leftovers.lock() {
        if settled {
            *leftovers = live;
        } else {
            leftovers.retain(|known| live.contains(known));
        }
    }
}

/// The agent's children, or `None` without `/proc`.
fn children() -> Option<Vec<procfs::ProcStat>> {
    match procfs::children() {
        Some(children) => Some(children.into_iter().filter_map(procfs::stat).collect()),
        None => {
            let me = rustix::process::getpid().as_raw_nonzero().get();
            procfs::all().map(|all| all.into_iter().filter(|s| s.ppid == me).collect())
        }
    }
}

impl berth_exec::shepherd::Adopter for Reaper {
    fn strays(&self) -> Vec<i32> {
        let Ok(leftovers) = self.shared.leftovers.lock() else {
            return Vec::new();
        };
        children()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                c.state != 'Z'
                    && !is_owned(&self.shared, c.pid)
                    && !leftovers.contains(&(c.pid, c.start_time))
            })
            .map(|c| c.pid)
            .collect()
    }
}

/// Without `/proc` zombies cannot be told apart, so any child is reaped
/// only while no task owns one; otherwise the sweep waits until the last
/// owned child is released (which wakes the reaper).
fn sweep_without_proc(shared: &Shared) {
    loop {
        let idle = shared.owned.lock().map(|o| o.is_empty()).unwrap_or(false);
        if !idle {
            return;
        }
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

fn reap(pid: i32) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
    }
}
