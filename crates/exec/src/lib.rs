//! Runs one command as a process tree that berth can always end.
//!
//! The command gets exactly the environment it is given (nothing is
//! inherited), runs in its own process group, and has its stdout and stderr
//! streamed as [`ExecEvent`]s, in order per stream, bounded per stream with
//! an exact count of what was dropped. A timeout, a cancel, or the receiver
//! of the events going away ends the whole group: SIGTERM, a grace period,
//! then SIGKILL. Given a cgroup of its own ([`cgroup`]), the command's
//! process enters it before it runs, and an ending ends everything in the
//! cgroup the same way: whatever the command started, however it
//! detached. Where there are no cgroups, a [`shepherd`] holds the
//! command's processes together instead, to the same end. The last event
//! is always [`ExecEvent::Exit`], sent once the command and (when it was
//! ended) everything it started are gone.
//!
//! Used by the `local` runtime in the provider and by the in-workspace agent.

pub mod cgroup;
pub mod procfs;
pub mod shepherd;

pub use cgroup::{Cgroups, CommandCgroup};
pub use shepherd::Shepherd;

use berth_proto::{ExecEvent, ExitStatus, Stream};
use rustix::process::{Pid, Signal, kill_process_group};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Grace period between SIGTERM and SIGKILL when none is given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// How long output is still collected after the command itself exited,
/// from background processes that kept its stdout or stderr open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);

const READ_CHUNK: usize = 64 * 1024;

/// What to run and how.
#[derive(Debug)]
pub struct Spawn {
    pub argv: Vec<String>,
    /// Absolute working directory, already checked by the caller.
    pub cwd: PathBuf,
    /// The complete environment; nothing is inherited.
    pub env: Vec<(String, String)>,
    pub stdin: Stdin,
    pub timeout: Option<Duration>,
    /// Bytes delivered per stream; the rest is counted and dropped.
    pub output_limit: Option<u64>,
    /// Time between SIGTERM and SIGKILL when the command must end.
    pub grace: Duration,
    /// The cgroup the command runs in, if it has one of its own.
    pub cgroup: Option<CommandCgroup>,
    /// The shepherd the command runs under, for a caller without cgroups.
    pub shepherd: Option<Shepherd>,
    /// The nice value the command runs at (and what it starts, which
    /// inherits it), set before it runs anything; `None` keeps the
    /// caller's. A process without CAP_SYS_NICE cannot lower it again.
    pub nice: Option<i32>,
}

/// What the command reads on stdin.
#[derive(Debug, Default)]
pub enum Stdin {
    /// Nothing: stdin is `/dev/null`.
    #[default]
    Null,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// Chunks as they come; end of file when the sender is dropped.
    Stream(mpsc::Receiver<Vec<u8>>),
}

/// A command that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("empty command")]
    EmptyCommand,
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A started command.
#[derive(Debug)]
pub struct Running {
    /// The command's pid, which is also its process group id (under a
    /// shepherd, the shepherd's).
    pub pid: u32,
    /// Output as produced, then `Exit`. Dropping this ends the command.
    pub events: mpsc::Receiver<ExecEvent>,
    /// What the shepherd says about starting the command, if it has one.
    report: Option<shepherd::Report>,
}

impl Running {
    /// Waits until the command has started: an error when its program
    /// could not be run. Without a shepherd that was known at once.
    pub async fn started(&mut self) -> Result<(), SpawnError> {
        match self.report.take() {
            Some(report) => report.wait().await,
            None => Ok(()),
        }
    }
}

/// Makes `command`'s process take the nice value `nice` before it runs
/// anything, so that no process it starts is ever at another.
#[expect(
    unsafe_code,
    reason = "a pre_exec hook makes one system call between fork and exec"
)]
pub fn nice_on_spawn(command: &mut Command, nice: i32) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setpriority is async-signal-safe and the hook allocates
    // nothing.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            rustix::process::setpriority_process(None, nice)?;
            Ok(())
        });
    }
}

/// Makes `fd` the descriptor `target` of `command`'s process, open across
/// exec; `command` keeps `fd` open until it is dropped.
#[expect(
    unsafe_code,
    reason = "a pre_exec hook makes two system calls between fork and exec"
)]
pub fn pass_as_fd(command: &mut Command, fd: std::os::fd::OwnedFd, target: i32) {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the hook only calls dup2/fcntl on descriptors that are open
    // in the child (inherited from the parent), and allocates nothing.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            let raw = fd.as_raw_fd();
            if raw == target {
                // dup2 onto itself keeps close-on-exec; clear it instead.
                rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())?;
            } else {
                let mut slot = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(target));
                rustix::io::dup2(&fd, &mut slot)?;
            }
            Ok(())
        });
    }
}

