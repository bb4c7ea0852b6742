//! Sessions: a persistent shell in which `cd`, exported variables and
//! functions persist from one command to the next.
//!
//! Each command is sent to the shell's stdin as
//!
//! ```text
//! command eval 'CMD' 4>&- </dev/null; printf '%s %d\n' MARKER "$?" >&4
//! ```
//!
//! so its exit status arrives on a pipe of its own (fd 4 of the shell),
//! tagged with a random per-command marker. Output is never parsed for a
//! prompt: once the status has arrived, every byte the command wrote is
//! already in the stdout and stderr pipes, and draining them without
//! blocking yields exactly the command's output, whatever it looks like.
//! `command eval` keeps a syntax error from ending the shell (POSIX shells
//! exit on an error in a special built-in, but not when it is run through
//! `command`), and `</dev/null` keeps the command from reading the script.
//!
//! The shell leads its own process group and runs `trap : INT`, so an
//! interrupt (SIGINT to the group) ends the running command while the
//! shell — whose handler does nothing — lives on; commands still get the
//! default SIGINT disposition, as a handler is reset on exec. A signal that
//! arrives before the command has a process of its own (the shell has not
//! forked it yet, or its fork has not yet executed it) is sent again until
//! it has. A command made only of built-ins (`while :; do
//! :; done`) runs in the shell itself and cannot be interrupted without
//! ending it: past the grace period the session is ended, and says so.
//!
//! Where the agent has no cgroups, the shell runs under a shepherd held
//! for the session's life (see [`crate::tree`]): the shepherd leads the
//! group and survives its signals, and when the session ends, however it
//! does, every process its commands started ends with it. A command's
//! processes are then those that appear beneath the shepherd while it
//! runs, but the shell: a timeout or a cancel ends every one of them,
//! however it detached (and whatever an earlier command left running
//! forks meanwhile), and nothing that was there before.

use crate::Agent;
use crate::fdio::{read_now, read_some, sleep_until};
use crate::server::{Control, Controls, Outbox, SessionRun};
use crate::tree::Tree;
use berth_exec::shepherd::Mark;
use berth_proto::{AgentMessage, ErrorCode, ExitStatus, SessionParams, Stream};
use rustix::process::{Pid, Signal};
use std::hash::{BuildHasher as _, Hasher as _};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::io::unix::AsyncFd;
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

const READ_CHUNK: usize = 64 * 1024;
/// The shell's descriptor for its status pipe (3 is a shepherd's).
const STATUS_FD: i32 = 4;

struct Shell {
    /// The shell, and its shepherd when it has one.
    tree: Tree,
    /// The shell's own pid.
    pid: u32,
    /// Its process group (the shepherd's, when it has one).
    group: u32,
    stdin: ChildStdin,
    stdout: AsyncFd<OwnedFd>,
    stderr: AsyncFd<OwnedFd>,
    status: AsyncFd<OwnedFd>,
    /// Status bytes received but not yet consumed as a whole line.
    status_buf: Vec<u8>,
    /// Whether stdout and stderr have not reached end of file.
    stdout_open: bool,
    stderr_open: bool,
    /// The session's own cgroup, when the agent has cgroups: what is in it
    /// when the session ends, ends with it.
    cgroup: Option<berth_exec::CommandCgroup>,
    /// The cgroups of earlier commands that left processes running (their
    /// background jobs), which end with the session.
    jobs: Vec<berth_exec::CommandCgroup>,
    /// Under a shepherd, what was beneath it when the running command
    /// started.
    mark: Option<Mark>,
}

/// What ended a command.
enum RunEnd {
    /// The command finished; the shell waits for the next one.
    Finished,
    /// The shell itself is gone (the command ran `exit`, or it was killed).
    ShellGone(std::process::ExitStatus),
    /// The session was closed while the command ran.
    Closed,
}

