//! `berth-agent`: the one static program that serves every isolated berth
//! workspace. It runs as the workspace's PID 1 in any Linux image — one
//! with only a static busybox, a Debian root, or no shell at all — and
//! speaks the agent protocol (see `berth-proto`) on a unix socket.
//!
//! # Contract with the runtime that starts it
//!
//! - **Command line**: `berth-agent --socket PATH [--root DIR]
//!   [--hints FILE] [--grace-ms N]`. The socket's directory is one the
//!   runtime bind-mounts from the host and keeps private to the provider
//!   (mode 0700): that directory is what guards the agent. The agent
//!   removes a stale socket file at `PATH` and creates the socket with
//!   mode 0666, so a provider running as another user than the agent can
//!   connect through the directory it owns. `--root` (default `/workspace`,
//!   created when missing) is what command working directories and file
//!   paths are relative to. `--grace-ms` (default 2000) is the time between
//!   SIGTERM and SIGKILL whenever commands must end.
//! - **Environment of commands**: the agent's own environment (for a
//!   container, the image's), minus variables starting with
//!   `BERTH_AGENT_`, with `PATH` set to
//!   `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` and
//!   `HOME` to `/root` (or, for a non-root agent, the workspace root) when
//!   the image sets none; then each request's variables. Terminals also
//!   get `TERM=xterm-256color` unless given one. There is no user-database
//!   lookup: the image may have none.
//! - **Processes**: every command runs [`COMMAND_NICENESS`] nicer than
//!   the agent, in its own process group (a
//!   terminal in its own session); ending a command ends its whole group
//!   with SIGTERM, the grace period, then SIGKILL. Given `--cgroup-fd`
//!   (an open directory of cgroup v2, which the runtime delegates), each
//!   command, session and terminal also gets a cgroup of its own, and
//!   that ending reaches everything in it, however it detached; a
//!   session or terminal that ends takes its cgroup's processes with it.
//!   Without one, each command runs under a shepherd, a copy of the agent
//!   (`berth-agent shepherd ARGV...`) that is its child subreaper, and an
//!   ending reaches everything beneath it the same way; a command that
//!   kills its shepherd has what it started ended at once (see
//!   [`berth_exec::shepherd`] and [`reaper`]). As PID 1 (or as a child
//!   subreaper when run as an ordinary process) the agent reaps every
//!   orphan; this reads `/proc`, which docker and the sandbox mount.
//! - **Its own protection**: the agent makes itself undumpable and
//!   untraceable by the workspace's processes, which run as its user (see
//!   [`guard`]).
//! - **SIGTERM** (or SIGINT) to the agent from outside the workspace (see
//!   [`stop_signals`]; one a command sends is ignored): it stops taking work, ends
//!   every running command, session and terminal (SIGTERM, grace, SIGKILL;
//!   as PID 1 also every other process of the workspace), delivers their
//!   last frames, and exits 0.
//! - **Interpreter detection**: at start (at the first quiet moment, at
//!   the lowest CPU priority) and on request, `python`, `node`, `ruby`,
//!   `go`, `java`, `perl`, `R`, `bash` and `sh` are looked up on `PATH` and
//!   probed for their version, each with a short timeout and a minimal
//!   environment (`PATH`, `HOME`, `LANG=C`). The hints file (see
//!   [`detect`]) adds or overrides entries.
//!
//! The agent runs on a current-thread tokio runtime: it is small, and the
//! reaper's correctness relies on it (see [`reaper`]).

pub mod args;
pub mod detect;
pub mod env;
mod exec;
mod fdio;
mod files;
pub mod guard;
mod info;
pub mod reaper;
mod server;
mod session;
mod spawn;
mod stop_signals;
mod terminal;
mod tree;
mod watch;

pub use berth_exec::procfs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How much nicer than the agent every command, session and terminal runs,
/// and what they start: a workspace busy with work of its own does not
/// hold up the agent's answers to the host. A command cannot lower its
/// nice value again (that takes CAP_SYS_NICE). Commands of one workspace
/// compete only with each other and its agent: the workspace's cgroup
/// weighs it against other workspaces.
pub const COMMAND_NICENESS: i32 = 10;

/// The agent's version, reported in the handshake and in info.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the operations share.
#[derive(Debug)]
pub struct Agent {
    pub root: PathBuf,
    /// The root, opened for confined file operations.
    pub files: Arc<berth_files::Root>,
    pub env: env::BaseEnv,
    pub grace: Duration,
    /// The nice value of commands, sessions and terminals.
    pub command_nice: i32,
    /// Where commands get cgroups of their own, when delegated one.
    pub cgroups: Option<Arc<berth_exec::Cgroups>>,
    pub reaper: reaper::Reaper,
    pub detector: detect::Detector,
    pub started: Instant,
    /// Cancelled when the agent is asked to stop.
    pub shutdown: CancellationToken,
    /// Every connection and operation, so that stopping can wait for them.
    pub tasks: TaskTracker,
    /// Operations running on all connections.
    pub operations: AtomicU32,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the workspace root `{path}`: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on `{path}`: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Serves until SIGTERM or SIGINT from outside the workspace, then ends everything gracefully. Must
/// run on a current-thread runtime.
pub async fn run(options: args::Options) -> Result<(), StartError> {
    std::fs::create_dir_all(&options.root).map_err(|source| StartError::Root {
        path: options.root.clone(),
        source,
    })?;
    let files = berth_files::Root::open(&options.root).map_err(|e| StartError::Root {
        path: options.root.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let listener = listen(&options.socket)?;
    let env = env::BaseEnv::from_process(&options.root.to_string_lossy());
    let cgroups = options.cgroup_fd.and_then(delegated_cgroups);
    let reaper = reaper::Reaper::start();
    let detector = detect::Detector::new(options.hints.clone());
    let agent = Arc::new(Agent {
        root: options.root.clone(),
        files: Arc::new(files),
        env,
        grace: options.grace,
        command_nice: rustix::process::getpriority_process(None).unwrap_or(0) + COMMAND_NICENESS,
        cgroups,
        reaper,
        detector,
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        operations: AtomicU32::new(0),
    });
    eprintln!(
        "berth-agent {VERSION}: serving {} for workspace {}",
        options.socket.display(),
        options.root.display()
    );

    let mut stop_signals = stop_signals::StopSignals::listen();
    // Detection starts with the first connection: an agent nobody uses
    // yet (a sandbox's standby) probes nothing.
    let mut detecting = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    if !std::mem::replace(&mut detecting, true) {
                        agent.detector.start(agent.clone());
                    }
                    agent.tasks.spawn(server::serve(agent.clone(), stream));
                }
            }
            () = stop_signals.recv() => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&options.socket);
    stop(&agent).await;
    Ok(())
}

