//! A shepherd: what holds a command's processes together where there are
//! no cgroups. The shepherd is a process that starts the command and is
//! its child subreaper, so every process the command orphans, however it
//! detached (a double fork, `setsid`), comes to the shepherd and never
//! past it: the shepherd's descendants in `/proc` are exactly the
//! command's processes, whatever they call themselves.
//!
//! The shepherd is the command as its caller sees it: it leads the
//! command's process group (the command stays in it), passes its stdio,
//! environment, working directory, limits and nice value on, survives the
//! signals sent to the group, and when the command's own process exits it
//! exits the same way (the same code, or killed by the same signal).
//! What the command left running then comes to the caller's subreaper,
//! as it would without a shepherd.
//!
//! Ending the command (a timeout, a cancel) is the caller's work, through
//! a socket only the caller holds (the shepherd's descriptor 3, closed
//! on exec): the caller first asks the shepherd to stay, so no orphan
//! escapes past it while the command ends, then signals every descendant
//! (SIGTERM, the grace period, then SIGSTOP and SIGKILL until none is
//! left), then lets it go. The caller walks the tree itself, so a
//! command that stops its shepherd still ends.
//!
//! What a shepherd cannot prevent: a command may SIGKILL (or trace) its
//! own shepherd, which runs as the same user, and what it started then
//! belongs to the caller's subreaper like anything a finished command
//! left. The shepherd holds nothing the command does not have: its
//! environment is the command's, and its socket only ever carries the
//! caller's word.

use crate::procfs;
use rustix::process::{Pid, Signal, WaitOptions};
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};

/// The descriptor on which the shepherd finds its socket to the caller.
const LINK_FD: i32 = 3;
/// Asks the shepherd to stay until the caller closes the socket.
const HOLD: u8 = b'h';
/// How often the ending looks at what is left of the command.
const POLL: Duration = Duration::from_millis(5);
/// How long killed processes (and then the shepherd) may take to go.
const KILLED_LEAVE: Duration = Duration::from_secs(5);

/// How to start a shepherd: `program` with `args` runs [`main`] with the
/// command's argv as its remaining arguments.
#[derive(Debug, Clone)]
pub struct Shepherd {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// The caller's end of a shepherd's socket, before the shepherd has
/// started the command.
#[derive(Debug)]
pub(crate) struct Starting(UnixStream);

/// What a shepherd says about starting its command.
#[derive(Debug)]
pub(crate) struct Report {
    program: String,
    socket: OwnedReadHalf,
}

/// The caller's word to a running shepherd.
#[derive(Debug)]
pub(crate) struct Link(OwnedWriteHalf);

impl Shepherd {
    /// A command that runs `argv` under a shepherd, with the shepherd's
    /// socket; [`Link::started`] says whether the command started.
    pub(crate) fn command(&self, argv: &[String]) -> std::io::Result<(Command, Starting)> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut command = Command::new(&self.program);
        command.args(&self.args).args(argv);
        crate::pass_as_fd3(&mut command, OwnedFd::from(theirs));
        Ok((command, Starting(ours)))
    }
}

impl Starting {
    /// The shepherd's report on starting `program`, and the link that
    /// holds and releases it.
    pub(crate) fn split(self, program: &str) -> std::io::Result<(Report, Link)> {
        self.0.set_nonblocking(true)?;
        let (socket, link) = tokio::net::UnixStream::from_std(self.0)?.into_split();
        let report = Report {
            program: program.to_string(),
            socket,
        };
        Ok((report, Link(link)))
    }
}

impl Report {
    /// Waits for the shepherd to say whether the command started. Only an
    /// error it names is one: a shepherd that ends without a word (one
    /// the command's ending killed) leaves the exit to say what happened.
    /// Nothing here blocks: a command may have stopped its shepherd.
    pub(crate) async fn wait(mut self) -> Result<(), crate::SpawnError> {
        let mut report = [0u8; 4];
        match self.socket.read_exact(&mut report).await {
            Ok(_) if report != [0; 4] => Err(crate::SpawnError::Spawn {
                program: self.program,
                source: std::io::Error::from_raw_os_error(i32::from_le_bytes(report)),
            }),
            _ => Ok(()),
        }
    }
}

/// Ends the command of the shepherd `child` (whose pid is `pid`) and
/// everything it started: SIGTERM to every descendant, up to `grace` for
/// them to go, then SIGSTOP and SIGKILL to what is left until nothing is.
/// Returns how the command's own process ended, as the shepherd reports it.
pub(crate) async fn end(
    child: &mut Child,
    pid: u32,
    grace: Duration,
    link: Link,
) -> std::process::ExitStatus {
    // A shepherd gone already has reported its command's end.
    let _ = link.0.try_write(&[HOLD]);
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // Until it is waited for, `pid` is the shepherd's, so its descendants
    // are the command's processes.
    let pid = pid as i32;
    signal_all(&descendants(pid), Signal::TERM);
    let until = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < until && !descendants(pid).is_empty() {
        tokio::time::sleep(POLL).await;
    }
    // Stopped processes cannot fork; each pass finds what forked before it
    // was stopped, among the descendants of the shepherd.
    let until = tokio::time::Instant::now() + KILLED_LEAVE;
    loop {
        let left = descendants(pid);
        if left.is_empty() || tokio::time::Instant::now() >= until {
            break;
        }
        signal_all(&left, Signal::STOP);
        signal_all(&left, Signal::KILL);
        tokio::time::sleep(POLL).await;
    }
    drop(link);
    // The command may have stopped its shepherd.
    signal_all(&HashSet::from([pid]), Signal::CONT);
    match tokio::time::timeout(KILLED_LEAVE, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            let _ = child.start_kill();
            match child.wait().await {
                Ok(status) => status,
                Err(_) => std::process::ExitStatus::from_raw(Signal::KILL.as_raw()),
            }
        }
    }
}

