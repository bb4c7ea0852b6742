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
//! (all stopped, then SIGTERM to all at once; the grace period; then
//! SIGSTOP and SIGKILL until none is left), then lets it go. The caller walks the tree itself, so a
//! command that stops its shepherd still ends.
//!
//! A command may also SIGKILL its own shepherd, which runs as its user
//! (it cannot trace it: the shepherd is not dumpable). What it started
//! then comes to the caller's subreaper, the [`Adopter`]. So the shepherd
//! gives a final word on its socket before it exits, whatever the command
//! did; a shepherd that exits without it was killed, and the caller ends
//! at once (SIGSTOP and SIGKILL, no grace) every process its subreaper
//! adopted that it cannot tell came from a command that finished.
//! Processes of running commands are beneath their own shepherds, never
//! among those. The shepherd holds nothing the command does not have:
//! its environment is the command's, and its socket only ever carries the
//! caller's word.
//!
//! A long-lived command (a session's shell) runs under a
//! shepherd [`Held`] from the start: when the command's own process exits
//! the shepherd says so and stays, with everything the command left
//! beneath it, until the caller has ended all of it.

use crate::procfs;
use rustix::process::{Pid, Signal, WaitOptions};
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The descriptor on which the shepherd finds its socket to the caller.
const LINK_FD: i32 = 3;
/// Asks the shepherd to stay until the caller closes the socket.
const HOLD: u8 = b'h';
/// The shepherd's last byte, after its report on starting the command
/// (four bytes: the errno, or zero): it was not killed.
const FINAL: u8 = b'.';
/// The length of the shepherd's report on starting the command.
const REPORT: usize = 4;
/// Said by a held shepherd once its command's own process has exited.
const EXITED: u8 = b'x';
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
    /// The caller's subreaper, which adopts what a killed shepherd leaves.
    pub adopter: Arc<dyn Adopter>,
}

/// The caller's subreaper (or whoever reaps it): it adopts what a shepherd
/// leaves when it exits, and tells the processes a killed shepherd left
/// from those of commands that finished.
pub trait Adopter: Send + Sync + std::fmt::Debug {
    /// The live processes it adopted and has not taken as what a finished
    /// command left. It must take none while a child it owns has exited
    /// and its owner may not have looked at how (here: until the caller
    /// has received the command's exit), so that a killed shepherd's
    /// processes are all among them.
    fn strays(&self) -> Vec<i32>;
}

/// The caller's end of a shepherd's socket, before the shepherd has
/// started the command.
#[derive(Debug)]
pub(crate) struct Starting {
    socket: UnixStream,
    adopter: Arc<dyn Adopter>,
}

/// Whether the shepherd started its command, once it says so.
#[derive(Debug)]
pub(crate) struct Report(oneshot::Receiver<Result<(), crate::SpawnError>>);

/// The caller's side of a running shepherd: its word to the shepherd, and
/// what the shepherd says.
#[derive(Debug)]
pub(crate) struct Link {
    program: String,
    reader: OwnedReadHalf,
    writer: Option<OwnedWriteHalf>,
    /// Everything the shepherd said so far.
    heard: Vec<u8>,
    /// Whether the shepherd's side is closed.
    closed: bool,
    /// Where the report on starting goes, until it has been heard.
    report: Option<oneshot::Sender<Result<(), crate::SpawnError>>>,
    adopter: Arc<dyn Adopter>,
}

impl Shepherd {
    /// A command that runs `argv` under a shepherd, with the shepherd's
    /// socket; [`Report::wait`] says whether the command started.
    pub(crate) fn command(&self, argv: &[String]) -> std::io::Result<(Command, Starting)> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut command = Command::new(&self.program);
        command.args(&self.args).args(argv);
        crate::pass_as_fd(&mut command, OwnedFd::from(theirs), LINK_FD);
        let starting = Starting {
            socket: ours,
            adopter: self.adopter.clone(),
        };
        Ok((command, starting))
    }
}

