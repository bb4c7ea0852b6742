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

use crate::procfs;
use rustix::process::{Pid, WaitOptions};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Shared {
    owned: Mutex<HashSet<i32>>,
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

/// Reaps every zombie child that no task owns.
fn sweep(shared: &Shared) {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let zombies: Option<Vec<i32>> = match procfs::children() {
        Some(children) => Some(
            children
                .into_iter()
                .filter(|&pid| procfs::stat(pid).is_some_and(|s| s.state == 'Z'))
                .collect(),
        ),
        None => procfs::all().map(|all| {
            all.into_iter()
                .filter(|s| s.ppid == me && s.state == 'Z')
                .map(|s| s.pid)
                .collect()
        }),
    };
    match zombies {
        Some(zombies) => {
            for pid in zombies {
                if !is_owned(shared, pid) {
                    reap(pid);
                }
            }
        }
        None => sweep_without_proc(shared),
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
        match rustix::process::waitpid(None, WaitOptions::NOHANG) {
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
