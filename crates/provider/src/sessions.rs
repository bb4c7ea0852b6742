//! Open shell sessions. Each is owned by one task, which holds the agent's
//! session and the command running in it, runs queued commands one after
//! another, and takes requests (run, interrupt, close) by message. The
//! registry maps session ids to those tasks' mailboxes behind a mutex that
//! is only ever held to look up, add or remove an entry, never across an
//! await.
//!
//! A session ends when it is closed, when its workspace is stopped, reset
//! or removed (by any front end: the provider ends them), when its agent
//! goes away otherwise (noticed by the next request, which is answered
//! with the loss), or when the provider is dropped.

use crate::ServiceError;
use berth_agent_client::{ClientError, Process, Session};
use berth_core::{ExecEvent, ExitStatus, WorkspaceId};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for a session's task before senders wait.
const MAILBOX: usize = 16;

/// The open sessions of every workspace.
#[derive(Clone, Default)]
pub(crate) struct Sessions {
    open: Arc<Mutex<HashMap<String, Handle>>>,
}

#[derive(Clone)]
struct Handle {
    /// The id of the workspace the session runs in.
    workspace: String,
    mailbox: mpsc::Sender<Request>,
}

/// What a session's task is asked to do.
enum Request {
    Run(Run),
    /// Interrupts the running command; answers whether one was running.
    Interrupt(oneshot::Sender<bool>),
    /// Ends the session; answers how its shell ended.
    Close(oneshot::Sender<Result<ExitStatus, ClientError>>),
}

/// A command to run in a session, bounded already.
struct Run {
    command: String,
    timeout_ms: Option<u64>,
    output_limit: u64,
    /// Receives the command's events once it has started.
    started: oneshot::Sender<Result<mpsc::UnboundedReceiver<ExecEvent>, ClientError>>,
}

impl Sessions {
    /// Hands `session` of `workspace` to a task of its own; returns its id.
    pub fn open(&self, workspace: &WorkspaceId, session: Session) -> String {
        let id = ulid::Ulid::generate().to_string().to_ascii_lowercase();
        let (mailbox, requests) = mpsc::channel(MAILBOX);
        self.lock().insert(
            id.clone(),
            Handle {
                workspace: workspace.to_string(),
                mailbox,
            },
        );
        // Weak: the map holds the task's mailbox, and a task holding the
        // map would keep both alive after the provider is gone.
        let open = Arc::downgrade(&self.open);
        let key = id.clone();
        tokio::spawn(async move {
            own(session, requests).await;
            if let Some(open) = open.upgrade() {
                open.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key);
            }
        });
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        // The map stays consistent whatever panicked while holding it: every
        // change is a single insert or remove.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(&self, workspace: &WorkspaceId, session: &str) -> Result<Handle, ServiceError> {
        self.lock()
            .get(session)
            .filter(|handle| handle.workspace == workspace.as_str())
            .cloned()
            .ok_or_else(|| ServiceError::SessionNotFound {
                workspace: workspace.to_string(),
                session: session.to_string(),
            })
    }

    async fn ask<T>(
        &self,
        workspace: &WorkspaceId,
        session: &str,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ServiceError> {
        let ended = || ServiceError::SessionEnded {
            workspace: workspace.to_string(),
            session: session.to_string(),
            cause: None,
        };
        let handle = self.handle(workspace, session)?;
        let (reply, answer) = oneshot::channel();
        handle
            .mailbox
            .send(request(reply))
            .await
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())
    }

    /// Starts a command in a session (after the commands queued before it)
    /// and returns its events, ending with `Exit`. Dropping the receiver
    /// interrupts the command.
    pub async fn run(
        &self,
        workspace: &WorkspaceId,
        session: &str,
        command: String,
        timeout_ms: Option<u64>,
        output_limit: u64,
    ) -> Result<mpsc::UnboundedReceiver<ExecEvent>, ServiceError> {
        self.ask(workspace, session, |started| {
            Request::Run(Run {
                command,
                timeout_ms,
                output_limit,
                started,
            })
        })
        .await?
        .map_err(|source| agent_failed(workspace, session, source))
    }

    /// Interrupts the command running in a session, if any; the session
    /// lives on. Answers whether a command was running.
    pub async fn interrupt(
        &self,
        workspace: &WorkspaceId,
        session: &str,
    ) -> Result<bool, ServiceError> {
        self.ask(workspace, session, Request::Interrupt).await
    }

    /// Ends every session of a workspace that was stopped, reset or
    /// removed: their tasks end as their mailboxes close, ending their
    /// shells and commands, and their ids are not found from now on.
    pub fn end_workspace(&self, workspace: &WorkspaceId) {
        self.lock()
            .retain(|_, handle| handle.workspace != workspace.as_str());
    }

    /// Closes a session, ending its shell and anything running in it.
    pub async fn close(
        &self,
        workspace: &WorkspaceId,
        session: &str,
    ) -> Result<ExitStatus, ServiceError> {
        let closed = self.ask(workspace, session, Request::Close).await;
        // Gone from the map at once, not only when the task has finished.
        self.lock().remove(session);
        closed?.map_err(|source| agent_failed(workspace, session, source))
    }
}

