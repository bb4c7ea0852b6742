//! The process of a session. Where the agent has no cgroup
//! for it, it runs under a shepherd held from the start, so that every
//! process it started, however it detached, ends with it.

use crate::Agent;
use berth_exec::shepherd::{Held, Holding, Mark};
use berth_proto::ErrorCode;
use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct Tree {
    /// The agent's child: the process, or its shepherd.
    pub child: Child,
    /// The pid of `child`, which leads the process group.
    pub group: u32,
    /// The process's own pid.
    pub pid: u32,
    held: Option<Held>,
}

/// A command that runs `argv`: under a held shepherd unless `contained`
/// (the caller gives it a cgroup of its own).
pub fn command(
    agent: &Agent,
    argv: &[String],
    contained: bool,
) -> std::io::Result<(Command, Option<Holding>)> {
    if contained {
        let mut command = Command::new(argv.first().map_or("", String::as_str));
        command.args(argv.iter().skip(1));
        return Ok((command, None));
    }
    let (command, holding) = agent.shepherd().held(argv)?;
    Ok((command, Some(holding)))
}

impl Tree {
    /// Spawns `command` (from [`command`]), and waits until its shepherd,
    /// if it has one, has started `display`.
    pub async fn spawn(
        mut command: Command,
        holding: Option<Holding>,
        display: &str,
    ) -> Result<Tree, (ErrorCode, String)> {
        let cannot =
            |e: &dyn std::fmt::Display| (ErrorCode::Spawn, format!("cannot run `{display}`: {e}"));
        let child = command.spawn().map_err(|e| cannot(&e))?;
        // The shepherd's end of its socket, and what else the child
        // inherits, now live in the child only.
        drop(command);
        let group = child.id().unwrap_or_default();
        let Some(holding) = holding else {
            return Ok(Tree {
                child,
                group,
                pid: group,
                held: None,
            });
        };
        let mut held = holding.spawned(group, display).map_err(|e| cannot(&e))?;
        held.started()
            .await
            .map_err(|e| (ErrorCode::Spawn, e.to_string()))?;
        // The shepherd's only child, once it has started it (or the
        // shepherd itself, if the process is gone already).
        let pid = berth_exec::procfs::all()
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.ppid == group as i32)
            .map_or(group, |p| p.pid as u32);
        Ok(Tree {
            child,
            group,
            pid,
            held: Some(held),
        })
    }

    /// Whether it runs under a shepherd.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Under a shepherd, the processes beneath it now (see
    /// [`Held::mark`]).
    pub fn mark(&self) -> Option<Mark> {
        self.held.as_ref().map(Held::mark)
    }

    /// The processes beneath the shepherd since `mark` but `spared`.
    pub fn since(&self, mark: &Mark, spared: u32) -> Vec<i32> {
        self.held
            .as_ref()
            .map(|held| held.since(mark, spared).into_iter().collect())
            .unwrap_or_default()
    }

    /// Ends at once every process beneath the shepherd since `mark` but
    /// `spared`, however it detached, trying for at most `within`.
    pub async fn kill_since(&self, mark: &Mark, spared: u32, within: Duration) {
        if let Some(held) = &self.held {
            held.kill_since(mark, spared, within).await;
        }
    }

    /// Returns once the process itself has exited (its shepherd stays,
    /// with what it left). Safe to cancel.
    pub async fn exited(&mut self) {
        match &mut self.held {
            Some(held) => held.exited().await,
            None => {
                let _ = self.child.wait().await;
            }
        }
    }

    /// How the process ended, once everything beneath its shepherd has
    /// been ended too (SIGTERM, `grace`, then SIGKILL); without a shepherd,
    /// once it has exited.
    pub async fn finish(&mut self, grace: Duration) -> std::process::ExitStatus {
        if let Some(held) = self.held.take() {
            return held.end(&mut self.child, grace).await;
        }
        self.child
            .wait()
            .await
            .unwrap_or_else(|_| std::process::ExitStatus::from_raw(0))
    }
}