pub async fn run(
    agent: &Arc<Agent>,
    params: SessionParams,
    mut controls: Controls,
    mut runs: mpsc::UnboundedReceiver<SessionRun>,
    out: Outbox,
) {
    let mut shell = match start(agent, &params).await {
        Ok(shell) => shell,
        Err((code, message)) => {
            out.error(code, message).await;
            return;
        }
    };
    let _owned = agent.reaper.own(shell.group);
    out.message(AgentMessage::Started { pid: shell.pid }).await;
    let started = Instant::now();
    let mut discard_out = vec![0u8; READ_CHUNK];
    let mut discard_err = vec![0u8; READ_CHUNK];
    let mut closing = shell.stdin.write_all(b"trap : INT\n").await.is_err();
    let mut gone = None;
    while !closing && gone.is_none() {
        tokio::select! {
            control = controls.recv() => match control {
                Some(Control::Signal(signal)) => crate::signal_group(shell.group, signal),
                Some(Control::Cancel) | None => closing = true,
                Some(_) => {}
            },
            () = agent.shutdown.cancelled() => closing = true,
            run = runs.recv() => match run {
                Some(run) => match execute(agent, &mut shell, run, &mut controls).await {
                    RunEnd::Finished => {}
                    RunEnd::ShellGone(status) => gone = Some(status),
                    RunEnd::Closed => closing = true,
                },
                None => closing = true,
            },
            () = shell.tree.exited() => gone = Some(shell.tree.finish(agent.grace).await),
            // Output of background jobs between commands belongs to no
            // command; reading it keeps their writes from blocking.
            read = read_some(&shell.stdout, &mut discard_out), if shell.stdout_open => {
                shell.stdout_open = matches!(read, Ok(n) if n > 0);
            }
            read = read_some(&shell.stderr, &mut discard_err), if shell.stderr_open => {
                shell.stderr_open = matches!(read, Ok(n) if n > 0);
            }
        }
    }
    let status = match gone {
        Some(status) => status,
        None => end(agent, &mut shell).await,
    };
    // What the session's commands left running ends with it.
    for cgroup in shell.cgroup.iter().chain(&shell.jobs) {
        cgroup.kill();
        cgroup.emptied(agent.grace).await;
    }
    // Commands queued behind the one that ended the session.
    runs.close();
    while let Some(run) = runs.recv().await {
        run.out
            .error(ErrorCode::UnknownOperation, "the session has ended")
            .await;
    }
    out.message(AgentMessage::Exit(exit_status(status, started, !closing)))
        .await;
}

fn exit_status(status: std::process::ExitStatus, started: Instant, natural: bool) -> ExitStatus {
    ExitStatus {
        code: status.code(),
        signal: status.signal(),
        cancelled: !natural,
        duration_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    }
}

/// Starts the shell with its three pipes.
async fn start(agent: &Agent, params: &SessionParams) -> Result<Shell, (ErrorCode, String)> {
    let cwd = agent.workdir(params.cwd.as_deref())?;
    let shell = match &params.shell {
        Some(shell) => shell.clone(),
        None => ["bash", "sh"]
            .iter()
            .find_map(|name| agent.env.which(name))
            .map(|p| p.to_string_lossy().into_owned())
            .ok_or((
                ErrorCode::Unsupported,
                "no shell in this workspace: neither `bash` nor `sh` is on PATH".to_string(),
            ))?,
    };
    let io_err = |what: &str, e: io::Error| (ErrorCode::Io, format!("{what}: {e}"));
    let (out_r, out_w) = crate::fdio::pipe().map_err(|e| io_err("stdout pipe", e))?;
    let (err_r, err_w) = crate::fdio::pipe().map_err(|e| io_err("stderr pipe", e))?;
    let (status_r, status_w) = crate::fdio::pipe().map_err(|e| io_err("status pipe", e))?;
    let cgroup = agent.command_cgroup();
    let (mut command, holding) =
        crate::tree::command(agent, std::slice::from_ref(&shell), cgroup.is_some())
            .map_err(|e| io_err("shepherd", e))?;
    command
        .current_dir(cwd)
        .env_clear()
        .envs(agent.env.compose(&params.env))
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    berth_exec::pass_as_fd(&mut command, status_w, STATUS_FD);
    berth_exec::nice_on_spawn(&mut command, agent.command_nice);
    if let Some(cgroup) = &cgroup {
        cgroup.enter_on_spawn(&mut command);
    }
    // The write ends then live in the shell (and its shepherd) only, so
    // they report end of file when it is gone.
    let mut tree = Tree::spawn(command, holding, &shell).await?;
    let stdin = tree.child.stdin.take().ok_or((
        ErrorCode::Spawn,
        format!("`{shell}` started without a stdin"),
    ))?;
    let watch = |fd: OwnedFd, what: &str| crate::fdio::register(fd).map_err(|e| io_err(what, e));
    Ok(Shell {
        pid: tree.pid,
        group: tree.group,
        tree,
        stdin,
        stdout: watch(out_r, "stdout")?,
        stderr: watch(err_r, "stderr")?,
        status: watch(status_r, "status")?,
        status_buf: Vec::new(),
        stdout_open: true,
        stderr_open: true,
        cgroup,
        jobs: Vec::new(),
        mark: None,
    })
}

