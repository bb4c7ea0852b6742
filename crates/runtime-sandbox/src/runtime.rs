//! The [`Runtime`] implementation: workspaces as overlays of layers from
//! the layer store, run by the stage-1 init, with their state kept in
//! `$BERTH_HOME/sandbox/<id>/state.json` so a restarted provider finds
//! them again.
//!
//! Nothing is mounted on the host: the overlay lives only in the
//! workspace's own mount namespace, so when its processes end, for any
//! reason, the mounts go with them. A workspace is its upper directory,
//! its layer stack, and (while running) the pid of its init.
//!
//! Each start makes a new instance (cgroups, overlay work directory, init
//! config named by a counter), so an old one is torn down in the
//! background while the next runs. Once reset, a running workspace also
//! keeps a standby instance on its provisioned stack, and its next reset
//! switches to it.
//!
//! With an agent configured (as berth runs it), commands and files go to
//! the agent over its socket, exactly as in docker; without one, each
//! command is run by the stage-1 init joining the workspace's namespaces,
//! and files are handled by commands inside.

use crate::cgroup::{self, Layout};
use crate::config::IdMap;
use crate::plan::{self, BERTH_DIR, Dirs, HostBase, PlanInput};
use async_trait::async_trait;
use berth_agent_client::{AgentClient, AgentPool};
use berth_core::spec::DEFAULT_ROOT;
use berth_core::{
    Change, ExecRequest, ExecStream, ExportSummary, ExportTarget, FileEntry, FileKind, GcReport,
    HomeId, Isolation, ReadStream, ResourceDefaults, Runtime, RuntimeError, Snapshot, Workspace,
    WorkspacePath, spec::Network,
};
use berth_layers::{IdShift, LayerId, LayerKind, LayerStore, tree};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const NAME: &str = "sandbox";
const STATE_VERSION: u32 = 1;
/// Root inside maps to this host uid and gid, and the next 65535 ids too.
pub const DEFAULT_ID_MAP: IdMap = IdMap {
    host: 100_000,
    size: 65_536,
};
/// The pids limit when a spec gives none: a fork bomb must not reach the
/// host's limit.
pub const DEFAULT_PIDS: u32 = 4096;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_PATIENCE: Duration = Duration::from_secs(10);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the sandbox runtime is set up on this host.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// berth's state directory; layers go in `layers/`, workspaces in
    /// `sandbox/`.
    pub home: PathBuf,
    /// The stage-1 init binary (`berth-sandbox-init`, or the agent).
    pub init_program: PathBuf,
    /// Arguments put before stage 1's own: `["sandbox-init"]` when the
    /// init program is the agent, which plays both roles.
    pub init_args: Vec<String>,
    /// The agent, run as each workspace's PID 1 when given; otherwise the
    /// init's own minimal reaper is.
    pub agent_program: Option<PathBuf>,
    /// More host paths bound read-only into `host`-based workspaces (for
    /// toolchains installed outside the system directories).
    pub host_binds: Vec<PathBuf>,
    /// `None` runs without a user namespace (root inside is host root
    /// with fewer capabilities): weaker, so only with `accept_weaker`.
    pub id_map: Option<IdMap>,
    /// Whether to run when a mechanism (user namespace, cgroups) is
    /// missing instead of refusing.
    pub accept_weaker: bool,
    /// Whether a running workspace, once reset, keeps a standby instance
    /// on its provisioned stack, which makes its next reset a switch
    /// instead of a start, at the memory cost of a second idle instance.
    pub standby: bool,
    /// The memory limit of a workspace whose spec sets none, and the size
    /// of every workspace's `/dev/shm`.
    pub defaults: ResourceDefaults,
}

impl SandboxConfig {
    /// The defaults for `home`, with the init binary and the agent found
    /// next to the current executable (or in `BERTH_SANDBOX_INIT` and
    /// `BERTH_AGENT`), extra binds in `BERTH_SANDBOX_HOST_BINDS`
    /// (colon-separated), standbys unless `BERTH_SANDBOX_STANDBY=0`, and
    /// this host's resource defaults.
    pub fn from_env(home: impl Into<PathBuf>) -> Self {
        let init_program = std::env::var_os("BERTH_SANDBOX_INIT")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(|d| d.join("berth-sandbox-init")))
            })
            .unwrap_or_else(|| PathBuf::from("berth-sandbox-init"));
        let host_binds = std::env::var("BERTH_SANDBOX_HOST_BINDS")
            .map(|v| {
                v.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        SandboxConfig {
            home: home.into(),
            init_program,
            init_args: Vec::new(),
            agent_program: std::env::var_os("BERTH_AGENT")
                .map(PathBuf::from)
                .or_else(|| {
                    let exe = std::env::current_exe().ok()?;
                    let agent = exe.parent()?.join("berth-agent");
                    agent.is_file().then_some(agent)
                }),
            host_binds,
            id_map: Some(DEFAULT_ID_MAP),
            accept_weaker: std::env::var("BERTH_SANDBOX_ACCEPT_WEAKER").is_ok_and(|v| v == "1"),
            standby: std::env::var("BERTH_SANDBOX_STANDBY").map_or(true, |v| v != "0"),
            defaults: ResourceDefaults::for_this_host(),
        }
    }
}

/// Exports a local container image's root filesystem: the seam through
/// which a container engine's client (the docker runtime's) provides
/// bases, exported once per image and kept as a layer.
pub trait ImageExporter: Send + Sync {
    /// The image's content id (such as `sha256:...`), which names its
    /// layer: the same id is never exported twice.
    fn image_id(&self, image: &str) -> Result<String, String>;
    /// Writes the image's root filesystem as a tar archive at `into`.
    fn export(&self, image: &str, into: &Path) -> Result<(), String>;
}

/// Where a workspace's base filesystem comes from (`spec.image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The host's system directories, read-only (no image, or `host`).
    Host,
    /// A root filesystem tarball (`.tar`, `.tar.zst`).
    Tarball(PathBuf),
    /// A root filesystem directory.
    Directory(PathBuf),
    /// A local Docker image, exported once into a layer.
    Docker(String),
}

impl Base {
    /// Reads `spec.image`: `host`, `docker:NAME`, or a host path.
    pub fn parse(image: Option<&str>) -> Base {
        match image {
            None | Some("host") | Some("") => Base::Host,
            Some(name) => match name.strip_prefix("docker:") {
                Some(image) => Base::Docker(image.to_string()),
                None => {
                    let path = PathBuf::from(name.strip_prefix("dir:").unwrap_or(name));
                    if path.is_dir() {
                        Base::Directory(path)
                    } else {
                        Base::Tarball(PathBuf::from(name.strip_prefix("tar:").unwrap_or(name)))
                    }
                }
            },
        }
    }
}

/// A running instance's init, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Init {
    pid: u32,
    /// The process's start time (clock ticks after boot), which tells it
    /// from a later process that reuses the pid.
    start_time: u64,
    /// Which instance of the workspace it runs: names its cgroups, overlay
    /// work directory and init config.
    #[serde(default)]
    instance: u64,
}

impl Init {
    /// Whether this init still runs (and not another process that got its
    /// pid since).
    fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// A standby instance: started on the provisioned stack with an empty
/// upper directory of its own, so that a reset to the provisioned state
/// only switches to it and no start is on the reset's path.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Standby {
    init: Init,
    /// The stack it runs on: a reset uses it only while it is still the
    /// provisioned stack.
    stack: Vec<LayerId>,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    id: String,
    /// The layers under the upper directory, bottom first.
    stack: Vec<LayerId>,
    /// The stack a reset without a snapshot returns to.
    provisioned: Vec<LayerId>,
    host_base: bool,
    private_network: bool,
    limits: cgroup::Limits,
    /// The size of the tmpfs at `/dev/shm`; `None` in states written
    /// before it was recorded, which get the runtime's default.
    #[serde(default)]
    shm_size: Option<u64>,
    #[serde(default)]
    init: Option<Init>,
    /// Counts instances: each start gets its own cgroups, overlay work
    /// directory and init config, so the previous instance can be torn
    /// down in the background while the next one starts (a reset does not
    /// wait).
    #[serde(default)]
    instance: u64,
    #[serde(default)]
    standby: Option<Standby>,
}

