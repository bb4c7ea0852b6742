//! Everything a workspace's agent offers beyond plain commands: what it
//! reports (version, interpreters, resources), persistent shell sessions
//! and interactive terminals, for runtimes whose workspaces have one.
//!
//! Sessions and terminals belong to the instance of the workspace they
//! were opened in: a stop, reset or remove, whichever front end asked for
//! it, ends them (see [`Provider::end_instance`]). Session commands follow
//! the same rules as every other command ([`Provider::bound`]).

use crate::{Busy, Provider, ServiceError};
use berth_agent_client::AgentClient;
use berth_core::proto::{AgentInfo, SessionParams, TerminalParams};
use berth_core::{ExecEvent, ExecStream, ExitStatus, RuntimeError, Workspace, WorkspaceId};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// How long to wait for a workspace's agent socket to answer.
const AGENT_WAIT: Duration = Duration::from_secs(10);

/// An open session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = SessionResponse)]
pub struct SessionInfo {
    /// The session's id, for its routes.
    pub id: String,
    /// The id of the workspace it runs in.
    pub workspace: String,
    /// The shell's process id in the workspace.
    pub pid: u32,
}

/// A command to run in a session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SessionExecParams)]
pub struct SessionCommand {
    /// Shell text, run by the session's shell: `cd`, variables and
    /// functions persist to the next command.
    pub command: String,
    /// Time limit in milliseconds; past it the command is interrupted (the
    /// session lives on). The spec's `timeouts.exec` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
    pub timeout_ms: Option<u64>,
    /// Bytes kept per stream; anything beyond is counted and dropped. The
    /// provider's output limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
    pub output_limit: Option<u64>,
}

/// An interactive program on a pseudo-terminal in a running workspace.
/// Dropping it ends the program; so does a stop, reset or remove of the
/// workspace, after which [`Terminal::next`] answers `None`.
pub struct Terminal {
    workspace: WorkspaceId,
    process: berth_agent_client::Terminal,
    ended: CancellationToken,
    /// An open terminal keeps its workspace from going idle.
    _busy: Busy,
}

impl Terminal {
    /// The program's next output (as `Stdout`), then its `Exit`; `None`
    /// once its events ended without one (the agent went away) or the
    /// workspace's instance ended.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        tokio::select! {
            event = self.process.events.recv() => event,
            () = self.ended.cancelled() => None,
        }
    }

    /// Writes bytes to the terminal's input.
    pub fn write(&self, bytes: &[u8]) -> Result<(), ServiceError> {
        self.process.write(bytes).map_err(|e| self.failed(e))
    }

    /// Changes the terminal's size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ServiceError> {
        self.process.resize(rows, cols).map_err(|e| self.failed(e))
    }

    /// Sends a signal (such as 2, SIGINT) to the program.
    pub fn signal(&self, signal: i32) -> Result<(), ServiceError> {
        self.process.signal(signal).map_err(|e| self.failed(e))
    }

    /// Ends the terminal's input, as Ctrl-D does.
    pub fn close_stdin(&self) -> Result<(), ServiceError> {
        self.process.close_stdin().map_err(|e| self.failed(e))
    }

    fn failed(&self, err: berth_agent_client::ClientError) -> ServiceError {
        ServiceError::runtime(format!("{}, terminal", self.workspace), err.into())
    }
}

impl Provider {
    /// A connection to a running workspace's agent, from the one pool of
    /// agent connections.
    async fn agent(&self, id: &str) -> Result<(Workspace, AgentClient), ServiceError> {
        let (ws, runtime) = self.running(id).await?;
        let socket = runtime
            .agent_socket(&ws)
            .ok_or_else(|| ServiceError::Runtime {
                id: ws.id.to_string(),
                source: RuntimeError::unsupported(runtime.name(), "an in-workspace agent"),
            })?;
        let agent = self
            .agents()
            .get(ws.id.as_str(), &socket, AGENT_WAIT)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e.into()))?;
        Ok((ws, agent))
    }

    /// The agent's version, resource use and interpreters; with `detect`,
    /// the interpreters are probed again first.
    pub async fn agent_info(&self, id: &str, detect: bool) -> Result<AgentInfo, ServiceError> {
        let (ws, agent) = self.agent(id).await?;
        agent
            .info(detect)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e.into()))
    }

    /// Opens a persistent shell in a running workspace, with the spec's
    /// environment under the one asked for. It lives until it is closed or
    /// the workspace is stopped, reset or removed.
    pub async fn open_session(
        &self,
        id: &str,
        mut params: SessionParams,
    ) -> Result<SessionInfo, ServiceError> {
        let (ws, agent) = self.agent(id).await?;
        params.env = self.environment(&ws, params.env);
        let session = agent
            .session(params)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e.into()))?;
        let pid = session.pid;
        let session = self.inner.sessions.open(&ws.id, session);
        Ok(SessionInfo {
            id: session,
            workspace: ws.id.to_string(),
            pid,
        })
    }

    /// Runs a command in a session, after any command already running
    /// there; its events end with `Exit`. Dropping the stream interrupts
    /// the command; the session lives on.
    pub async fn session_exec(
        &self,
        id: &str,
        session: &str,
        command: SessionCommand,
    ) -> Result<(WorkspaceId, ExecStream), ServiceError> {
        let ws = self.get(id)?;
        self.used(&ws);
        let bounds = self.bound(&ws, command.timeout_ms, command.output_limit);
        let mut events = self
            .inner
            .sessions
            .run(
                &ws.id,
                session,
                command.command,
                bounds.timeout_ms,
                bounds.output_limit,
            )
            .await?;
        // The session's task never waits for a slow reader (an interrupt
        // must get through): it hands events on unbounded, bounded per
        // command by the output limit; here they become a stream like
        // every other command's.
        let (sender, stream) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    // Dropping `events` tells the session's task that the
                    // reader left, which interrupts the command.
                    () = sender.closed() => return,
                };
                let Some(event) = event else { return };
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        let stream = self.hold_while_running(&ws, stream);
        Ok((ws.id, stream))
    }

    /// Interrupts the command running in a session (SIGINT, then SIGKILL
    /// after the agent's grace period); answers whether one was running.
    pub async fn interrupt_session(&self, id: &str, session: &str) -> Result<bool, ServiceError> {
        let ws = self.get(id)?;
        self.inner.sessions.interrupt(&ws.id, session).await
    }

    /// Closes a session, ending its shell and anything running in it.
    pub async fn close_session(&self, id: &str, session: &str) -> Result<ExitStatus, ServiceError> {
        let ws = self.get(id)?;
        self.inner.sessions.close(&ws.id, session).await
    }

    /// Starts `params.command` (a shell by default) on a new terminal in a
    /// running workspace, with the spec's environment under the one asked
    /// for.
    pub async fn terminal(
        &self,
        id: &str,
        mut params: TerminalParams,
    ) -> Result<Terminal, ServiceError> {
        let (ws, agent) = self.agent(id).await?;
        params.env = self.environment(&ws, params.env);
        let ended = self.instance(&ws.id);
        let process = agent
            .terminal(params)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e.into()))?;
        Ok(Terminal {
            _busy: self.busy(&ws),
            workspace: ws.id,
            process,
            ended,
        })
    }
}
