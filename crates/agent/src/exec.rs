//! The `exec` operation: one command through `berth-exec`, with stdin,
//! signals and cancellation routed from the client.

use crate::Agent;
use crate::server::{Control, Controls, Outbox};
use berth_exec::{Spawn, Stdin};
use berth_proto::{AgentMessage, ErrorCode, ExecEvent, ExecRequest, Stream};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub async fn run(
    agent: &Arc<Agent>,
    request: ExecRequest,
    stream_stdin: bool,
    mut controls: Controls,
    out: Outbox,
) {
    let cwd = match agent.workdir(request.cwd.as_deref()) {
        Ok(cwd) => cwd,
        Err((code, message)) => {
            out.error(code, message).await;
            return;
        }
    };
    let (mut stdin_tx, stdin) = if stream_stdin {
        let (tx, rx) = mpsc::channel(16);
        // Bytes given with the request come first, then the stream.
        if let Some(bytes) = request.stdin.clone() {
            let _ = tx.try_send(bytes);
        }
        (Some(tx), Stdin::Stream(rx))
    } else {
        let stdin = request.stdin.clone().map_or(Stdin::Null, Stdin::Bytes);
        (None, stdin)
    };
    let cancel = agent.shutdown.child_token();
    // Without cgroups, a shepherd holds the command's processes together.
    let cgroup = agent.command_cgroup();
    let shepherd = match cgroup {
        Some(_) => None,
        None => Some(agent.shepherd()),
    };
    let spawned = berth_exec::spawn(
        Spawn {
            argv: request.command.to_argv(),
            cwd,
            env: agent.env.compose(&request.env),
            stdin,
            timeout: request.timeout_ms.map(Duration::from_millis),
            output_limit: request.output_limit,
            grace: agent.grace,
            cgroup,
            shepherd,
            nice: Some(agent.command_nice),
        },
        cancel.clone(),
    );
    let mut running = match spawned {
        Ok(running) => running,
        Err(err) => {
            out.error(ErrorCode::Spawn, err.to_string()).await;
            return;
        }
    };
    // Owned until its exit is known: until then the reaper takes nothing
    // it adopts as a finished command's (see `reaper`).
    let owned = agent.reaper.own(running.pid);
    let pid = running.pid;
    // A shepherd says whether the command started; waiting for it holds up
    // no other operation, and the command's timeout runs meanwhile.
    if let Err(err) = running.started().await {
        out.error(ErrorCode::Spawn, err.to_string()).await;
        return;
    }
    if !out.message(AgentMessage::Started { pid }).await {
        cancel.cancel();
    }
    let mut controls_open = true;
    loop {
        tokio::select! {
            event = running.events.recv() => match event {
                Some(ExecEvent::Stdout { data }) => send_output(&out, Stream::Stdout, &data.0, &cancel).await,
                Some(ExecEvent::Stderr { data }) => send_output(&out, Stream::Stderr, &data.0, &cancel).await,
                Some(ExecEvent::Exit(status)) => {
                    drop(owned);
                    out.message(AgentMessage::Exit(status)).await;
                    return;
                }
                None => {
                    out.error(ErrorCode::Io, format!("command {pid} ended without an exit status")).await;
                    return;
                }
            },
            control = controls.recv(), if controls_open => match control {
                Some(Control::Stdin(bytes)) => {
                    if let Some(tx) = &stdin_tx {
                        // A command that stopped reading leaves its input
                        // unread, as a pipe would.
                        if !bytes.is_empty() && tx.send(bytes).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                Some(Control::CloseStdin) => stdin_tx = None,
                Some(Control::Signal(signal)) => crate::signal_group(pid, signal),
                Some(Control::Resize { .. } | Control::Ack) => {}
                Some(Control::Cancel) => cancel.cancel(),
                None => {
                    controls_open = false;
                    cancel.cancel();
                }
            },
        }
    }
}

async fn send_output(out: &Outbox, stream: Stream, data: &[u8], cancel: &CancellationToken) {
    if !out.send(AgentMessage::Output { stream }, data).await {
        cancel.cancel();
    }
}