/// Reads what is in the pipe right now, without waiting.
/// Delivers output up to a limit and counts what is dropped beyond it.
struct Bounded {
    stream: Stream,
    left: u64,
    dropped: u64,
}

impl Bounded {
    fn new(stream: Stream, limit: Option<u64>) -> Self {
        Bounded {
            stream,
            left: limit.unwrap_or(u64::MAX),
            dropped: 0,
        }
    }

    async fn deliver(&mut self, out: &Outbox, data: &[u8]) {
        let keep = self.left.min(data.len() as u64) as usize;
        self.left -= keep as u64;
        self.dropped += (data.len() - keep) as u64;
        if keep > 0 {
            out.send(
                AgentMessage::Output {
                    stream: self.stream,
                },
                &data[..keep],
            )
            .await;
        }
    }
}

fn marker() -> String {
    // RandomState is seeded from the OS; hashing the time under it gives
    // an unpredictable marker without a random-number crate.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("berth{:016x}", hasher.finish())
}

/// `text` as one single-quoted shell word.
fn single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs one command to its end.
async fn execute(
    agent: &Agent,
    shell: &mut Shell,
    mut run: SessionRun,
    session_controls: &mut Controls,
) -> RunEnd {
    let started = Instant::now();
    let marker = marker();
    let script = format!(
        "command eval {} {STATUS_FD}>&- </dev/null; printf '%s %d\\n' {marker} \"$?\" >&{STATUS_FD}\n",
        single_quoted(&run.command)
    );
    let mut stdout = Bounded::new(Stream::Stdout, run.output_limit);
    let mut stderr = Bounded::new(Stream::Stderr, run.output_limit);
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let mut status_chunk = [0u8; 256];
    let mut controls_open = true;
    let mut timed_out = false;
    let mut cancelled = false;
    let mut closing = false;
    let deadline = run
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    // When set, the command was interrupted and is killed at this time if
    // it is still running.
    let mut kill_at: Option<tokio::time::Instant> = None;
    // Whether the command's processes were killed once already: a command
    // that outlives that (a loop in the shell that starts them anew) runs
    // in the shell, which is then ended with the session.
    let mut killed = false;
    // A signal that found no process of the command yet, and when to try
    // again.
    let mut pending: Option<(i32, tokio::time::Instant, u32)> = None;

    // The command runs in a cgroup of its own: the shell enters it while
    // the command runs (and forks it there), and leaves it once it is done.
    let cgroup = command_cgroup(agent, shell);
    // Under a shepherd, what appears beneath it from now on is the
    // command's.
    shell.mark = shell.tree.mark();
    if shell.stdin.write_all(script.as_bytes()).await.is_err() {
        let status = shell.tree.finish(agent.grace).await;
        run.out
            .error(ErrorCode::Io, "the session's shell has exited")
            .await;
        return RunEnd::ShellGone(status);
    }
    let code = loop {
        tokio::select! {
            read = read_some(&shell.stdout, &mut out_buf), if shell.stdout_open => match read {
                Ok(n) if n > 0 => stdout.deliver(&run.out, &out_buf[..n]).await,
                _ => shell.stdout_open = false,
            },
            read = read_some(&shell.stderr, &mut err_buf), if shell.stderr_open => match read {
                Ok(n) if n > 0 => stderr.deliver(&run.out, &err_buf[..n]).await,
                _ => shell.stderr_open = false,
            },
            read = read_some(&shell.status, &mut status_chunk) => match read {
                Ok(n) if n > 0 => {
                    shell.status_buf.extend_from_slice(&status_chunk[..n]);
                    if let Some(code) = take_status(&mut shell.status_buf, &marker) {
                        break Some(code);
                    }
                }
                // The shell is gone.
                _ => break None,
            },
            // Under a shepherd, which holds the status pipe too.
            () = shell.tree.exited(), if shell.tree.is_held() => break None,
            control = run.controls.recv(), if controls_open => match control {
                Some(Control::Signal(signal)) => {
                    if !signal_command(shell, signal) {
                        pending = Some((signal, tokio::time::Instant::now() + RETRY, RETRIES));
                    }
                }
                Some(Control::Cancel) => {
                    cancelled = true;
                    interrupt(agent, shell, &mut kill_at, &mut pending);
                }
                Some(_) => {}
                None => {
                    controls_open = false;
                    cancelled = true;
                    interrupt(agent, shell, &mut kill_at, &mut pending);
                }
            },
            control = session_controls.recv(), if !closing => match control {
                Some(Control::Signal(signal)) => crate::signal_group(shell.group, signal),
                Some(Control::Cancel) | None => {
                    closing = true;
                    cancelled = true;
                    // Ending the shell ends the command; the status pipe
                    // then reports end of file.
                    crate::signal_group(shell.group, Signal::TERM.as_raw());
                    crate::signal_group(shell.group, Signal::HUP.as_raw());
                    kill_at.get_or_insert(tokio::time::Instant::now() + agent.grace);
                }
                Some(_) => {}
            },
            () = agent.shutdown.cancelled(), if !closing => {
                closing = true;
                cancelled = true;
                crate::signal_group(shell.group, Signal::TERM.as_raw());
                kill_at.get_or_insert(tokio::time::Instant::now() + agent.grace);
            }
            () = sleep_until(deadline), if !timed_out && kill_at.is_none() => {
                timed_out = true;
                interrupt(agent, shell, &mut kill_at, &mut pending);
            }
            () = sleep_until(pending.map(|(_, at, _)| at)) => {
                // Sent before the command had a process of its own (the
                // shell had not forked it yet): send it again once it has,
                // for a while (a built-in never gets one).
                if let Some((signal, _, tries)) = pending.take()
                    && !signal_command(shell, signal)
                    && tries > 0
                {
                    pending = Some((signal, tokio::time::Instant::now() + RETRY, tries - 1));
                }
            }
            () = sleep_until(kill_at) => {
                pending = None;
                kill_at = None;
                if closing || killed || shell.command_processes().is_empty() {
                    // Only the shell is left to end: the command is a
                    // built-in (a `while :; do :; done`), or a loop of
                    // them that starts processes anew, which no signal the
                    // shell survives can stop, so the session ends.
                    shell.kill();
                } else {
                    shell.kill_command(agent.grace).await;
                    killed = true;
                    kill_at = Some(tokio::time::Instant::now() + agent.grace);
                }
            }
        }
    };
    if let Some(cgroup) = cgroup {
        leave(agent, shell, cgroup, timed_out || cancelled).await;
    }
    // A command that was ended ends with everything it started, however
    // it detached; one that finished keeps its background jobs until the
    // session ends.
    if let Some(mark) = shell.mark.take()
        && (timed_out || cancelled)
        && code.is_some()
    {
        shell.tree.kill_since(&mark, shell.pid, agent.grace).await;
    }
    // The status came after every write of the command had completed, so
    // what the pipes hold now is the rest of its output.
    while let Some(n) = read_now(&shell.stdout, &mut out_buf) {
        stdout.deliver(&run.out, &out_buf[..n]).await;
    }
    while let Some(n) = read_now(&shell.stderr, &mut err_buf) {
        stderr.deliver(&run.out, &err_buf[..n]).await;
    }
    let mut status = ExitStatus {
        code,
        timed_out,
        cancelled,
        stdout_dropped: stdout.dropped,
        stderr_dropped: stderr.dropped,
        ..Default::default()
    };
    let end = match code {
        Some(_) if closing => RunEnd::Closed,
        Some(_) => RunEnd::Finished,
        None => {
            let shell_status = shell.tree.finish(agent.grace).await;
            status.code = shell_status.code();
            status.signal = shell_status.signal();
            if closing {
                RunEnd::Closed
            } else {
                RunEnd::ShellGone(shell_status)
            }
        }
    };
    status.duration_ms = started.elapsed().as_millis() as u64;
    run.out.message(AgentMessage::Exit(status)).await;
    end
}