/// Starts a command. Must be called within a tokio runtime.
pub fn spawn(spawn: Spawn, cancel: CancellationToken) -> Result<Running, SpawnError> {
    let (program, args) = spawn.argv.split_first().ok_or(SpawnError::EmptyCommand)?;
    let spawn_error = |source| SpawnError::Spawn {
        program: program.clone(),
        source,
    };
    let (mut command, mut link) = match &spawn.shepherd {
        Some(shepherd) => {
            let (command, link) = shepherd.command(&spawn.argv).map_err(spawn_error)?;
            (command, Some(link))
        }
        None => {
            let mut command = Command::new(program);
            command.args(args);
            (command, None)
        }
    };
    command
        .current_dir(&spawn.cwd)
        .env_clear()
        .envs(spawn.env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(match spawn.stdin {
            Stdin::Null => Stdio::null(),
            _ => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cgroup) = &spawn.cgroup {
        cgroup.enter_on_spawn(&mut command);
    }
    if let Some(nice) = spawn.nice {
        nice_on_spawn(&mut command, nice);
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    // The shepherd's end of its socket lives in the shepherd only.
    drop(command);
    let (report, link) = match link.take() {
        Some(link) => {
            let (report, link) = link.split(program).map_err(spawn_error)?;
            (Some(report), Some(link))
        }
        None => (None, None),
    };
    let pid = child.id().unwrap_or_default();
    let (events, receiver) = mpsc::channel(64);

    if let Some(stdin) = child.stdin.take() {
        tokio::spawn(feed_stdin(stdin, spawn.stdin));
    }
    let stop_reading = CancellationToken::new();
    let output = Output {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        limit: spawn.output_limit.unwrap_or(u64::MAX),
        events: events.clone(),
        stop: stop_reading.clone(),
    };
    let reader = Reader {
        task: tokio::spawn(output.forward()),
        stop: stop_reading,
    };
    let ending = Ends {
        timeout: spawn.timeout,
        grace: spawn.grace,
        cgroup: spawn.cgroup,
        shepherd: link,
    };
    tokio::spawn(supervise(child, pid, reader, events, ending, cancel));
    Ok(Running {
        pid,
        events: receiver,
        report,
    })
}

async fn feed_stdin(mut pipe: tokio::process::ChildStdin, stdin: Stdin) {
    // A command that exits without reading its input closes the pipe; the
    // resulting write error is expected and not the command's failure.
    match stdin {
        Stdin::Null => {}
        Stdin::Bytes(bytes) => {
            let _ = pipe.write_all(&bytes).await;
        }
        Stdin::Stream(mut chunks) => {
            while let Some(chunk) = chunks.recv().await {
                if pipe.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The command's stdout and stderr, forwarded from one task that reads
/// stdout first whenever both pipes have output, so that a line printed and
/// then an error arrive in that order. (Two reading tasks race, and a log
/// showed the error first.) Two pipes keep no order between them; this
/// keeps the common one.
struct Output {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// Bytes delivered per stream; the rest is counted and dropped.
    limit: u64,
    events: mpsc::Sender<ExecEvent>,
    /// Ends the forwarding while background processes still hold a pipe.
    stop: CancellationToken,
}

/// The task forwarding a command's output, and how to end it early.
struct Reader {
    task: JoinHandle<[u64; 2]>,
    stop: CancellationToken,
}

impl Output {
    /// Forwards until both pipes are closed or reading is stopped; returns
    /// how many bytes of each stream were dropped beyond the limit.
    async fn forward(mut self) -> [u64; 2] {
        let mut delivered = [0u64; 2];
        let mut dropped = [0u64; 2];
        let mut out_buf = vec![0u8; READ_CHUNK];
        let mut err_buf = vec![0u8; READ_CHUNK];
        while self.stdout.is_some() || self.stderr.is_some() {
            let (stream, read) = tokio::select! {
                biased;
                read = read_open(&mut self.stdout, &mut out_buf), if self.stdout.is_some() => {
                    (Stream::Stdout, read)
                }
                read = read_open(&mut self.stderr, &mut err_buf), if self.stderr.is_some() => {
                    (Stream::Stderr, read)
                }
                () = self.stop.cancelled() => break,
            };
            let (slot, buf) = match stream {
                Stream::Stdout => (0, &out_buf),
                Stream::Stderr => (1, &err_buf),
            };
            let n = match read {
                Ok(0) | Err(_) => {
                    match stream {
                        Stream::Stdout => self.stdout = None,
                        Stream::Stderr => self.stderr = None,
                    }
                    continue;
                }
                Ok(n) => n,
            };
            let room = self.limit.saturating_sub(delivered[slot]).min(n as u64) as usize;
            dropped[slot] += (n - room) as u64;
            if room > 0 {
                delivered[slot] += room as u64;
                let event = ExecEvent::output(stream, buf[..room].to_vec());
                tokio::select! {
                    sent = self.events.send(event) => if sent.is_err() {
                        break;
                    },
                    () = self.stop.cancelled() => break,
                }
            }
        }
        dropped
    }
}

/// Reads from a pipe that is still open (the caller checks).
async fn read_open(
    pipe: &mut Option<impl AsyncRead + Unpin>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => Ok(0),
    }
}

/// How a command is ended: past its timeout, with this grace between
/// SIGTERM and SIGKILL, everything in its cgroup or under its shepherd too.
struct Ends {
    timeout: Option<Duration>,
    grace: Duration,
    cgroup: Option<CommandCgroup>,
    shepherd: Option<shepherd::Link>,
}

#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Exited,
    TimedOut,
    Cancelled,
}

async fn supervise(
    mut child: Child,
    pid: u32,
    reader: Reader,
    events: mpsc::Sender<ExecEvent>,
    ends: Ends,
    cancel: CancellationToken,
) {
    let Ends {
        timeout,
        grace,
        cgroup,
        shepherd,
    } = ends;
    let started = Instant::now();
    let deadline = async {
        match timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let mut shepherd = shepherd;
    let listen = async {
        match shepherd.as_mut() {
            Some(link) => link.listen().await,
            None => std::future::pending().await,
        }
    };
    let (status, ending) = tokio::select! {
        status = child.wait() => (status.ok(), Ending::Exited),
        () = deadline => (None, Ending::TimedOut),
        () = cancel.cancelled() => (None, Ending::Cancelled),
        () = events.closed() => (None, Ending::Cancelled),
        never = listen => match never {},
    };
    let status = match status {
        Some(status) => status,
        None => match shepherd.as_mut() {
            Some(link) => shepherd::end(&mut child, pid, grace, link).await,
            None => end_tree(&mut child, pid, grace, cgroup.as_ref()).await,
        },
    };
    let unsupervised = match shepherd {
        Some(link) => link.settle().await,
        None => false,
    };

    let drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
    let Reader { mut task, stop } = reader;
    let dropped = match tokio::time::timeout_at(drain_until, &mut task).await {
        Ok(forwarded) => forwarded,
        // Background processes still hold a pipe: stop reading, and leave
        // them running, as a shell would.
        Err(_) => {
            stop.cancel();
            task.await
        }
    };
    let dropped = dropped.unwrap_or_default();

    if unsupervised {
        let note = UNSUPERVISED.as_bytes().to_vec();
        let _ = events.send(ExecEvent::output(Stream::Stderr, note)).await;
    }
    let exit = ExitStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out: ending == Ending::TimedOut,
        cancelled: ending == Ending::Cancelled,
        stdout_dropped: dropped[0],
        stderr_dropped: dropped[1],
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let _ = events.send(ExecEvent::Exit(exit)).await;
}

/// Said on stderr, after the command's own output, when the command
/// killed the shepherd that held its processes: the command ended as its
/// shepherd did (SIGKILL), and everything it started was killed at once.
pub const UNSUPERVISED: &str = "berth: the command killed the process that held it (its shepherd): \
     it and every process it started were killed at once\n";

/// How long killed processes may take to leave their cgroup.
const KILLED_LEAVE: Duration = Duration::from_secs(5);

/// SIGTERM to the whole group and everything in the command's cgroup,
/// then, after the grace period or once all of it is gone, SIGKILL to
/// whatever is left of either. Returns the command's own exit status.
async fn end_tree(
    child: &mut Child,
    pid: u32,
    grace: Duration,
    cgroup: Option<&CommandCgroup>,
) -> std::process::ExitStatus {
    signal_group(pid, Signal::TERM);
    if let Some(cgroup) = cgroup {
        cgroup.signal(Signal::TERM);
    }
    let until = tokio::time::Instant::now() + grace;
    let status = match tokio::time::timeout_at(until, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => None,
    };
    if let Some(cgroup) = cgroup {
        cgroup
            .emptied(until.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        cgroup.kill();
    }
    // Whatever of the group survived the leader goes too.
    signal_group(pid, Signal::KILL);
    let status = match status {
        Some(status) => status,
        None => match child.wait().await {
            Ok(status) => status,
            // The child was reaped by someone else; report it as killed.
            Err(_) => std::process::ExitStatus::from_raw(Signal::KILL.as_raw()),
        },
    };
    if let Some(cgroup) = cgroup {
        cgroup.emptied(KILLED_LEAVE).await;
    }
    status
}

/// Sends a signal to the process group led by `pid`. A group already gone
/// is not an error.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = kill_process_group(pid, signal);
    }
}