/// Makes `tree/rel` and the missing directories above it with mode 0755,
/// whatever the umask: they belong to host root, and the workspace's root
/// passes through them as any other user.
fn passable_dir(tree: &Path, rel: &Path) -> io::Result<()> {
    let mut path = tree.to_path_buf();
    for component in rel.components() {
        path.push(component);
        match fs::create_dir(&path) {
            Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Kills an instance: killing a PID namespace's init kills everything in
/// it.
fn kill(init: Init) {
    if init.alive()
        && let Some(pid) = rustix::process::Pid::from_raw(init.pid as i32)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Blocks until `path` exists, at most `patience`, or until the process
/// behind the pidfd `unless` ends (then `Ok(false)`): woken by inotify when
/// an entry appears in its directory rather than by polling, so that a
/// start is not rounded up to a timer's tick. Returns the inotify instance
/// too, for the caller to close when it has passed the answer on.
fn wait_for_entry(
    path: &Path,
    unless: Option<&OwnedFd>,
    patience: Duration,
) -> (Result<bool, RuntimeError>, Option<OwnedFd>) {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let dir = path.parent().unwrap_or(Path::new("/"));
    let watched = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).and_then(|fd| {
        inotify::add_watch(&fd, dir, WatchFlags::CREATE | WatchFlags::MOVED_TO)?;
        Ok(fd)
    });
    match watched {
        Ok(events) => (wait_with(&events, unless, path, patience), Some(events)),
        Err(e) => (
            Err(RuntimeError::io(
                format!("cannot watch `{}`", dir.display()),
                e.into(),
            )),
            None,
        ),
    }
}

fn wait_with(
    events: &OwnedFd,
    unless: Option<&OwnedFd>,
    path: &Path,
    patience: Duration,
) -> Result<bool, RuntimeError> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = std::time::Instant::now() + patience;
    // Checked after the watch is set, so that no creation is missed.
    while !path.exists() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(other(format!(
                "`{}` did not appear within {patience:?}",
                path.display()
            )));
        }
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut ready = vec![PollFd::new(events, PollFlags::IN)];
        ready.extend(unless.map(|fd| PollFd::new(fd, PollFlags::IN)));
        match poll(&mut ready, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(RuntimeError::io(
                    "cannot wait for the agent's socket",
                    e.into(),
                ));
            }
        }
        if ready.get(1).is_some_and(|fd| !fd.revents().is_empty()) {
            return Ok(path.exists());
        }
        // The events only say that something appeared; the loop looks.
        let mut buf = [0u8; 1024];
        while rustix::io::read(events, &mut buf).is_ok() {}
    }
    Ok(true)
}

/// The last few KiB of a log the workspace's processes also write to, so
/// the log's size does not matter.
fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 4096;
    let mut tail = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file
            .seek(SeekFrom::Start(len.saturating_sub(TAIL)))
            .and_then(|_| file.take(TAIL).read_to_end(&mut tail));
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// What is left of killed instances: their cgroups to empty and remove,
/// their inits to see reaped (an init leaves its PID namespace, and the
/// overlay with it, only then), and their work directories and configs.
struct Teardown {
    cgroups: Vec<cgroup::Cgroups>,
    inits: Vec<Init>,
    paths: Vec<PathBuf>,
}

impl Teardown {
    fn run(self) -> Result<(), RuntimeError> {
        for cgroups in &self.cgroups {
            cgroup::kill_and_remove(cgroups, KILL_PATIENCE).map_err(other)?;
        }
        let deadline = std::time::Instant::now() + KILL_PATIENCE;
        for init in &self.inits {
            while init.alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for path in &self.paths {
            let _ = match fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => tree::remove_tree(path),
                _ => fs::remove_file(path),
            };
        }
        Ok(())
    }

    /// Finishes the teardown on a thread of its own: the processes are
    /// already killed, and the next instance uses fresh names.
    fn run_in_background(self) {
        std::thread::spawn(move || self.run());
    }
}

/// The sandbox runtime.
pub struct SandboxRuntime {
    inner: Arc<Inner>,
}

impl std::ops::Deref for SandboxRuntime {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The runtime's state, shared with blocking tasks.
#[doc(hidden)]
pub struct Inner {
    config: SandboxConfig,
    /// Names this home's cgroups, which live in the host's hierarchy
    /// beside every other home's.
    home_id: HomeId,
    store: LayerStore,
    cgroups: Result<Layout, String>,
    host: HostBase,
    exporter: Option<Arc<dyn ImageExporter>>,
    /// One connection per running workspace's agent.
    agents: AgentPool,
    lifecycle: Lifecycle,
    /// Work going on after an answer: standbys being made.
    background: TaskTracker,
}

/// Serialises changes of each workspace's lifecycle (start, stop, reset,
/// freeze, standby) so two never interleave, while different workspaces
/// change at once; `gc`, which looks at them all, excludes everything.
#[derive(Default)]
struct Lifecycle {
    all: Arc<tokio::sync::RwLock<()>>,
    each: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one workspace's lifecycle changes.
struct LifecycleGuard {
    _one: tokio::sync::OwnedMutexGuard<()>,
    _all: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl Lifecycle {
    async fn one(&self, id: &str) -> LifecycleGuard {
        let all = self.all.clone().read_owned().await;
        let lock = self
            .each
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        LifecycleGuard {
            _one: lock.lock_owned().await,
            _all: all,
        }
    }

    async fn every(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.all.clone().write_owned().await
    }

    /// Forgets a removed workspace's lock.
    fn forget(&self, id: &str) {
        self.each
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::io(context, source)
}

fn other(error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(error.to_string())
}

fn holder(ws: &str) -> String {
    format!("workspace:{ws}")
}

fn cache_holder(key: &str) -> String {
    format!(
        "cache:{}",
        LayerId::derive(&[b"cache-key", key.as_bytes()]).short()
    )
}

/// The start time of a process, or `None` if there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields restart
    // after the last `)`. starttime is field 22, the 20th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl SandboxRuntime {
    pub fn new(config: SandboxConfig) -> Result<Self, RuntimeError> {
        Self::with_exporter(config, None)
    }

    /// A runtime that can base workspaces on container images (`docker:NAME`)
    /// through `exporter`.
    pub fn with_exporter(
        config: SandboxConfig,
        exporter: Option<Arc<dyn ImageExporter>>,
    ) -> Result<Self, RuntimeError> {
        Ok(SandboxRuntime {
            inner: Arc::new(Inner::new(config, exporter)?),
        })
    }

    fn clone_handle(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// The automatic collection, once a workspace, cache entry or snapshot
    /// let go of `released`: removes those of them (and of the layers below
    /// them) that nothing uses any more. Its failures are left to an
    /// explicit `gc`, which reports them: what let go has succeeded.
    async fn collect_released(&self, released: Vec<LayerId>) {
        let this = self.clone_handle();
        let _ = tokio::task::spawn_blocking(move || this.store.gc_released(&released)).await;
    }

    /// Makes a standby for a running workspace in the background, when
    /// standbys are on: the caller has its answer meanwhile. A workspace
    /// gets one once it has been reset: one that is reset once is reset
    /// again, while a standby for every workspace would double what an
    /// idle one costs and slow every start down with a second one.
    fn prepare_standby(&self, ws: &Workspace) {
        if !self.config.standby {
            return;
        }
        let this = self.clone_handle();
        let ws = ws.clone();
        self.background.spawn(async move {
            let _guard = this.lifecycle.one(ws.id.as_str()).await;
            match this.make_standby(&ws).await {
                // Removed meanwhile.
                Ok(()) | Err(RuntimeError::Gone { .. }) => {}
                Err(e) => tracing::warn!(id = %ws.id, error = %e, "cannot make a standby instance"),
            }
        });
    }

    /// The agent serving a running workspace, when the runtime runs one.
    async fn agent(&self, ws: &Workspace) -> Result<Option<AgentClient>, RuntimeError> {
        if self.config.agent_program.is_none() {
            return Ok(None);
        }
        let id = ws.id.to_string();
        // A live connection means a running agent: every command and file
        // operation takes this path, so it reads no state from disk.
        if let Some(agent) = self.agents.connected(&id) {
            return Ok(Some(agent));
        }
        let state = self.load(&id)?;
        if self.running(&state).is_none() {
            return Err(RuntimeError::Gone {
                id,
                detail: "it is not running".into(),
            });
        }
        let socket = self.dirs(&id).run.join("agent.sock");
        Ok(Some(self.agents.get(&id, &socket, START_TIMEOUT).await?))
    }

    /// Runs a command inside and collects its output (for file operations).
    async fn run_inside(
        &self,
        ws: &Workspace,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), RuntimeError> {
        let mut request = ExecRequest::new(berth_core::Command::Argv(argv));
        request.stdin = stdin;
        let mut events = self.exec(ws, request, CancellationToken::new()).await?;
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), -1);
        while let Some(event) = events.recv().await {
            match event {
                berth_core::ExecEvent::Stdout { data } => out.extend_from_slice(&data.0),
                berth_core::ExecEvent::Stderr { data } => err.extend_from_slice(&data.0),
                berth_core::ExecEvent::Exit(status) => code = status.code.unwrap_or(-1),
            }
        }
        Ok((code, out, err))
    }
}

impl Inner {
    fn new(
        config: SandboxConfig,
        exporter: Option<Arc<dyn ImageExporter>>,
    ) -> Result<Self, RuntimeError> {
        let store = LayerStore::open(config.home.join("layers")).map_err(other)?;
        let sandbox = config.home.join("sandbox");
        fs::create_dir_all(&sandbox)
            .map_err(io_err(format!("cannot create `{}`", sandbox.display())))?;
        let cgroups = cgroup::detect().map_err(|e| e.to_string());
        let host = plan::host_base(Path::new("/"), &config.host_binds);
        let home_id = HomeId::load_or_create(&config.home).map_err(other)?;
        Ok(Inner {
            config,
            home_id,
            store,
            cgroups,
            host,
            exporter,
            agents: AgentPool::new(),
            lifecycle: Lifecycle::default(),
            background: TaskTracker::new(),
        })
    }

    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    fn ws_dir(&self, id: &str) -> PathBuf {
        self.config.home.join("sandbox").join(id)
    }