/// The live descendants of `root`, not counting it.
fn descendants(root: i32) -> HashSet<i32> {
    let all = procfs::all().unwrap_or_default();
    let mut tree = HashSet::from([root]);
    // To a fixed point: a parent may be listed after its children.
    loop {
        let before = tree.len();
        tree.extend(
            all.iter()
                .filter(|p| p.state != 'Z' && tree.contains(&p.ppid))
                .map(|p| p.pid)
                .collect::<Vec<_>>(),
        );
        if tree.len() == before {
            tree.remove(&root);
            return tree;
        }
    }
}

fn signal_all(pids: &HashSet<i32>, signal: Signal) {
    for pid in pids {
        if let Some(pid) = Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// The signals a command's process group may be sent that would end or
/// stop the shepherd; it handles them, doing nothing (a handler, unlike
/// an ignored signal, is not passed on to the command).
const SURVIVED: [i32; 15] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];

/// The shepherd itself: runs `argv` (program first) and exits as it
/// does. Its caller passes the socket as descriptor 3.
pub fn main(argv: &[OsString]) -> i32 {
    let Some(link) = inherited_link() else {
        eprintln!("berth shepherd: no socket at descriptor {LINK_FD}");
        return 126;
    };
    let mut link = UnixStream::from(link);
    let Some((program, args)) = argv.split_first() else {
        let _ = link.write_all(&libc::EINVAL.to_le_bytes());
        return 126;
    };
    // Orphans of the command come here.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in SURVIVED {
        let _ = signal_hook::flag::register(signal, flag.clone());
    }
    let leader = match std::process::Command::new(program).args(args).spawn() {
        Ok(child) => child.id() as i32,
        Err(err) => {
            let errno = err.raw_os_error().unwrap_or(libc::EIO);
            let _ = link.write_all(&errno.to_le_bytes());
            return 127;
        }
    };
    if link.write_all(&0i32.to_le_bytes()).is_err() {
        // The caller is gone: end the command as it would have.
        signal_all(&HashSet::from([leader]), Signal::KILL);
    }
    release_stdio();
    let status = wait_for(leader);
    if held(&mut link) {
        // Until the caller is done ending the command's processes.
        let mut rest = [0u8; 64];
        loop {
            match link.read(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    while let Ok(Some(_)) = rustix::process::waitpid(None, WaitOptions::NOHANG) {}
    exit_as(status)
}

/// Descriptor 3, made close-on-exec so the command never has it.
#[expect(
    unsafe_code,
    reason = "owning the descriptor the caller passed, known only by number"
)]
fn inherited_link() -> Option<OwnedFd> {
    // SAFETY: borrowed only to ask whether it is open.
    let borrowed = unsafe { rustix::fd::BorrowedFd::borrow_raw(LINK_FD) };
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC).ok()?;
    // SAFETY: it is open, the caller passed it for this alone, and nothing
    // else in this process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(LINK_FD) })
}

/// Points the shepherd's stdio at /dev/null, so the command's pipes end
/// when the command's processes are done with them.
#[expect(
    unsafe_code,
    reason = "dup2 onto the standard descriptors, known only by number"
)]
fn release_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: descriptors 0 to 2 are this process's own for its whole
        // life; ManuallyDrop keeps them from being closed here.
        let mut target = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let _ = rustix::io::dup2(&null, &mut target);
    }
}

/// Reaps children (the command and its orphans) until the command's own
/// process has exited; returns how it did.
/// `None` only if there is no child left to wait for, which cannot happen
/// while the command's process is unreaped.
fn wait_for(leader: i32) -> Option<rustix::process::WaitStatus> {
    loop {
        match rustix::process::waitpid(None, WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == leader => return Some(status),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
}

/// Whether the caller asked the shepherd to stay, which it does before
/// ending anything.
fn held(link: &mut UnixStream) -> bool {
    let mut byte = [0u8; 1];
    link.set_nonblocking(true).is_ok()
        && matches!(link.read(&mut byte), Ok(1) if byte[0] == HOLD)
        && link.set_nonblocking(false).is_ok()
}

/// Exits as the command did: with its code, or killed by its signal
/// (SIGKILL when it is unknown).
fn exit_as(status: Option<rustix::process::WaitStatus>) -> i32 {
    let Some(status) = status else {
        let _ = signal_hook::low_level::emulate_default_handler(libc::SIGKILL);
        return 128 + libc::SIGKILL;
    };
    if let Some(signal) = status.terminating_signal() {
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        return 128 + signal;
    }
    status.exit_status().unwrap_or(1)
}