/// A cgroup of its own for the next command of the session, which the
/// shell has entered; `None` without cgroups, and then the command's
/// processes stay in the session's.
fn command_cgroup(agent: &Agent, shell: &Shell) -> Option<berth_exec::CommandCgroup> {
    shell.cgroup.as_ref()?;
    let cgroup = agent.command_cgroup()?;
    cgroup.adopt(shell.pid).ok()?;
    Some(cgroup)
}

/// The shell leaves a command's cgroup once the command is done. A command
/// that was ended (a timeout, a cancel) ends with everything it started,
/// however it detached; one that finished keeps its background jobs until
/// the session ends.
async fn leave(agent: &Agent, shell: &mut Shell, cgroup: berth_exec::CommandCgroup, ended: bool) {
    if let Some(home) = &shell.cgroup {
        let _ = home.adopt(shell.pid);
    }
    if ended {
        cgroup.kill();
        cgroup.emptied(agent.grace).await;
    }
    // Dropping an emptied cgroup removes it.
    shell.jobs.retain(berth_exec::CommandCgroup::populated);
    if cgroup.populated() {
        shell.jobs.push(cgroup);
    }
}

/// How soon, and how many times, a signal that found no process of the
/// command is sent again.
const RETRY: Duration = Duration::from_millis(10);
const RETRIES: u32 = 100;