    fn dirs(&self, id: &str) -> Dirs {
        let dir = self.ws_dir(id);
        Dirs {
            rootfs: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            run: dir.join("run"),
        }
    }

    fn cache_file(&self, key: &str) -> PathBuf {
        let name = LayerId::derive(&[b"cache-key", key.as_bytes()]);
        self.config.home.join("sandbox-cache").join(name.as_str())
    }

    fn load(&self, id: &str) -> Result<State, RuntimeError> {
        let path = self.ws_dir(id).join("state.json");
        let text = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RuntimeError::Gone {
                id: id.to_string(),
                detail: "no sandbox state".into(),
            },
            _ => RuntimeError::io(format!("cannot read `{}`", path.display()), e),
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| other(format!("malformed `{}`: {e}", path.display())))
    }

    fn save(&self, state: &State) -> Result<(), RuntimeError> {
        let path = self.ws_dir(&state.id).join("state.json");
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).map_err(other)?;
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_err(format!("cannot write `{}`", path.display())))
    }

    fn running(&self, state: &State) -> Option<Init> {
        state.init.filter(Init::alive)
    }

    fn shift(&self) -> (u32, u32) {
        match self.config.id_map {
            Some(map) => (map.host, map.size),
            None => (0, 0),
        }
    }

    /// The bottom of a new workspace's stack for `base`.
    fn base_stack(&self, base: &Base) -> Result<(Vec<LayerId>, bool), RuntimeError> {
        let (shift, range) = self.shift();
        let layer = match base {
            Base::Host => self.host_skeleton()?,
            Base::Tarball(path) => self
                .store
                .import_tarball(path, shift, range)
                .map_err(other)?,
            Base::Directory(path) => self.store.import_dir(path, shift, range).map_err(other)?,
            Base::Docker(image) => {
                let Some(exporter) = &self.exporter else {
                    return Err(RuntimeError::Unavailable {
                        runtime: NAME.into(),
                        reason: format!(
                            "image `{image}` needs a container engine to export it, and none is configured; \
                             `docker export` a container of it and give the tarball's path as the image"
                        ),
                    });
                };
                let image_id = exporter
                    .image_id(image)
                    .map_err(|e| RuntimeError::Unavailable {
                        runtime: NAME.into(),
                        reason: format!("cannot find image `{image}`: {e}"),
                    })?;
                let shift_text = format!("{shift}:{range}");
                let source = format!("image {image} {image_id}");
                self.store
                    .get_or_build(
                        LayerKind::Base,
                        &[b"image", image_id.as_bytes(), shift_text.as_bytes()],
                        &source,
                        |tree| {
                            let archive = tree.with_file_name("image.tar");
                            exporter.export(image, &archive).map_err(io::Error::other)?;
                            let file = io::BufReader::new(fs::File::open(&archive)?);
                            berth_layers::unpack_tarball(file, tree, shift, range)?;
                            fs::remove_file(&archive)
                        },
                    )
                    .map_err(other)?
            }
        };
        Ok((layer.stack(), base == &Base::Host))
    }

    /// The layer holding the mount points of the host base, and the
    /// workspace's own top-level directories owned by its root.
    fn host_skeleton(&self) -> Result<berth_layers::Layer, RuntimeError> {
        let (shift, _) = self.shift();
        let mut entries = Vec::new();
        for dir in plan::HOST_DIRS {
            let path = Path::new("/").join(dir);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(&path).unwrap_or_default();
                    entries.push(format!("link {dir} {}", target.display()));
                }
                Ok(m) if m.is_dir() => entries.push(format!("dir {dir}")),
                _ => {}
            }
        }
        for bind in &self.host.binds {
            let rel = bind.strip_prefix("/").unwrap_or(bind).display().to_string();
            if bind.is_dir() {
                entries.push(format!("dir {rel}"));
            } else {
                entries.push(format!("file {rel}"));
            }
        }
        entries.sort();
        entries.dedup();
        // The version names what `make` does beyond the entries.
        let key = format!("{shift}\nv2\n{}", entries.join("\n"));
        let make = |tree: &Path| -> io::Result<()> {
            for dir in ["proc", "dev", "tmp", "sys", "etc", "run", BERTH_DIR] {
                passable_dir(tree, Path::new(dir))?;
            }
            passable_dir(tree, &Path::new(BERTH_DIR).join("run"))?;
            for entry in &entries {
                let parts: Vec<&str> = entry.splitn(3, ' ').collect();
                match parts.as_slice() {
                    ["link", name, target] => std::os::unix::fs::symlink(target, tree.join(name))?,
                    ["dir", rel] => passable_dir(tree, Path::new(rel))?,
                    ["file", rel] => {
                        if let Some(parent) = Path::new(rel).parent() {
                            passable_dir(tree, parent)?;
                        }
                        fs::File::create(tree.join(rel))?;
                    }
                    _ => {}
                }
            }
            // The workspace's root owns its home, the default workspace
            // root and the temporary directories.
            for (dir, mode) in [
                (DEFAULT_ROOT.trim_start_matches('/'), 0o755),
                ("root", 0o700),
                ("home", 0o755),
                ("tmp", 0o1777),
                ("var/tmp", 0o1777),
            ] {
                let path = tree.join(dir);
                fs::create_dir_all(&path)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                std::os::unix::fs::lchown(&path, Some(shift), Some(shift))?;
            }
            Ok(())
        };
        self.store
            .get_or_build(
                LayerKind::HostSkeleton,
                &[b"host-skeleton", key.as_bytes()],
                "host",
                make,
            )
            .map_err(other)
    }

    /// Makes an empty upper directory (with the workspace root `root`
    /// owned by the workspace's root user) and a clean work directory.
    fn fresh_upper(&self, dirs: &Dirs, root: &str) -> Result<(), RuntimeError> {
        let (shift, _) = self.shift();
        let made = (|| -> io::Result<()> {
            for dir in [&dirs.rootfs, &dirs.run] {
                fs::create_dir_all(dir)?;
            }
            // The agent, as the workspace's root, makes its socket here.
            std::os::unix::fs::lchown(&dirs.run, Some(shift), Some(shift))?;
            // The overlay's root takes this directory's mode and owner:
            // the workspace's root owns it, and may make top-level
            // directories, as in a container.
            fs::create_dir(&dirs.upper)?;
            fs::set_permissions(&dirs.upper, fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::lchown(&dirs.upper, Some(shift), Some(shift))?;
            make_owned_dirs(&dirs.upper, Path::new(root.trim_start_matches('/')), shift)
        })();
        made.map_err(io_err(format!("cannot prepare `{}`", dirs.upper.display())))
    }

    /// Moves a directory away and removes it.
    fn discard(&self, dir: &Path) -> Result<(), RuntimeError> {
        if !dir.exists() {
            return Ok(());
        }
        let trash = self.store.staging_dir().map_err(other)?.join("discarded");
        fs::rename(dir, &trash).map_err(io_err(format!("cannot move `{}` away", dir.display())))?;
        // Removal is O(size); the workspace does not wait for it.
        std::thread::spawn(move || {
            let _ = tree::remove_tree(&trash);
        });
        Ok(())
    }

    fn set_refs(&self, id: &str, old: &[LayerId], new: &[LayerId]) -> Result<(), RuntimeError> {
        for layer in new {
            self.store.add_ref(layer, &holder(id)).map_err(other)?;
        }
        for layer in old.iter().filter(|l| !new.contains(l)) {
            self.store.remove_ref(layer, &holder(id)).map_err(other)?;
        }
        Ok(())
    }

    fn limits_of(&self, ws: &Workspace) -> cgroup::Limits {
        cgroup::Limits {
            memory: Some(self.config.defaults.memory(&ws.spec)),
            pids: Some(ws.spec.limits.pids.unwrap_or(DEFAULT_PIDS)),
            cpus: ws.spec.limits.cpus,
        }
    }

    /// The size of a workspace's `/dev/shm`: as recorded, else the
    /// default within its memory limit.
    fn shm_size(&self, state: &State) -> u64 {
        state.shm_size.unwrap_or_else(|| {
            let memory = state.limits.memory.unwrap_or(self.config.defaults.memory);
            self.config.defaults.shm.min(memory)
        })
    }

    fn check_mechanisms(&self) -> Result<(), RuntimeError> {
        if self.config.accept_weaker {
            return Ok(());
        }
        let refuse = |reason: String| RuntimeError::Unavailable {
            runtime: NAME.into(),
            reason: format!(
                "{reason}; set BERTH_SANDBOX_ACCEPT_WEAKER=1 to run with weaker isolation"
            ),
        };
        if let Err(reason) = &self.cgroups {
            return Err(refuse(reason.clone()));
        }
        if self.config.id_map.is_none() {
            return Err(refuse("no user namespace id range is configured".into()));
        }
        let max = fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
        if max.trim() == "0" {
            return Err(refuse(
                "user namespaces are disabled (user.max_user_namespaces = 0)".into(),
            ));
        }
        Ok(())
    }

    fn new_state(
        &self,
        ws: &Workspace,
        stack: Vec<LayerId>,
        provisioned: Vec<LayerId>,
        host_base: bool,
    ) -> State {
        State {
            version: STATE_VERSION,
            id: ws.id.to_string(),
            stack,
            provisioned,
            host_base,
            private_network: ws.spec.network.unwrap_or(Network::None) != Network::Host,
            limits: self.limits_of(ws),
            shm_size: Some(self.config.defaults.shm(&ws.spec)),
            init: None,
            instance: 0,
            standby: None,
        }
    }

    fn make_workspace(
        &self,
        ws: &Workspace,
        stack: Vec<LayerId>,
        provisioned: Vec<LayerId>,
    ) -> Result<serde_json::Value, RuntimeError> {
        let id = ws.id.to_string();
        let host_base = stack
            .first()
            .and_then(|l| self.store.get(l).ok())
            .is_some_and(|l| l.meta.kind == LayerKind::HostSkeleton);
        let dirs = self.dirs(&id);
        if self.ws_dir(&id).exists() {
            return Err(other(format!(
                "workspace {id} already exists in the sandbox runtime"
            )));
        }
        fs::create_dir_all(self.ws_dir(&id))
            .map_err(io_err("cannot create the workspace directory"))?;
        self.fresh_upper(&dirs, ws.spec.root())?;
        self.set_refs(&id, &[], &stack)?;
        self.set_refs(&id, &[], &provisioned)?;
        let state = self.new_state(ws, stack, provisioned, host_base);
        self.save(&state)?;
        Ok(self.info(&state))
    }

    fn info(&self, state: &State) -> serde_json::Value {
        serde_json::json!({
            "dir": self.ws_dir(&state.id),
            "stack": state.stack,
            "pid": state.init.map(|i| i.pid),
        })
    }

    fn config_path(&self, id: &str, instance: u64) -> PathBuf {
        self.ws_dir(id).join(format!("init.{instance}.json"))
    }

    fn work_dir(&self, id: &str, instance: u64) -> PathBuf {
        self.ws_dir(id).join(format!("work.{instance}"))
    }

    /// What the cgroups of workspace `id`'s instances are named after:
    /// the home's id and the workspace's, so that homes never share one.
    fn cgroup_prefix(&self, id: &str) -> String {
        format!("{}-{id}", self.home_id)
    }

    fn cgroup_name(&self, id: &str, instance: u64) -> String {
        format!("{}.{instance}", self.cgroup_prefix(id))
    }

    /// The upper and run directories a standby instance is made with, and
    /// that a reset moves into place.
    fn standby_dirs(&self, id: &str) -> Dirs {
        let dir = self.ws_dir(id);
        Dirs {
            upper: dir.join("upper.standby"),
            run: dir.join("run.standby"),
            ..self.dirs(id)
        }
    }

    /// Starts the workspace on its stack, unless it is running. A standby
    /// left by an interrupted reset is ended first.
    async fn start_locked(&self, ws: &Workspace) -> Result<State, RuntimeError> {
        let id = ws.id.to_string();
        let mut state = self.load(&id)?;
        if self.running(&state).is_some() {
            return Ok(state);
        }
        self.check_mechanisms()?;
        if let Some(standby) = state.standby.take() {
            self.end_instance(&id, standby.init).run_in_background();
            self.discard_standby_dirs(&id)?;
        }
        let dirs = self.dirs(&id);
        if !dirs.upper.exists() {
            // A reset interrupted between dropping and remaking it.
            self.fresh_upper(&dirs, ws.spec.root())?;
        }
        state.instance += 1;
        let stack = state.stack.clone();
        let init = self
            .launch(ws, &state, &stack, state.instance, dirs)
            .await?;
        state.init = Some(init);
        self.save(&state)?;
        Ok(state)
    }

    /// Starts instance `instance` of the workspace on `stack`, over the
    /// upper and run directories of `dirs`: its cgroups, its init config
    /// and the stage-1 init. Returns once the init has reported and, with
    /// an agent, the agent's socket is there.
    async fn launch(
        &self,
        ws: &Workspace,
        state: &State,
        stack: &[LayerId],
        instance: u64,
        dirs: Dirs,
    ) -> Result<Init, RuntimeError> {
        let id = ws.id.to_string();
        let dirs = Dirs {
            work: self.work_dir(&id, instance),
            ..dirs
        };
        let cgroups = match &self.cgroups {
            Ok(layout) => Some(
                layout
                    .create(&self.cgroup_name(&id, instance), state.limits)
                    .map_err(other)?,
            ),
            Err(_) => None,
        };
        let delegate_cgroup = match (&self.cgroups, &cgroups) {
            (Ok(layout), Some(made)) if self.commands_have_cgroups() => {
                if let Some(map) = self.config.id_map {
                    layout.delegate(made, map.host, map.host).map_err(other)?;
                }
                Some("--cgroup-fd".to_string())
            }
            _ => None,
        };
        let mut programs = vec![self.config.init_program.clone()];
        let command = match &self.config.agent_program {
            Some(agent) => {
                programs.push(agent.clone());
                vec![
                    plan::program_inside(agent),
                    "--socket".into(),
                    format!("/{BERTH_DIR}/run/agent.sock"),
                    "--root".into(),
                    ws.spec.root().into(),
                ]
            }
            None => {
                let mut reap = vec![plan::program_inside(&self.config.init_program)];
                reap.extend(self.config.init_args.iter().cloned());
                reap.push("reap".into());
                reap
            }
        };
        let lowers = self.store.trees_top_first(stack);
        let config = plan::plan(&PlanInput {
            dirs: &dirs,
            lowers,
            host_base: state.host_base.then_some(&self.host),
            id_map: self.config.id_map,
            private_network: state.private_network,
            hostname: format!("ws-{}", &id[id.len().saturating_sub(8)..]),
            cgroups: cgroups.as_ref(),
            shm_size: self.shm_size(state),
            seccomp: true,
            delegate_cgroup,
            programs,
            command,
            env: self.base_env(ws),
            root: ws.spec.root().into(),
        });
        let config_path = self.config_path(&id, instance);
        fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).map_err(other)?,
        )
        .map_err(io_err(format!("cannot write `{}`", config_path.display())))?;
        tree::remove_tree(&dirs.work).map_err(io_err("cannot clear the overlay work directory"))?;
        fs::create_dir_all(&dirs.work)
            .map_err(io_err("cannot create the overlay work directory"))?;

        let log = fs::File::create(self.ws_dir(&id).join("init.log"))
            .map_err(io_err("cannot create the init log"))?;
        let mut child = tokio::process::Command::new(&self.config.init_program)
            .args(&self.config.init_args)
            .arg("start")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                command: self.config.init_program.display().to_string(),
                source,
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| other("the init has no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| {
                other(format!(
                    "workspace {id}: the init did not report within {START_TIMEOUT:?}"
                ))
            })?
            .map_err(io_err("cannot read the init's report"))?
            .unwrap_or_default();
        let started = line
            .strip_prefix("started ")
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        let Some(pid) = started else {
            if let Some(cgroups) = &cgroups {
                let _ = cgroup::kill_and_remove(cgroups, KILL_PATIENCE);
            }
            let reason = line.strip_prefix("failed: ").unwrap_or(&line).to_string();
            return Err(RuntimeError::Unavailable {
                runtime: NAME.into(),
                reason: format!("workspace {id} did not start: {reason}"),
            });
        };
        let Some(start_time) = start_time(pid) else {
            // Its stage-1 process ends right after it.
            let _ = child.wait().await;
            let error = self.ended_as_started(&id, cgroups.as_ref(), state.limits);
            if let Some(cgroups) = &cgroups {
                let _ = cgroup::kill_and_remove(cgroups, KILL_PATIENCE);
            }
            return Err(error);
        };
        let init = Init {
            pid,
            start_time,
            instance,
        };
        if self.config.agent_program.is_some() {
            // The stage-1 process ends when the workspace's init does: a
            // workspace that dies while its agent starts says so at once,
            // and why.
            let stage1 = child
                .id()
                .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
                .and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
                });
            let failed = match self
                .wait_for_socket(&dirs.run.join("agent.sock"), stage1)
                .await
            {
                Ok(true) => None,
                Ok(false) => {
                    // Already ended: this only reaps it.
                    let _ = child.wait().await;
                    Some(self.ended_as_started(&id, cgroups.as_ref(), state.limits))
                }
                Err(e) => Some(e),
            };
            if let Some(error) = failed {
                self.end_instance(&id, init).run_in_background();
                return Err(error);
            }
        }
        // The init stays as the workspace's parent; tokio reaps it when it
        // ends, whoever ends it.
        drop(child);
        Ok(init)
    }

    /// Waits until the agent has made its socket (`Ok(true)`), or until the
    /// process behind the pidfd `unless` ends (`Ok(false)`).
    async fn wait_for_socket(
        &self,
        socket: &Path,
        unless: Option<OwnedFd>,
    ) -> Result<bool, RuntimeError> {
        let socket = socket.to_path_buf();
        let (reply, answer) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let (waited, watch) = wait_for_entry(&socket, unless.as_ref(), START_TIMEOUT);
            let _ = reply.send(waited);
            // Closing an inotify instance waits for an SRCU grace period,
            // which takes milliseconds: the start does not wait for it.
            drop(watch);
        });
        answer.await.map_err(other)?
    }

    /// The error of an instance that ended as it started, with why: the
    /// memory limit when the kernel's OOM killer ended some of it, else
    /// what its init wrote last.
    fn ended_as_started(
        &self,
        id: &str,
        cgroups: Option<&cgroup::Cgroups>,
        limits: cgroup::Limits,
    ) -> RuntimeError {
        let why = match (&self.cgroups, cgroups, limits.memory) {
            (Ok(layout), Some(cgroups), Some(memory)) if layout.oom_kills(cgroups) > 0 => format!(
                "it ran out of memory under its limit of {} (limits.memory)",
                berth_core::spec::format_bytes(memory)
            ),
            _ => {
                let log = log_tail(&self.ws_dir(id).join("init.log"));
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                match lines.len() {
                    0 => "it ended, saying nothing".into(),
                    n => format!("it ended: {}", lines[n.saturating_sub(5)..].join("; ")),
                }
            }
        };
        RuntimeError::Unavailable {
            runtime: NAME.into(),
            reason: format!("workspace {id} did not start: {why}"),
        }
    }

    /// Kills one instance and returns the rest of its teardown: its
    /// cgroups, overlay work directory and init config.
    fn end_instance(&self, id: &str, init: Init) -> Teardown {
        kill(init);
        Teardown {
            cgroups: match &self.cgroups {
                Ok(layout) => vec![layout.cgroups(&self.cgroup_name(id, init.instance))],
                Err(_) => Vec::new(),
            },
            inits: vec![init],
            paths: vec![
                self.work_dir(id, init.instance),
                self.config_path(id, init.instance),
            ],
        }
    }

    /// Discards a standby's upper and run directories.
    fn discard_standby_dirs(&self, id: &str) -> Result<(), RuntimeError> {
        let dirs = self.standby_dirs(id);
        self.discard(&dirs.upper)?;
        self.discard(&dirs.run)
    }

    /// Ends every process of the workspace, its standby's included, and
    /// removes the cgroups, overlay work directories and init configs of
    /// all its instances. With `wait`, returns once all is gone;
    /// otherwise the teardown finishes in the background (the processes
    /// are already killed, and the next instance uses fresh names).
    fn stop_locked(&self, id: &str, wait: bool) -> Result<State, RuntimeError> {
        self.agents.forget(id);
        let mut state = self.load(id)?;
        // `kill` and the teardown pass over inits that have already ended.
        let inits: Vec<Init> = [state.init, state.standby.as_ref().map(|s| s.init)]
            .into_iter()
            .flatten()
            .collect();
        inits.iter().copied().for_each(kill);
        state.standby = None;
        self.discard_standby_dirs(id)?;
        // Every instance, also those a berth killed mid-start left behind.
        let paths: Vec<PathBuf> = fs::read_dir(self.ws_dir(id))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.starts_with("work")
                            || (name.starts_with("init.") && name.ends_with(".json"))
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        let teardown = Teardown {
            cgroups: match &self.cgroups {
                Ok(layout) => layout.instances(&self.cgroup_prefix(id)),
                Err(_) => Vec::new(),
            },
            inits,
            paths,
        };
        if wait {
            teardown.run()?;
        } else {
            teardown.run_in_background();
        }
        state.init = None;
        self.save(&state)?;
        Ok(state)
    }

    /// Resets a running workspace by switching to its standby, when it has
    /// one on its provisioned stack: the current instance is killed and
    /// torn down in the background, the standby's directories take the
    /// place of its own, and no start is on the way. Returns whether it
    /// switched.
    ///
    /// Each step leaves a state a start recovers from: without the upper
    /// directory, a start makes an empty one on the recorded stack, which
    /// is the reset's outcome; a standby still recorded is ended.
    fn switch_to_standby(&self, state: &mut State) -> Result<bool, RuntimeError> {
        let id = state.id.clone();
        let (Some(current), Some(standby)) = (self.running(state), state.standby.clone()) else {
            return Ok(false);
        };
        let dirs = self.dirs(&id);
        let standby_dirs = self.standby_dirs(&id);
        if !standby.init.alive()
            || standby.stack != state.provisioned
            || !standby_dirs.upper.is_dir()
        {
            state.standby = None;
            self.end_instance(&id, standby.init).run_in_background();
            self.discard_standby_dirs(&id)?;
            self.save(state)?;
            return Ok(false);
        }
        self.agents.forget(&id);
        self.end_instance(&id, current).run_in_background();
        self.discard(&dirs.upper)?;
        let old = std::mem::replace(&mut state.stack, standby.stack.clone());
        state.init = None;
        self.save(state)?;
        if old != state.provisioned {
            self.set_refs(&id, &old, &state.provisioned)?;
        }
        self.discard(&dirs.run)?;
        for (from, to) in [
            (&standby_dirs.upper, &dirs.upper),
            (&standby_dirs.run, &dirs.run),
        ] {
            fs::rename(from, to).map_err(io_err(format!(
                "cannot move `{}` to `{}`",
                from.display(),
                to.display()
            )))?;
        }
        state.init = Some(standby.init);
        state.standby = None;
        self.save(state)?;
        Ok(true)
    }

    /// Makes a standby for a running workspace that has none; does nothing
    /// when it is not running or already has a usable one.
    async fn make_standby(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let id = ws.id.to_string();
        let mut state = self.load(&id)?;
        let Some(current) = self.running(&state) else {
            return Ok(());
        };
        if state.standby.is_some() {
            return Ok(());
        }
        // A berth killed while making a standby may have left one running
        // unrecorded: every instance but the current one ends.
        if let Ok(layout) = &self.cgroups {
            let keep = layout.cgroups(&self.cgroup_name(&id, current.instance));
            Teardown {
                cgroups: layout
                    .instances(&self.cgroup_prefix(&id))
                    .into_iter()
                    .filter(|cgroups| *cgroups != keep)
                    .collect(),
                inits: Vec::new(),
                paths: Vec::new(),
            }
            .run_in_background();
        }
        self.discard_standby_dirs(&id)?;
        let dirs = self.standby_dirs(&id);
        self.fresh_upper(&dirs, ws.spec.root())?;
        state.instance += 1;
        self.save(&state)?;
        let stack = state.provisioned.clone();
        let init = self
            .launch(ws, &state, &stack, state.instance, dirs)
            .await?;
        state.standby = Some(Standby { init, stack });
        self.save(&state)
    }

    fn base_env(&self, ws: &Workspace) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ("HOME".to_string(), "/root".to_string()),
            ("USER".to_string(), "root".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        for (key, value) in &ws.spec.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        env
    }

    /// Freezes the upper directory of a stopped workspace into a layer on
    /// its stack, which becomes its new stack, with a fresh upper whose
    /// workspace root is `root`.
    fn freeze_upper(
        &self,
        state: &mut State,
        kind: LayerKind,
        root: &str,
    ) -> Result<berth_layers::Layer, RuntimeError> {
        let dirs = self.dirs(&state.id);
        let layer = self
            .store
            .freeze(
                &dirs.upper,
                &state.stack,
                kind,
                &format!("workspace {}", state.id),
            )
            .map_err(other)?;
        self.fresh_upper(&dirs, root)?;
        // The layers below stay referenced: they are the new layer's
        // parents, and the caller decides what the provisioned stack is.
        let new = layer.stack();
        self.set_refs(&state.id, &[], &new)?;
        state.stack = new;
        Ok(layer)
    }

    fn cached_layer(&self, key: &str) -> Result<Option<berth_layers::Layer>, RuntimeError> {
        let file = self.cache_file(key);
        let text = match fs::read_to_string(&file) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io_err(format!("cannot read cache entry `{key}`")))?,
        };
        let id = LayerId::parse(text.trim()).map_err(other)?;
        match self.store.get(&id) {
            Ok(layer) => Ok(Some(layer)),
            Err(berth_layers::StoreError::Missing(_)) => Ok(None),
            Err(e) => Err(other(e)),
        }
    }

    /// Freezes a copy of the workspace's upper directory on top of its
    /// stack: O(changed files). A running workspace is paused meanwhile
    /// (cgroup freezer), so the copy is one consistent state.
    fn copy_upper(
        &self,
        state: &State,
        kind: LayerKind,
    ) -> Result<berth_layers::Layer, RuntimeError> {
        let dirs = self.dirs(&state.id);
        let paused = match (&self.cgroups, self.running(state)) {
            (Ok(layout), Some(init)) => {
                let cgroups = layout.cgroups(&self.cgroup_name(&state.id, init.instance));
                layout
                    .freeze(&cgroups, true)
                    .map_err(other)?
                    .then_some((layout, cgroups))
            }
            _ => None,
        };
        let copied = self
            .store
            .freeze_copy(
                &dirs.upper,
                &state.stack,
                kind,
                &format!("workspace {}", state.id),
            )
            .map_err(other);
        if let Some((layout, cgroups)) = paused {
            layout.freeze(&cgroups, false).map_err(other)?;
        }
        copied
    }

    /// The changes under the workspace root `root`; under `/`, berth's
    /// own directory is left out.
    fn changes_of(&self, state: &State, root: &str) -> Result<Vec<Change>, RuntimeError> {
        let dirs = self.dirs(&state.id);
        let lowers = self.store.trees_top_first(&state.stack);
        let under = Path::new(root.trim_start_matches('/'));
        let mut changes = berth_layers::changes(&dirs.upper, &lowers, under).map_err(io_err(
            format!("cannot list the changes of workspace {}", state.id),
        ))?;
        if under.as_os_str().is_empty() {
            changes.retain(|c| !Path::new(&c.path).starts_with(BERTH_DIR));
        }
        Ok(changes)
    }

    /// Whether each command gets a cgroup of its own: the agent runs
    /// them, and this host has cgroup v2 beneath which it can make them.
    fn commands_have_cgroups(&self) -> bool {
        self.config.agent_program.is_some()
            && self
                .cgroups
                .as_ref()
                .is_ok_and(|layout| layout.commands_root(&layout.cgroups("probe")).is_some())
    }

    fn isolation_of(&self, state: &State, spec: &berth_core::Spec) -> Isolation {
        let mut namespaces = vec!["mount", "pid", "uts", "ipc", "cgroup"];
        if self.config.id_map.is_some() {
            namespaces.insert(0, "user");
        }
        if state.private_network {
            namespaces.push("net");
        }
        let mut notes = Vec::new();
        let mut limits = Vec::new();
        match &self.cgroups {
            Ok(layout) => {
                if let Some(memory) = state.limits.memory {
                    limits.push(format!("memory={memory}"));
                }
                if let Some(pids) = state.limits.pids {
                    limits.push(format!("pids={pids}"));
                }
                if let Some(cpus) = state.limits.cpus {
                    limits.push(format!("cpus={cpus}"));
                }
                notes.push(format!("limits through cgroup {}", layout.version()));
            }
            Err(reason) => notes.push(format!("no limits: {reason}")),
        }
        let shm = self.shm_size(state);
        limits.push(format!("shm={shm}"));
        if let (Ok(_), Some(memory)) = (&self.cgroups, state.limits.memory) {
            notes.extend(ResourceDefaults::notes(spec, memory, shm));
        }
        match self.config.id_map {
            Some(map) => notes.push(format!("root inside is host uid {}", map.host)),
            None => notes.push(
                "no user namespace: root inside is host root with reduced capabilities".into(),
            ),
        }
        notes.push("Docker's default capabilities and seccomp allow list; no_new_privs".into());
        notes.push(if self.commands_have_cgroups() {
            "each command, session and terminal runs in a cgroup of its own (cgroup v2): \
             a timeout or a cancel ends everything it started, however it detached"
                .into()
        } else {
            "no cgroup v2 for commands here: a timeout or a cancel ends the command's \
             process group only, and what left it runs until the workspace stops"
                .into()
        });
        Isolation {
            isolated: true,
            namespaces: namespaces.into_iter().map(String::from).collect(),
            limits,
            seccomp: true,
            network: if state.private_network {
                "none (loopback only)"
            } else {
                "host"
            }
            .into(),
            notes,
        }
    }

    /// Rebuilds a workspace on `stack` with an empty upper directory,
    /// restarting it if it was running.
    async fn restack(&self, ws: &Workspace, stack: Vec<LayerId>) -> Result<(), RuntimeError> {
        let id = ws.id.to_string();
        let was_running = self.running(&self.load(&id)?).is_some();
        let mut state = self.stop_locked(&id, false)?;
        let dirs = self.dirs(&id);
        self.discard(&dirs.upper)?;
        self.fresh_upper(&dirs, ws.spec.root())?;
        let old = state.stack.clone();
        self.set_refs(&id, &[], &stack)?;
        state.stack = stack;
        let keep: Vec<LayerId> = state
            .stack
            .iter()
            .chain(&state.provisioned)
            .cloned()
            .collect();
        self.set_refs(&id, &old, &keep)?;
        self.save(&state)?;
        if was_running {
            self.start_locked(ws).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Runtime for SandboxRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Linux namespaces, overlay layers, cgroups and seccomp; no daemon"
    }

    async fn available(&self) -> Result<(), String> {
        if !rustix::process::geteuid().is_root() {
            return Err(
                "the sandbox runtime needs root (user namespaces are mapped from root)".into(),
            );
        }
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.contains("overlay") {
            return Err("overlayfs is not available (modprobe overlay)".into());
        }
        if !self.config.init_program.is_file() {
            return Err(format!(
                "the stage-1 init `{}` is missing (build berth-sandbox-init or set BERTH_SANDBOX_INIT)",
                self.config.init_program.display()
            ));
        }
        self.check_mechanisms().map_err(|e| e.to_string())
    }

    async fn create(
        &self,
        ws: &Workspace,
        from_cache: Option<&str>,
    ) -> Result<serde_json::Value, RuntimeError> {
        let (stack, _) = match from_cache {
            Some(key) => {
                let layer = self
                    .cached_layer(key)?
                    .ok_or_else(|| other(format!("no cache entry `{key}`")))?;
                (layer.stack(), false)
            }
            None => {
                let base = Base::parse(ws.spec.image.as_deref());
                let store = self.clone_handle();
                tokio::task::spawn_blocking(move || store.base_stack(&base))
                    .await
                    .map_err(other)??
            }
        };
        self.make_workspace(ws, stack.clone(), stack)
    }

    /// None: a sandbox's files hold symlinks the workspace made, which a
    /// host process (running as host root) would follow to host paths.
    /// Clones go in through [`Runtime::import`] instead.
    fn agent_socket(&self, ws: &Workspace) -> Option<PathBuf> {
        self.config.agent_program.as_ref()?;
        Some(self.dirs(ws.id.as_str()).run.join("agent.sock"))
    }

    fn host_path(&self, _ws: &Workspace) -> Option<PathBuf> {
        None
    }

    async fn import(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        let id = ws.id.to_string();
        let state = self.load(&id)?;
        let (shift, range) = self.shift();
        let dirs = self.dirs(&id);
        let host_dir = host_dir.to_path_buf();
        let rel = Path::new(ws.spec.root().trim_start_matches('/')).join(dest.as_str());
        if self.running(&state).is_some() {
            // A live overlay must not have its upper directory changed
            // underneath, and its merged view is the workspace's to shape.
            return Err(RuntimeError::Other(format!(
                "workspace {id} is running; import into it before starting it"
            )));
        }
        let lowers = self.store.trees_top_first(&state.stack);
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            tree::shift_ownership(&host_dir, shift, range).map_err(io_err(format!(
                "cannot hand `{}` to the workspace's root",
                host_dir.display()
            )))?;
            // The parents first: none may be a link, or what follows
            // would reach through it to the host.
            if let Some(parent) = rel.parent() {
                make_owned_dirs(&dirs.upper, parent, shift)
                    .map_err(io_err("cannot create the destination"))?;
            }
            let target = dirs.upper.join(&rel);
            tree::remove_tree(&target).map_err(io_err("cannot replace the destination"))?;
            if let Err(e) = fs::rename(&host_dir, &target) {
                if e.raw_os_error() != Some(libc::EXDEV) {
                    return Err(RuntimeError::io(
                        format!("cannot move `{}` into the workspace", host_dir.display()),
                        e,
                    ));
                }
                tree::copy_tree(&host_dir, &target)
                    .map_err(io_err("cannot copy into the workspace"))?;
                tree::remove_tree(&host_dir)
                    .map_err(io_err("cannot remove the imported directory"))?;
            }
            // Whatever the layers held there is replaced, not merged.
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir())
                && tree::lookup(&lowers, &rel).ok().flatten().is_some()
            {
                tree::set_opaque(&target).map_err(io_err("cannot mark the destination opaque"))?;
            }
            Ok(())
        })
        .await
        .map_err(other)?
    }

    async fn start(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let state = self.start_locked(ws).await?;
        Ok(self.info(&state))
    }

    async fn stop(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let this = self.clone_handle();
        let id = ws.id.to_string();
        tokio::task::spawn_blocking(move || this.stop_locked(&id, true).map(drop))
            .await
            .map_err(other)?
    }

    async fn remove(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let id = ws.id.to_string();
        let state = match self.load(&id) {
            Ok(state) => state,
            Err(RuntimeError::Gone { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let this = self.clone_handle();
        let id2 = id.clone();
        tokio::task::spawn_blocking(move || this.stop_locked(&id2, true))
            .await
            .map_err(other)??;
        let layers: Vec<LayerId> = state
            .stack
            .iter()
            .chain(&state.provisioned)
            .cloned()
            .collect();
        self.set_refs(&id, &layers, &[])?;
        self.discard(&self.ws_dir(&id))?;
        self.lifecycle.forget(&id);
        self.collect_released(layers).await;
        Ok(())
    }

    async fn settle(&self) {
        self.background.close();
        self.background.wait().await;
        self.background.reopen();
    }

    async fn exists(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        Ok(self.ws_dir(ws.id.as_str()).join("state.json").is_file())
    }

    fn isolation(&self, ws: &Workspace) -> Isolation {
        match self.load(ws.id.as_str()) {
            Ok(state) => self.isolation_of(&state, &ws.spec),
            Err(e) => Isolation {
                isolated: true,
                network: "unknown".into(),
                notes: vec![e.to_string()],
                ..Isolation::default()
            },
        }
    }

    async fn exec(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        if let Some(agent) = self.agent(ws).await? {
            return Ok(agent.exec(request, cancel).await?);
        }
        let id = ws.id.to_string();
        let state = self.load(&id)?;
        let init = self.running(&state).ok_or_else(|| RuntimeError::Gone {
            id: id.clone(),
            detail: "it is not running".into(),
        })?;
        let cwd = inside_path(
            ws,
            &WorkspacePath::parse(request.cwd.as_deref().unwrap_or_default())?,
        );
        let mut argv = vec![self.config.init_program.display().to_string()];
        argv.extend(self.config.init_args.iter().cloned());
        argv.extend([
            "exec".into(),
            self.config_path(&id, init.instance).display().to_string(),
            init.pid.to_string(),
            cwd,
            "--".into(),
        ]);
        argv.extend(request.command.to_argv());
        let mut env = self.base_env(ws);
        for (key, value) in request.env {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        let running = berth_exec::spawn(
            berth_exec::Spawn {
                argv,
                cwd: PathBuf::from("/"),
                env,
                stdin: match request.stdin {
                    Some(bytes) => berth_exec::Stdin::Bytes(bytes),
                    None => berth_exec::Stdin::Null,
                },
                timeout: request.timeout_ms.map(Duration::from_millis),
                output_limit: request.output_limit,
                grace: berth_exec::DEFAULT_GRACE,
                cgroup: None,
            },
            cancel,
        )
        .map_err(|e| RuntimeError::Spawn {
            command: request.command.display(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(running.events)
    }

    async fn read_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<ReadStream, RuntimeError> {
        if let Some(agent) = self.agent(ws).await? {
            return Ok(agent.read_file(path).await?);
        }
        let inside = inside_path(ws, path);
        let (code, out, err) = self
            .run_inside(ws, vec!["cat".into(), "--".into(), inside], None)
            .await?;
        match code {
            0 => Ok(ReadStream::from(out)),
            _ => Err(file_error(path, &err)),
        }
    }

    async fn write_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        if let Some(agent) = self.agent(ws).await? {
            return Ok(agent.write_file(path, &data, None).await?);
        }
        let inside = inside_path(ws, path);
        let script = "mkdir -p -- \"$(dirname -- \"$1\")\" && cat > \"$1\"";
        let argv = vec!["sh".into(), "-c".into(), script.into(), "sh".into(), inside];
        let (code, _, err) = self.run_inside(ws, argv, Some(data)).await?;
        match code {
            0 => Ok(()),
            _ => Err(file_error(path, &err)),
        }
    }

    async fn list_files(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError> {
        if let Some(agent) = self.agent(ws).await? {
            return Ok(agent.list_dir(dir).await?);
        }
        let inside = inside_path(ws, dir);
        let argv = vec![
            "find".into(),
            inside,
            "-mindepth".into(),
            "1".into(),
            "-maxdepth".into(),
            "1".into(),
            "-printf".into(),
            "%y %s %m %T@ %f\\0".into(),
        ];
        let (code, out, err) = self.run_inside(ws, argv, None).await?;
        if code != 0 {
            return Err(file_error(dir, &err));
        }
        let mut entries = Vec::new();
        for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let text = String::from_utf8_lossy(record);
            let mut parts = text.splitn(5, ' ');
            let (Some(kind), Some(size), Some(mode), Some(time), Some(name)) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                continue;
            };
            let path = if dir.as_str().is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", dir.as_str())
            };
            entries.push(FileEntry {
                path,
                kind: match kind {
                    "f" => FileKind::File,
                    "d" => FileKind::Dir,
                    "l" => FileKind::Symlink,
                    _ => FileKind::Other,
                },
                size: size.parse().unwrap_or(0),
                mode: u32::from_str_radix(mode, 8).unwrap_or(0),
                modified: time
                    .split('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    async fn remove_file(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError> {
        if let Some(agent) = self.agent(ws).await? {
            return Ok(agent.remove(path).await?);
        }
        if path.as_str().is_empty() {
            return Err(RuntimeError::WrongKind {
                path: String::new(),
                problem: "the workspace root, which cannot be removed",
            });
        }
        let inside = inside_path(ws, path);
        let argv = vec![
            "sh".into(),
            "-c".into(),
            "test -e \"$1\" -o -L \"$1\" && rm -rf -- \"$1\"".into(),
            "sh".into(),
            inside,
        ];
        let (code, _, err) = self.run_inside(ws, argv, None).await?;
        match code {
            0 => Ok(()),
            _ if err.is_empty() => Err(RuntimeError::NotFound(path.as_str().to_string())),
            _ => Err(file_error(path, &err)),
        }
    }

    async fn save_cache(&self, ws: &Workspace, key: &str) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let id = ws.id.to_string();
        let was_running = self.running(&self.load(&id)?).is_some();
        let mut state = self.stop_locked(&id, true)?;
        let layer = self.freeze_upper(&mut state, LayerKind::Cache, ws.spec.root())?;
        let old_provisioned = std::mem::replace(&mut state.provisioned, state.stack.clone());
        let keep: Vec<LayerId> = state.stack.clone();
        self.set_refs(&id, &old_provisioned, &keep)?;
        self.save(&state)?;
        self.store
            .add_ref(&layer.meta.id, &cache_holder(key))
            .map_err(other)?;
        let file = self.cache_file(key);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create the cache directory"))?;
        }
        fs::write(&file, layer.meta.id.as_str())
            .map_err(io_err(format!("cannot record cache entry `{key}`")))?;
        if was_running {
            self.start_locked(ws).await?;
        }
        Ok(())
    }

    async fn has_cache(&self, key: &str) -> bool {
        matches!(self.cached_layer(key), Ok(Some(_)))
    }

    async fn remove_cache(&self, key: &str) -> Result<(), RuntimeError> {
        let file = self.cache_file(key);
        let mut released = Vec::new();
        if let Ok(Some(layer)) = self.cached_layer(key) {
            self.store
                .remove_ref(&layer.meta.id, &cache_holder(key))
                .map_err(other)?;
            released.push(layer.meta.id);
        }
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(RuntimeError::io("cannot remove the cache entry", e));
            }
            _ => {}
        }
        self.collect_released(released).await;
        Ok(())
    }

    async fn snapshot(&self, ws: &Workspace) -> Result<Snapshot, RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let state = self.load(ws.id.as_str())?;
        let layer = self.copy_upper(&state, LayerKind::Snapshot)?;
        let holder = format!("snapshot:{}", layer.meta.id);
        self.store.add_ref(&layer.meta.id, &holder).map_err(other)?;
        Ok(Snapshot {
            id: layer.meta.id.to_string(),
            workspace: ws.id.clone(),
            created_at: layer.meta.created_at,
        })
    }

    async fn reset(&self, ws: &Workspace, to: Option<&str>) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let mut state = self.load(ws.id.as_str())?;
        if to.is_none() && self.switch_to_standby(&mut state)? {
            self.prepare_standby(ws);
            return Ok(());
        }
        let stack = match to {
            None => state.provisioned.clone(),
            Some(snapshot) => {
                let id = LayerId::parse(snapshot).map_err(other)?;
                let layer = self.store.get(&id).map_err(other)?;
                if layer.meta.kind != LayerKind::Snapshot {
                    return Err(other(format!("{snapshot} is not a snapshot")));
                }
                layer.stack()
            }
        };
        self.restack(ws, stack).await?;
        self.prepare_standby(ws);
        Ok(())
    }

    async fn changes(&self, ws: &Workspace) -> Result<Vec<Change>, RuntimeError> {
        let state = self.load(ws.id.as_str())?;
        let this = self.clone_handle();
        let root = ws.spec.root().to_string();
        tokio::task::spawn_blocking(move || this.changes_of(&state, &root))
            .await
            .map_err(other)?
    }

    async fn export_changes(
        &self,
        ws: &Workspace,
        target: &ExportTarget,
    ) -> Result<ExportSummary, RuntimeError> {
        let state = self.load(ws.id.as_str())?;
        let this = self.clone_handle();
        let target = target.clone();
        let (shift, range) = self.shift();
        let under = ws.spec.root().to_string();
        tokio::task::spawn_blocking(move || {
            let changes = this.changes_of(&state, &under)?;
            let upper = this.dirs(&state.id).upper;
            let under = Path::new(under.trim_start_matches('/'));
            match &target {
                ExportTarget::Archive { path } => berth_layers::export_archive(
                    &upper,
                    under,
                    &changes,
                    path,
                    IdShift { shift, range },
                )
                .map_err(io_err(format!("cannot export to `{}`", path.display()))),
                ExportTarget::Directory { path } => {
                    berth_layers::export_dir(&upper, under, &changes, path)
                        .map_err(io_err(format!("cannot export to `{}`", path.display())))
                }
            }
        })
        .await
        .map_err(other)?
    }

    async fn fork(
        &self,
        origin: &Workspace,
        ws: &Workspace,
    ) -> Result<serde_json::Value, RuntimeError> {
        let _guard = self.lifecycle.one(origin.id.as_str()).await;
        let state = self.load(origin.id.as_str())?;
        let layer = self.copy_upper(&state, LayerKind::Snapshot)?;
        self.make_workspace(ws, layer.stack(), state.provisioned.clone())
    }

    async fn remove_snapshot(&self, id: &str) -> Result<(), RuntimeError> {
        // An id that is no layer's, or a layer no snapshot holds, is no
        // snapshot of this runtime.
        let not_found = || RuntimeError::NotFound(id.to_string());
        let layer = LayerId::parse(id).map_err(|_| not_found())?;
        let holder = format!("snapshot:{layer}");
        if !self.store.refs(&layer).map_err(other)?.contains(&holder) {
            return Err(not_found());
        }
        self.store.remove_ref(&layer, &holder).map_err(other)?;
        self.collect_released(vec![layer]).await;
        Ok(())
    }

    async fn gc(&self, live: &[Workspace]) -> Result<GcReport, RuntimeError> {
        let _guard = self.lifecycle.every().await;
        let live_ids: BTreeSet<String> = live.iter().map(|w| w.id.to_string()).collect();
        let mut report = GcReport::default();
        let sandbox = self.config.home.join("sandbox");
        for entry in fs::read_dir(&sandbox).map_err(io_err("cannot list workspaces"))? {
            let entry = entry.map_err(io_err("cannot list workspaces"))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if live_ids.contains(&id) {
                continue;
            }
            if let Ok(state) = self.stop_locked(&id, true) {
                let layers: Vec<LayerId> = state
                    .stack
                    .iter()
                    .chain(&state.provisioned)
                    .cloned()
                    .collect();
                self.set_refs(&id, &layers, &[])?;
            }
            self.discard(&entry.path())?;
            report.orphans.push(id);
        }
        let holders: BTreeSet<String> = live_ids.iter().map(|id| holder(id)).collect();
        self.store
            .drop_holders_except("workspace:", &holders)
            .map_err(other)?;
        report.removed = self
            .store
            .gc()
            .map_err(other)?
            .into_iter()
            .map(String::from)
            .collect();
        Ok(report)
    }
}

/// The absolute path inside of a path of workspace `ws`.
fn inside_path(ws: &Workspace, path: &WorkspacePath) -> String {
    match (ws.spec.root(), path.as_str()) {
        (root, "") => root.to_string(),
        ("/", rel) => format!("/{rel}"),
        (root, rel) => format!("{root}/{rel}"),
    }
}

/// Makes the directories of `rel` under `base` that are missing, each
/// owned by the workspace's root (`shift`) with mode 0755, so that the
/// workspace can write in them. An existing component must be a real
/// directory: a link the workspace made is never followed.
fn make_owned_dirs(base: &Path, rel: &Path, shift: u32) -> io::Result<()> {
    let mut dir = base.to_path_buf();
    for part in rel.components() {
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                std::os::unix::fs::lchown(&dir, Some(shift), Some(shift))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&dir)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("`{}` is not a directory", dir.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn file_error(path: &WorkspacePath, stderr: &[u8]) -> RuntimeError {
    let text = String::from_utf8_lossy(stderr);
    if text.contains("No such file") {
        RuntimeError::NotFound(path.as_str().to_string())
    } else if text.contains("Is a directory") {
        RuntimeError::WrongKind {
            path: path.as_str().to_string(),
            problem: "a directory",
        }
    } else if text.contains("Not a directory") {
        RuntimeError::WrongKind {
            path: path.as_str().to_string(),
            problem: "not a directory",
        }
    } else {
        RuntimeError::Other(format!("`{}`: {}", path.as_str(), text.trim()))
    }
}