/// Whether an agent error means the connection, and so the session, is
/// gone.
fn is_lost(err: &ClientError) -> bool {
    matches!(err, ClientError::Closed | ClientError::Frame(_))
}

/// An agent's answer to a session request: the loss of the connection
/// ends the session; anything else is the agent's refusal or failure,
/// named after the session.
fn agent_failed(workspace: &WorkspaceId, session: &str, source: ClientError) -> ServiceError {
    if is_lost(&source) {
        ServiceError::SessionEnded {
            workspace: workspace.to_string(),
            session: session.to_string(),
            cause: Some(source.to_string()),
        }
    } else {
        ServiceError::runtime(format!("{workspace}, session `{session}`"), source.into())
    }
}

/// The command running in a session, and where its events go.
struct Running {
    process: Process,
    client: mpsc::UnboundedSender<ExecEvent>,
    /// Interrupted already (its client left, or an interrupt request).
    interrupted: bool,
}

/// What happened to the running command.
enum Step {
    Event(ExecEvent),
    /// The agent connection was lost before `Exit`.
    Lost,
    ClientLeft,
}

/// The session's task: runs until the session is closed, its agent is
/// lost, or every handle to it is gone.
async fn own(session: Session, mut requests: mpsc::Receiver<Request>) {
    let mut queue: VecDeque<Run> = VecDeque::new();
    let mut running: Option<Running> = None;
    loop {
        while running.is_none() {
            let Some(run) = queue.pop_front() else { break };
            if run.started.is_closed() {
                continue;
            }
            match session
                .start(&run.command, run.timeout_ms, Some(run.output_limit))
                .await
            {
                Ok(process) => {
                    // The task forwards the events so that it keeps the
                    // process (to interrupt it) and sees the end of each
                    // command. Unbounded: output is bounded per command by
                    // its output limit, and a slow client must not hold up
                    // an interrupt.
                    let (client, events) = mpsc::unbounded_channel();
                    if run.started.send(Ok(events)).is_ok() {
                        running = Some(Running {
                            process,
                            client,
                            interrupted: false,
                        });
                    }
                }
                Err(err) => {
                    let lost = is_lost(&err);
                    let _ = run.started.send(Err(err));
                    if lost {
                        fail_queued(queue);
                        return;
                    }
                }
            }
        }
        tokio::select! {
            request = requests.recv() => match request {
                Some(Request::Run(run)) => queue.push_back(run),
                Some(Request::Interrupt(reply)) => {
                    let was_running = match &mut running {
                        Some(command) => {
                            command.process.cancel();
                            command.interrupted = true;
                            true
                        }
                        None => false,
                    };
                    let _ = reply.send(was_running);
                }
                Some(Request::Close(reply)) => {
                    drop(running);
                    fail_queued(queue);
                    let _ = reply.send(session.close().await);
                    return;
                }
                None => return,
            },
            step = next_step(&mut running) => match step {
                Step::Event(event) => {
                    let last = matches!(event, ExecEvent::Exit(_));
                    if let Some(command) = &running {
                        let _ = command.client.send(event);
                    }
                    if last {
                        running = None;
                    }
                }
                Step::Lost => {
                    drop(running);
                    fail_queued(queue);
                    return;
                }
                Step::ClientLeft => {
                    if let Some(command) = &mut running {
                        command.process.cancel();
                        command.interrupted = true;
                    }
                }
            },
        }
    }
}

/// The running command's next event; never ready when nothing runs.
async fn next_step(running: &mut Option<Running>) -> Step {
    let Some(command) = running else {
        return std::future::pending().await;
    };
    tokio::select! {
        event = command.process.events.recv() => match event {
            Some(event) => Step::Event(event),
            None => Step::Lost,
        },
        () = command.client.closed(), if !command.interrupted => Step::ClientLeft,
    }
}

/// Answers commands that will never run.
fn fail_queued(queue: VecDeque<Run>) {
    for run in queue {
        let _ = run.started.send(Err(ClientError::Closed));
    }
}
