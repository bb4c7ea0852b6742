//! Git processes that cannot outlive the berth process that started them.
//!
//! One git command is a tree: `git clone` starts `git remote-https`, which
//! holds the connection, and `git index-pack`; every one of them has the
//! credential in its environment. When berth dies, `kill -9` included, all
//! of them must go, or a helper waiting on a stalled server keeps the token
//! for as long as the server cares to stall.
//!
//! `PR_SET_PDEATHSIG` cannot do it: it reaches only the direct child (the
//! helpers git starts are orphaned, not signalled), and it fires when the
//! *thread* that forked exits, which a tokio blocking thread does when
//! idle. A process group alone is not enough either: nobody is left to
//! signal it.
//!
//! The kernel's terminal hangup does it. Each git runs as the leader of a
//! session of its own whose controlling terminal is a fresh pseudo-terminal,
//! and only berth holds the master side (close-on-exec, so no other program
//! inherits it). When the master closes, because berth exited however it
//! exited or because the command was dropped, the kernel hangs the terminal
//! up and sends SIGHUP to git, the session leader; git removes what it was
//! writing (a partial clone, its lock files) and dies of it; and the exit of
//! a session leader sends SIGHUP to the terminal's foreground process group,
//! which is git's own, helpers included. Nothing in berth has to run for any
//! of it. Git reads no input from the terminal (prompts are off, stdin is
//! `/dev/null`); it is there to be hung up.

#![expect(
    unsafe_code,
    reason = "a pre_exec hook: only async-signal-safe syscalls between fork and exec"
)]

use rustix::fd::{AsRawFd, BorrowedFd, OwnedFd};
use rustix::pty::OpenptFlags;
use std::io;
use std::process::Output;

/// A running git process tree, hung up when this is dropped (a reader:
/// killed).
pub(crate) struct Session {
    child: tokio::process::Child,
    /// The master side of git's terminal; a reader has none.
    _master: Option<OwnedFd>,
}

impl Session {
    /// Starts `command` as the leader of a new session on a new terminal.
    /// `keep` is a descriptor the whole tree inherits (berth's are
    /// otherwise close-on-exec): a lock that must stay held for as long as
    /// any of it runs.
    pub fn start(
        mut command: tokio::process::Command,
        keep: Option<BorrowedFd<'_>>,
    ) -> io::Result<Session> {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let no_terminal = |e: rustix::io::Errno| {
            io::Error::other(format!(
                "cannot open a pseudo-terminal (/dev/ptmx), which git needs so that it ends \
                 with berth: {e}"
            ))
        };
        let master = rustix::pty::openpt(flags).map_err(no_terminal)?;
        rustix::pty::grantpt(&master).map_err(no_terminal)?;
        rustix::pty::unlockpt(&master).map_err(no_terminal)?;
        let terminal = rustix::pty::ioctl_tiocgptpeer(&master, flags).map_err(no_terminal)?;
        let terminal_fd = terminal.as_raw_fd();
        let keep_fd = keep.map(|fd| fd.as_raw_fd());
        // SAFETY: between fork and exec the hook makes only system calls
        // (setsid, ioctl, fcntl) on descriptors open in the child, and
        // allocates nothing.
        unsafe {
            command.pre_exec(move || {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(terminal_fd))?;
                if let Some(fd) = keep_fd {
                    rustix::io::fcntl_setfd(
                        BorrowedFd::borrow_raw(fd),
                        rustix::io::FdFlags::empty(),
                    )?;
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        // The child has its own; the terminal lives on as its controlling
        // terminal.
        drop(terminal);
        Ok(Session {
            child,
            _master: Some(master),
        })
    }

    /// Starts `command`, a git that only reads a repository on this host,
    /// with no credential, and starts no other program (`cat-file`,
    /// `upload-pack --advertise-refs`): it ends by itself once its input
    /// closes or its output is written, berth's death included, and it is
    /// killed when this is dropped. With no terminal to set up between fork
    /// and exec, the standard library starts it with `posix_spawn`, which
    /// does not copy berth's address space as a fork does (about a
    /// millisecond for a large threaded process, plus the copy-on-write
    /// faults after it), provided `command` names its program by path
    /// (see `command::on_path`).
    pub fn reader(mut command: tokio::process::Command) -> io::Result<Session> {
        command.kill_on_drop(true);
        Ok(Session {
            child: command.spawn()?,
            _master: None,
        })
    }

    /// Git's stdin, when it was piped, for the caller to write and close.
    pub fn stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits for git to exit, collecting its output; the terminal is hung
    /// up afterwards, ending whatever of the tree is left.
    pub async fn output(self) -> io::Result<Output> {
        let Session { child, _master } = self;
        child.wait_with_output().await
    }

    /// [`Session::output`], reading at most `limit` bytes of stdout: past
    /// them, `None`, and git is ended as on a drop.
    pub async fn output_within(mut self, limit: u64) -> io::Result<Option<Output>> {
        use tokio::io::AsyncReadExt as _;
        // Read beside stdout, so that git never waits on a full stderr pipe.
        let stderr = self.child.stderr.take().map(|mut pipe| {
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                pipe.read_to_end(&mut bytes).await.map(|_| bytes)
            })
        });
        let mut stdout = Vec::new();
        if let Some(pipe) = self.child.stdout.take() {
            pipe.take(limit + 1).read_to_end(&mut stdout).await?;
        }
        if stdout.len() as u64 > limit {
            return Ok(None);
        }
        let stderr = match stderr {
            Some(reading) => reading.await.map_err(io::Error::other)??,
            None => Vec::new(),
        };
        let status = self.child.wait().await?;
        Ok(Some(Output {
            status,
            stdout,
            stderr,
        }))
    }
}
