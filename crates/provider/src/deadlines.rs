//! Deadlines: a workspace idle for `timeouts.idle` seconds is stopped (its
//! files kept), one older than `timeouts.lifetime` seconds is removed.
//!
//! Every operation records that its workspace is in use. The registry is
//! written at most once a second per workspace ([`COALESCE_MS`]), so a
//! burst of commands costs one write. An operation that lasts (a command
//! streaming, an open terminal) holds a [`Busy`] guard: this process never
//! stops a workspace it is busy in, and while the guard lives the
//! workspace's activity is written again every [`HEARTBEAT`], so that other
//! processes see it in use too.
//!
//! [`Provider::reap`] applies the deadlines: `berth serve` runs it every
//! [`REAP_INTERVAL`], and every process runs it when it opens the provider.

use crate::{Provider, ServiceError};
use berth_core::{ExecEvent, ExecStream, Workspace, WorkspaceId};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Activity closer than this to the last one written is not written again.
const COALESCE_MS: i64 = 1_000;
/// How often the activity of a busy workspace is written again.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often `berth serve` looks for deadlines that passed.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// What this process knows of a workspace's use.
#[derive(Default)]
struct Use {
    /// Operations in flight.
    busy: usize,
    /// The last activity this process wrote, ms since the Unix epoch.
    written: i64,
}

/// The workspaces this process uses.
#[derive(Default)]
pub(crate) struct Activity {
    uses: Mutex<HashMap<WorkspaceId, Use>>,
}

impl Activity {
    fn uses(&self) -> MutexGuard<'_, HashMap<WorkspaceId, Use>> {
        self.uses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_busy(&self, id: &WorkspaceId) -> bool {
        self.uses().get(id).is_some_and(|u| u.busy > 0)
    }

    /// Forgets a workspace that was removed.
    pub(crate) fn forget(&self, id: &WorkspaceId) {
        self.uses().remove(id);
    }
}

/// What a reap did to one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaped {
    /// Stopped: idle past `timeouts.idle`.
    Stopped(WorkspaceId),
    /// Removed: older than `timeouts.lifetime`.
    Removed(WorkspaceId),
}

/// Holds a workspace in use; see the module docs.
pub struct Busy {
    provider: Provider,
    id: WorkspaceId,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(u) = self.provider.inner.activity.uses().get_mut(&self.id) {
            u.busy = u.busy.saturating_sub(1);
        }
        self.provider.record_use(&self.id, 0);
    }
}

impl Provider {
    /// Records that the workspace `ws` is being used now. `ws` as read from
    /// the registry tells when its use was last written.
    pub(crate) fn used(&self, ws: &Workspace) {
        self.record_use(&ws.id, ws.last_active_at);
    }

    /// Writes the workspace's activity unless this process or the registry
    /// (`known`) has it from less than [`COALESCE_MS`] ago. A failure to
    /// write is logged: the operation itself went well.
    fn record_use(&self, id: &WorkspaceId, known: i64) {
        let now = self.clock().now_ms();
        {
            let mut uses = self.inner.activity.uses();
            let u = uses.entry(id.clone()).or_default();
            // What another process wrote counts as written here too: the
            // end of a short command (its guard dropped) is then not
            // written again.
            u.written = u.written.max(known);
            if now.saturating_sub(u.written) < COALESCE_MS {
                return;
            }
            u.written = now;
        }
        if let Err(e) = self.store().record_activity(id, now) {
            tracing::warn!(id = %id, error = %e, "cannot record the workspace's activity");
        }
    }

    /// Marks the workspace in use until the guard is dropped: a terminal
    /// holds one while it is open.
    pub fn busy(&self, ws: &Workspace) -> Busy {
        self.used(ws);
        self.inner
            .activity
            .uses()
            .entry(ws.id.clone())
            .or_default()
            .busy += 1;
        Busy {
            provider: self.clone(),
            id: ws.id.clone(),
        }
    }

    /// Passes a command's events on, holding its workspace in use until
    /// the command ends or its reader goes away.
    pub(crate) fn hold_while_running(&self, ws: &Workspace, mut events: ExecStream) -> ExecStream {
        let busy = self.busy(ws);
        let (sender, receiver) = tokio::sync::mpsc::channel::<ExecEvent>(16);
        tokio::spawn(async move {
            let _busy = busy;
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    // A reader that left is seen at once, not at the next
                    // event: dropping `events` then ends the command.
                    () = sender.closed() => break,
                };
                let Some(event) = event else { break };
                if sender.send(event).await.is_err() {
                    break;
                }
            }
        });
        receiver
    }

    /// Writes again, every [`HEARTBEAT`], the activity of the workspaces
    /// this process is busy in; ends with the provider.
    pub(crate) fn start_heartbeat(&self) {
        let provider = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(heartbeat(provider));
    }

    /// Stops the running workspaces idle past their `timeouts.idle` and
    /// removes those older than their `timeouts.lifetime`. A workspace
    /// this process is busy in is not idle. Failures are logged and left
    /// for the next reap.
    pub async fn reap(&self) -> Result<Vec<Reaped>, ServiceError> {
        let now = self.clock().now_ms();
        let mut reaped = Vec::new();
        for ws in self.store().past_deadline(now)? {
            if ws.removal_deadline().is_some_and(|at| at <= now) {
                match self.remove(ws.id.as_str()).await {
                    Ok(_) => {
                        tracing::info!(id = %ws.id, "removed: its lifetime ended");
                        reaped.push(Reaped::Removed(ws.id));
                    }
                    Err(e) => {
                        tracing::warn!(id = %ws.id, error = %e, "cannot remove at its lifetime's end");
                    }
                }
                continue;
            }
            if ws.idle_deadline().is_none_or(|at| at > now) {
                continue;
            }
            // Read again: it may have been used since the list was read.
            let Ok(current) = self.store().get(&ws.id) else {
                continue;
            };
            if self.inner.activity.is_busy(&ws.id)
                || current.idle_deadline().is_none_or(|at| at > now)
            {
                continue;
            }
            match self.stop(ws.id.as_str()).await {
                Ok(_) => {
                    tracing::info!(id = %ws.id, "stopped: idle past its timeout");
                    reaped.push(Reaped::Stopped(ws.id));
                }
                Err(e) => tracing::warn!(id = %ws.id, error = %e, "cannot stop an idle workspace"),
            }
        }
        Ok(reaped)
    }

    /// Reaps every [`REAP_INTERVAL`] until the task is dropped: what
    /// `berth serve` runs.
    pub async fn reap_forever(self) {
        let mut ticks = tokio::time::interval(REAP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = self.reap().await {
                tracing::warn!(error = %e, "cannot apply the workspaces' deadlines");
            }
        }
    }
}

async fn heartbeat(provider: Weak<crate::Inner>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = provider.upgrade() else {
            return;
        };
        let provider = Provider { inner };
        let busy: Vec<WorkspaceId> = provider
            .inner
            .activity
            .uses()
            .iter()
            .filter(|(_, u)| u.busy > 0)
            .map(|(id, _)| id.clone())
            .collect();
        for id in busy {
            provider.record_use(&id, 0);
        }
    }
}