impl Shepherd {
    /// A command that runs `argv` under a shepherd held from the start.
    pub fn held(&self, argv: &[String]) -> std::io::Result<(Command, Holding)> {
        let (command, starting) = self.command(argv)?;
        (&starting.socket).write_all(&[HOLD])?;
        Ok((command, Holding(starting)))
    }
}

/// The caller's end of a held shepherd's socket, before it is spawned.
#[derive(Debug)]
pub struct Holding(Starting);

impl Holding {
    /// The held shepherd, once it has been spawned as `pid` to run
    /// `program`.
    pub fn spawned(self, pid: u32, program: &str) -> std::io::Result<Held> {
        let (report, link) = self.0.split(program)?;
        Ok(Held {
            pid,
            report: Some(report),
            link,
        })
    }
}

/// A shepherd held from the start: it outlives its command's own process
/// until [`Held::end`].
#[derive(Debug)]
pub struct Held {
    pid: u32,
    report: Option<Report>,
    link: Link,
}

impl Held {
    /// Waits until the shepherd has started its command: an error when
    /// the program could not be run.
    pub async fn started(&mut self) -> Result<(), crate::SpawnError> {
        while self.link.report.is_some() && !self.link.closed {
            self.link.read().await;
        }
        match self.report.take() {
            Some(report) => report.wait().await,
            None => Ok(()),
        }
    }

    /// Returns once the command's own process has exited (or the shepherd
    /// is gone). Safe to cancel.
    pub async fn exited(&mut self) {
        while !self.link.closed
            && !self
                .link
                .heard
                .get(REPORT..)
                .is_some_and(|said| said.contains(&EXITED))
        {
            self.link.read().await;
        }
    }

    /// The processes beneath the shepherd now, by pid and start time (a pid
    /// may be used again): what a command of the session started after
    /// this is every process beneath the shepherd not among them.
    pub fn mark(&self) -> Mark {
        Mark(
            beneath(&HashSet::from([self.pid as i32]))
                .into_iter()
                .map(|p| (p.pid, p.start_time))
                .collect(),
        )
    }

    /// The live processes beneath the shepherd that were not there at
    /// `mark`, but `spared` (the shell, which the command does not end).
    pub fn since(&self, mark: &Mark, spared: u32) -> HashSet<i32> {
        beneath(&HashSet::from([self.pid as i32]))
            .into_iter()
            .filter(|p| p.pid != spared as i32 && !mark.0.contains(&(p.pid, p.start_time)))
            .map(|p| p.pid)
            .collect()
    }

    /// Ends at once (SIGSTOP and SIGKILL, in passes until none is left,
    /// for at most `within`) every process beneath the shepherd that was
    /// not there at `mark`, but `spared`: what one command of a long-lived
    /// shell started, however it detached, when the command is ended. The
    /// bound is for a shell that starts the command's processes anew as
    /// fast as they are killed.
    pub async fn kill_since(&self, mark: &Mark, spared: u32, within: Duration) {
        stop_and_kill(|| self.since(mark, spared), within).await;
    }

    /// Ends every process beneath the shepherd, however it detached (as a
    /// timeout ends a command's), then lets the shepherd go; `child` is the
    /// shepherd. Returns how the command's own process ended.
    pub async fn end(mut self, child: &mut Child, grace: Duration) -> std::process::ExitStatus {
        let status = end(child, self.pid, grace, &mut self.link).await;
        let _ = self.link.settle().await;
        status
    }
}

/// The processes beneath a held shepherd at one moment.
#[derive(Debug, Default)]
pub struct Mark(HashSet<(i32, u64)>);

impl Starting {
    /// The shepherd's report on starting `program`, and the link that
    /// holds, releases and listens to it.
    pub(crate) fn split(self, program: &str) -> std::io::Result<(Report, Link)> {
        self.socket.set_nonblocking(true)?;
        let (reader, writer) = tokio::net::UnixStream::from_std(self.socket)?.into_split();
        let (report, heard) = oneshot::channel();
        let link = Link {
            program: program.to_string(),
            reader,
            writer: Some(writer),
            heard: Vec::new(),
            closed: false,
            report: Some(report),
            adopter: self.adopter,
        };
        Ok((Report(heard), link))
    }
}