fn listen(path: &std::path::Path) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Listen {
        path: path.to_path_buf(),
        source,
    };
    // A socket left by an earlier agent would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt as _;
    // Who may connect is decided by the socket's directory, which the
    // runtime keeps private to the provider: the agent (often root in the
    // container) cannot know the provider's user to hand the socket to.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// Ends every operation (each ends its process group: SIGTERM, grace,
/// SIGKILL), waits for them, and as PID 1 ends whatever else is left.
async fn stop(agent: &Arc<Agent>) {
    agent.shutdown.cancel();
    agent.tasks.close();
    // Operations end within the grace period; the margin covers delivering
    // their last frames.
    let _ =
        tokio::time::timeout(agent.grace * 2 + Duration::from_secs(1), agent.tasks.wait()).await;
    if rustix::process::getpid().is_init() {
        end_everyone_else(agent.grace).await;
    }
}

/// As PID 1: SIGTERM to every other process of the workspace, then wait
/// up to the grace period for them to go. Whatever is left is killed by the
/// kernel when PID 1 exits.
async fn end_everyone_else(grace: Duration) {
    let others = || {
        procfs::all()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.pid != 1 && p.state != 'Z')
            .map(|p| p.pid)
            .collect::<Vec<_>>()
    };
    for pid in others() {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + grace;
    while !others().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cgroups delegated at descriptor `fd`, or `None` (said on stderr)
/// when they cannot be used: commands then run under a shepherd.
fn delegated_cgroups(fd: i32) -> Option<Arc<berth_exec::Cgroups>> {
    let dir = inherited(fd)?;
    match berth_exec::Cgroups::new(dir) {
        Ok(cgroups) => Some(cgroups),
        Err(err) => {
            eprintln!("berth-agent: not using the cgroup at descriptor {fd}: {err}");
            None
        }
    }
}

/// Takes over descriptor `fd`, which whoever started the agent left open
/// for it, and keeps it from the agent's children; `None` when it is not
/// open.
#[expect(
    unsafe_code,
    reason = "owning a descriptor inherited across exec, known only by number"
)]
fn inherited(fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd as _};
    // SAFETY: the descriptor is borrowed only to ask whether it is open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = rustix::io::fcntl_getfd(borrowed).ok()?;
    rustix::io::fcntl_setfd(borrowed, flags | rustix::io::FdFlags::CLOEXEC).ok()?;
    // SAFETY: it is open, it was handed to the agent alone, and nothing
    // else in the agent refers to it by number.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

impl Agent {
    /// A cgroup of its own for a command, session or terminal, when the
    /// agent has cgroups and one can be made.
    pub fn command_cgroup(&self) -> Option<berth_exec::CommandCgroup> {
        let cgroups = self.cgroups.as_ref()?;
        match cgroups.make() {
            Ok(cgroup) => Some(cgroup),
            Err(err) => {
                eprintln!("berth-agent: no cgroup for a command: {err}");
                None
            }
        }
    }

    /// How commands start their shepherd: this very executable, which no
    /// process of the workspace can replace; the agent's reaper adopts
    /// what a killed shepherd leaves.
    fn shepherd(&self) -> berth_exec::Shepherd {
        berth_exec::Shepherd {
            program: PathBuf::from("/proc/self/exe"),
            args: vec![SHEPHERD.to_string()],
            adopter: Arc::new(self.reaper.clone()),
        }
    }

    /// A working directory: `cwd` relative to the root, an existing
    /// directory that does not lead outside it.
    pub fn workdir(&self, cwd: Option<&str>) -> Result<PathBuf, (berth_proto::ErrorCode, String)> {
        files::workdir(self, cwd).map_err(|body| (body.code, body.message))
    }
}

/// The first argument that makes the agent's binary a shepherd.
pub const SHEPHERD: &str = "shepherd";

/// Sends `signal` (a raw number) to the process group led by `pid`; an
/// unknown signal number or a group already gone is ignored.
pub(crate) fn signal_group(pid: u32, signal: i32) {
    if let Some(signal) = rustix::process::Signal::from_named_raw(signal) {
        berth_exec::signal_group(pid, signal);
    }
}

/// Copies the running executable to `dir/berth-agent` with mode 0755,
/// through a temporary name so a reader never sees half a file.
pub fn install_self(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let dest = dir.join("berth-agent");
    let part = dir.join(format!(".berth-agent.{}.part", std::process::id()));
    std::fs::copy("/proc/self/exe", &part)?;
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&part, &dest)?;
    Ok(dest)
}