/// SIGINT to the group (the shell survives it), SIGKILL after the grace.
fn interrupt(
    agent: &Agent,
    shell: &Shell,
    kill_at: &mut Option<tokio::time::Instant>,
    pending: &mut Option<(i32, tokio::time::Instant, u32)>,
) {
    if !signal_command(shell, Signal::INT.as_raw()) {
        *pending = Some((
            Signal::INT.as_raw(),
            tokio::time::Instant::now() + RETRY,
            RETRIES,
        ));
    }
    kill_at.get_or_insert(tokio::time::Instant::now() + agent.grace);
}

/// A signal for the running command. SIGINT goes to the whole group (the
/// shell ignores it through its trap); any other signal goes to every
/// member of the group but the shell. Returns whether the command had a
/// process of its own to receive it.
fn signal_command(shell: &Shell, signal: i32) -> bool {
    let members = shell.command_processes();
    if signal == Signal::INT.as_raw() {
        crate::signal_group(shell.group, signal);
        // A member that is still a copy of the shell (forked, not yet
        // running the command) swallows SIGINT through the shell's trap;
        // only one running something else has surely been interrupted.
        let shell_cmdline = crate::procfs::cmdline(shell.pid as i32);
        return members
            .iter()
            .any(|&pid| crate::procfs::cmdline(pid).is_some_and(|c| Some(c) != shell_cmdline));
    }
    let Some(signal) = Signal::from_named_raw(signal) else {
        return true;
    };
    for pid in &members {
        if let Some(pid) = Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
    !members.is_empty()
}

/// Takes the status line for `marker` out of `buf`, if it has arrived.
fn take_status(buf: &mut Vec<u8>, marker: &str) -> Option<i32> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let mut consumed = 0;
    let mut found = None;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        consumed += line.len();
        if let Some(code) = line.trim_end().strip_prefix(marker) {
            found = code.trim().parse().ok();
            break;
        }
    }
    buf.drain(..consumed);
    found
}

/// Closes the session: SIGTERM and SIGHUP to its group, SIGKILL after the
/// grace period; under a shepherd, to every process beneath it too.
async fn end(agent: &Agent, shell: &mut Shell) -> std::process::ExitStatus {
    crate::signal_group(shell.group, Signal::HUP.as_raw());
    if shell.tree.is_held() {
        return shell.tree.finish(agent.grace).await;
    }
    crate::signal_group(shell.group, Signal::TERM.as_raw());
    if tokio::time::timeout(agent.grace, shell.tree.exited())
        .await
        .is_err()
    {
        crate::signal_group(shell.group, Signal::KILL.as_raw());
    }
    let status = shell.tree.finish(agent.grace).await;
    crate::signal_group(shell.group, Signal::KILL.as_raw());
    status
}

impl Shell {
    /// The running command's processes: under a shepherd, those beneath
    /// it since the command started, but the shell; otherwise the shell's
    /// group but the shell.
    fn command_processes(&self) -> Vec<i32> {
        if let Some(mark) = &self.mark {
            return self.tree.since(mark, self.pid);
        }
        crate::procfs::group_members(self.group as i32, self.pid as i32)
            .into_iter()
            .filter(|&pid| pid != self.group as i32)
            .collect()
    }

    /// SIGKILL to the running command's processes: under a shepherd, all
    /// at once (stopped first, so none forks past it), however they
    /// detached.
    async fn kill_command(&self, within: Duration) {
        match &self.mark {
            Some(mark) => self.tree.kill_since(mark, self.pid, within).await,
            None => {
                signal_command(self, Signal::KILL.as_raw());
            }
        }
    }

    /// SIGKILL to the shell's group, but its shepherd, which then ends
    /// what is left.
    fn kill(&self) {
        if !self.tree.is_held() {
            crate::signal_group(self.group, Signal::KILL.as_raw());
            return;
        }
        for pid in crate::procfs::group_members(self.group as i32, self.group as i32) {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_matched_by_marker_only() {
        let mut buf = b"other 3\nberthX 7\nberthY".to_vec();
        assert_eq!(take_status(&mut buf, "berthX"), Some(7));
        assert_eq!(buf, b"berthY");
        assert_eq!(take_status(&mut buf, "berthY"), None);
        buf.extend_from_slice(b" 0\n");
        assert_eq!(take_status(&mut buf, "berthY"), Some(0));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(single_quoted("echo 'a'"), r"'echo '\''a'\'''");
        assert_ne!(marker(), marker());
    }
}