impl Report {
    /// Waits for the shepherd to say whether the command started. Only an
    /// error it names is one: a shepherd that ends without a word (one
    /// the command's ending killed) leaves the exit to say what happened.
    /// Nothing here blocks: a command may have stopped its shepherd.
    pub(crate) async fn wait(self) -> Result<(), crate::SpawnError> {
        self.0.await.unwrap_or(Ok(()))
    }
}

impl Link {
    /// Listens until the shepherd has reported on starting the command,
    /// then never returns: meant to run beside waiting for the shepherd.
    pub(crate) async fn listen(&mut self) -> std::convert::Infallible {
        while self.report.is_some() && !self.closed {
            self.read().await;
        }
        std::future::pending().await
    }

    /// One read of what the shepherd says.
    async fn read(&mut self) {
        let mut chunk = [0u8; 16];
        match self.reader.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                self.closed = true;
                // A shepherd that never reported leaves the exit to say
                // what happened.
                self.report = None;
            }
            Ok(n) => {
                self.heard.extend_from_slice(&chunk[..n]);
                if let Some(errno) = self.heard.first_chunk::<REPORT>()
                    && let Some(report) = self.report.take()
                {
                    let errno = i32::from_le_bytes(*errno);
                    let _ = report.send(match errno {
                        0 => Ok(()),
                        errno => Err(crate::SpawnError::Spawn {
                            program: self.program.clone(),
                            source: std::io::Error::from_raw_os_error(errno),
                        }),
                    });
                }
            }
        }
    }

    /// Asks the shepherd to stay until released; a shepherd gone already
    /// has nothing to be asked.
    fn hold(&self) {
        if let Some(writer) = &self.writer {
            let _ = writer.try_write(&[HOLD]);
        }
    }

    /// Lets a held shepherd go.
    fn release(&mut self) {
        self.writer = None;
    }

    /// Once the shepherd has exited: when it did so without its final
    /// word, the command killed it, and what it left to the caller's
    /// subreaper is ended at once. Returns whether it was killed.
    pub(crate) async fn settle(mut self) -> bool {
        // Its socket closes as the shepherd exits: nothing else holds it.
        let _ = tokio::time::timeout(KILLED_LEAVE, async {
            while !self.closed {
                self.read().await;
            }
        })
        .await;
        if !self
            .heard
            .get(REPORT..)
            .is_some_and(|said| said.ends_with(&[FINAL]))
        {
            kill_strays(self.adopter.as_ref()).await;
            return true;
        }
        false
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
    link: &mut Link,
) -> std::process::ExitStatus {
    // A shepherd gone already has reported its command's end.
    link.hold();
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // Until it is waited for, `pid` is the shepherd's, so its descendants
    // are the command's processes.
    let root = HashSet::from([pid as i32]);
    // All of them at once: stopped first, so that none sees another end
    // (a shell its child killed) and goes on before its own SIGTERM, nor
    // forks past it; then SIGTERM, pending until they are continued.
    let frozen = freeze(&root).await;
    signal_all(&frozen, Signal::TERM);
    signal_all(&frozen, Signal::CONT);
    let until = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < until && !descendants(&root).is_empty() {
        tokio::time::sleep(POLL).await;
    }
    // Stopped processes cannot fork; each pass finds what forked before it
    // was stopped, among the descendants of the shepherd.
    stop_and_kill(|| descendants(&root), KILLED_LEAVE).await;
    link.release();
    // The command may have stopped its shepherd.
    signal_all(&root, Signal::CONT);
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

/// Stops every descendant of `root` and returns them, once none of them
/// can fork any more: a pass stops what is new, until a pass finds
/// nothing new and every one is seen stopped (or gone, or in the kernel,
/// as a vfork's parent waits for its stopped child), or killed processes'
/// time to leave has passed.
async fn freeze(root: &HashSet<i32>) -> HashSet<i32> {
    let until = tokio::time::Instant::now() + KILLED_LEAVE;
    let mut frozen = HashSet::new();
    loop {
        let found = descendants(root);
        let new: HashSet<i32> = found.difference(&frozen).copied().collect();
        signal_all(&new, Signal::STOP);
        frozen.extend(new.iter().copied());
        let still = |pid: &i32| {
            procfs::stat(*pid).is_none_or(|p| matches!(p.state, 'T' | 't' | 'Z' | 'X' | 'D'))
        };
        if (new.is_empty() && frozen.iter().all(still)) || tokio::time::Instant::now() >= until {
            return frozen;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// SIGSTOP and SIGKILL to what `left` finds, in passes, until it finds
/// nothing (or killed processes take too long to go).
async fn stop_and_kill(left: impl Fn() -> HashSet<i32>, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    loop {
        let left = left();
        if left.is_empty() || tokio::time::Instant::now() >= until {
            return;
        }
        signal_all(&left, Signal::STOP);
        signal_all(&left, Signal::KILL);
        tokio::time::sleep(POLL).await;
    }
}

/// Ends at once the processes a killed shepherd left to `adopter`, and
/// everything beneath them. Asking the adopter again each pass finds
/// those a killed one left in turn.
async fn kill_strays(adopter: &dyn Adopter) {
    stop_and_kill(
        || {
            let strays: HashSet<i32> = adopter.strays().into_iter().collect();
            let mut all = descendants(&strays);
            all.extend(strays);
            all
        },
        KILLED_LEAVE,
    )
    .await;
}

/// The live descendants of `roots`, not counting them.
fn descendants(roots: &HashSet<i32>) -> HashSet<i32> {
    beneath(roots).into_iter().map(|p| p.pid).collect()
}

/// The live descendants of `roots`, not counting them, as `/proc` shows
/// them.
fn beneath(roots: &HashSet<i32>) -> Vec<procfs::ProcStat> {
    let all = procfs::all().unwrap_or_default();
    let mut tree = roots.clone();
    let mut found = Vec::new();
    // To a fixed point: a parent may be listed after its children.
    loop {
        let new: Vec<procfs::ProcStat> = all
            .iter()
            .filter(|p| p.state != 'Z' && !tree.contains(&p.pid) && tree.contains(&p.ppid))
            .copied()
            .collect();
        if new.is_empty() {
            return found;
        }
        tree.extend(new.iter().map(|p| p.pid));
        found.extend(new);
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
    // Nothing of the command's may trace the shepherd, nor take its
    // socket from it.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let mut link = UnixStream::from(link);
    let ended = shepherd(&mut link, argv);
    // The final word: whatever the command did, the shepherd was not
    // killed, and what it leaves running is what a finished command left.
    let _ = link.write_all(&[FINAL]);
    match ended {
        Ok(status) => exit_as(status),
        Err(code) => code,
    }
}

/// Runs the command and waits for it (and, if the caller holds the
/// shepherd, for the caller): how its process ended, or the shepherd's
/// exit code when it could not be started.
fn shepherd(
    link: &mut UnixStream,
    argv: &[OsString],
) -> Result<Option<rustix::process::WaitStatus>, i32> {
    let Some((program, args)) = argv.split_first() else {
        let _ = link.write_all(&libc::EINVAL.to_le_bytes());
        return Err(126);
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
            return Err(127);
        }
    };
    if link.write_all(&0i32.to_le_bytes()).is_err() {
        // The caller is gone: end the command as it would have.
        signal_all(&HashSet::from([leader]), Signal::KILL);
    }
    release_stdio();
    let status = wait_for(leader);
    if held(link) {
        let _ = link.write_all(&[EXITED]);
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
    while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
    Ok(status)
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
        match rustix::process::wait(WaitOptions::empty()) {
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
