//! Terminals: a command on a new pseudo-terminal, for interactive use.
//! Input and output are raw bytes; resizing sets the window size, which
//! the kernel announces to the foreground job with SIGWINCH.
//!
//! Where the agent has no cgroups, the command runs under a shepherd held
//! for the terminal's life (see [`crate::tree`]): when the terminal
//! closes or its command exits, every process started on it ends too,
//! however it detached.

use crate::Agent;
use crate::fdio::{read_some, sleep_until, write_all};
use crate::server::{Control, Controls, Outbox};
use crate::tree::Tree;
use berth_proto::{
    AgentMessage, Command as WireCommand, ErrorCode, ExitStatus, Stream, TerminalParams,
};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::unix::AsyncFd;

const READ_CHUNK: usize = 64 * 1024;

pub async fn run(agent: &Arc<Agent>, params: TerminalParams, mut controls: Controls, out: Outbox) {
    let started = Instant::now();
    let (master, mut tree, cgroup) = match start(agent, &params).await {
        Ok(started) => started,
        Err((code, message)) => {
            out.error(code, message).await;
            return;
        }
    };
    let _owned = agent.reaper.own(tree.group);
    out.message(AgentMessage::Started { pid: tree.pid }).await;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut output_open = true;
    let mut cancelled = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut controls_open = true;
    let status = loop {
        tokio::select! {
            read = read_some(&master, &mut buf), if output_open => match read {
                Ok(n) if n > 0 => {
                    if !out.send(AgentMessage::Output { stream: Stream::Stdout }, &buf[..n]).await {
                        cancelled = true;
                        end_group(&tree, &mut kill_at, agent);
                    }
                }
                // EIO: every slave descriptor is closed.
                _ => output_open = false,
            },
            () = tree.exited() => break tree.finish(agent.grace).await,
            control = controls.recv(), if controls_open => match control {
                Some(Control::Stdin(bytes)) => {
                    if write_all(&master, &bytes).await.is_err() {
                        output_open = false;
                    }
                }
                Some(Control::Resize { rows, cols }) => {
                    let _ = rustix::termios::tcsetwinsize(master.get_ref(), winsize(rows, cols));
                }
                Some(Control::Signal(signal)) => crate::signal_group(shell_group(&tree), signal),
                Some(Control::Ack) => {}
                Some(Control::CloseStdin) => {
                    // End of input, as Ctrl-D at the start of a line.
                    let _ = write_all(&master, &[4]).await;
                }
                Some(Control::Cancel) => {
                    cancelled = true;
                    end_group(&tree, &mut kill_at, agent);
                }
                None => {
                    controls_open = false;
                    cancelled = true;
                    end_group(&tree, &mut kill_at, agent);
                }
            },
            () = agent.shutdown.cancelled(), if kill_at.is_none() => {
                cancelled = true;
                end_group(&tree, &mut kill_at, agent);
            }
            () = sleep_until(kill_at) => {
                kill_at = None;
                if tree.is_held() {
                    break tree.finish(agent.grace).await;
                }
                crate::signal_group(tree.group, rustix::process::Signal::KILL.as_raw());
            }
        }
    };
    // What the command wrote just before exiting is still in the terminal.
    while output_open {
        match rustix::io::read(master.get_ref(), &mut buf) {
            Ok(n) if n > 0 => {
                out.send(
                    AgentMessage::Output {
                        stream: Stream::Stdout,
                    },
                    &buf[..n],
                )
                .await;
            }
            _ => output_open = false,
        }
    }
    // What was started on the terminal ends with it.
    if let Some(cgroup) = &cgroup {
        cgroup.kill();
        cgroup.emptied(agent.grace).await;
    }
    out.message(AgentMessage::Exit(ExitStatus {
        code: status.code(),
        signal: status.signal(),
        cancelled,
        duration_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    }))
    .await;
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// SIGHUP to the command's group; then, under a shepherd, at once, its
/// ending of everything beneath it (SIGTERM, the grace period, SIGKILL);
/// without one, SIGTERM to the group and SIGKILL after the grace period.
fn end_group(tree: &Tree, kill_at: &mut Option<tokio::time::Instant>, agent: &Agent) {
    crate::signal_group(shell_group(tree), rustix::process::Signal::HUP.as_raw());
    if tree.is_held() {
        kill_at.get_or_insert(tokio::time::Instant::now());
        return;
    }
    crate::signal_group(tree.group, rustix::process::Signal::TERM.as_raw());
    kill_at.get_or_insert(tokio::time::Instant::now() + agent.grace);
}

/// The command's process group: an interactive shell under a shepherd
/// leads one of its own.
fn shell_group(tree: &Tree) -> u32 {
    rustix::process::Pid::from_raw(tree.pid as i32)
        .and_then(|pid| rustix::process::getpgid(Some(pid)).ok())
        .map_or(tree.group, |group| group.as_raw_nonzero().get() as u32)
}

/// What a started terminal is: its master side, its command, and the
/// cgroup the command runs in when the agent has cgroups.
type Started = (AsyncFd<OwnedFd>, Tree, Option<berth_exec::CommandCgroup>);

/// Opens a terminal pair and starts the command on its slave side.
async fn start(agent: &Agent, params: &TerminalParams) -> Result<Started, (ErrorCode, String)> {
    let cwd = agent.workdir(params.cwd.as_deref())?;
    let io_err = |what: &str, e: io::Error| (ErrorCode::Io, format!("{what}: {e}"));
    let (master, slave) = open_pty().map_err(|e| io_err("cannot open a terminal", e))?;
    rustix::termios::tcsetwinsize(&master, winsize(params.rows, params.cols))
        .map_err(|e| io_err("cannot size the terminal", e.into()))?;
    let argv = match &params.command {
        Some(command) => command.to_argv(),
        None => {
            let shell = ["bash", "sh"]
                .iter()
                .find_map(|name| agent.env.which(name))
                .ok_or((
                    ErrorCode::Unsupported,
                    "no shell in this workspace: neither `bash` nor `sh` is on PATH; name a command"
                        .to_string(),
                ))?;
            vec![shell.to_string_lossy().into_owned()]
        }
    };
    let display = params
        .command
        .as_ref()
        .map(WireCommand::display)
        .unwrap_or_else(|| argv.join(" "));
    if argv.is_empty() {
        return Err((ErrorCode::BadRequest, "empty command".to_string()));
    }
    let mut env = params.env.clone();
    env.entry("TERM".into())
        .or_insert_with(|| "xterm-256color".into());
    let stdio = |what: &str| -> Result<Stdio, (ErrorCode, String)> {
        Ok(Stdio::from(slave.try_clone().map_err(|e| io_err(what, e))?))
    };
    let cgroup = agent.command_cgroup();
    let (mut command, holding) =
        crate::tree::command(agent, &argv, cgroup.is_some()).map_err(|e| io_err("shepherd", e))?;
    command
        .current_dir(cwd)
        .env_clear()
        .envs(agent.env.compose(&env))
        .stdin(stdio("terminal stdin")?)
        .stdout(stdio("terminal stdout")?)
        .stderr(stdio("terminal stderr")?);
    crate::spawn::controlling_terminal(&mut command);
    berth_exec::nice_on_spawn(&mut command, agent.command_nice);
    if let Some(cgroup) = &cgroup {
        cgroup.enter_on_spawn(&mut command);
    }
    // Only the command holds the slave side then (a shepherd lets go of
    // its own), so the master reports EIO once the command and everything
    // it started have closed it.
    let tree = Tree::spawn(command, holding, &display).await?;
    drop(slave);
    rustix::io::ioctl_fionbio(&master, true).map_err(|e| io_err("terminal", e.into()))?;
    let master = crate::fdio::register(master).map_err(|e| io_err("terminal", e))?;
    Ok((master, tree, cgroup))
}

fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((master, slave))
}
