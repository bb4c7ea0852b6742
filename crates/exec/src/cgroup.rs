//! A cgroup of its own for each command, so that ending a command ends
//! every process it started however it detached: a new session, a double
//! fork, a child that ignores SIGTERM. A process cannot leave its cgroup
//! without write access to the cgroup files, which only the holder of
//! [`Cgroups`] has, and cgroup v2's `cgroup.kill` kills everything in a
//! cgroup at once, including what forks while it is being killed.
//!
//! [`Cgroups`] is a directory of cgroup v2 delegated to this process (the
//! runtime made it, or handed it over as an open descriptor); each command
//! gets a cgroup beneath it, which its process enters between fork and
//! exec. A command's cgroup is removed once it is empty; one whose
//! background processes outlive the command stays until they end, and is
//! removed by a later command.
#![expect(
    unsafe_code,
    reason = "a pre_exec hook writes to an open descriptor between fork and exec"
)]

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::process::{Pid, Signal};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// cgroup v2's filesystem type (`statfs`).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[allow(
    clippy::unnecessary_cast,
    reason = "the type of f_type differs between C libraries"
)]
fn is_cgroup2(fs: &rustix::fs::StatFs) -> bool {
    fs.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// How often an ending command's cgroup is looked at until it is empty.
const EMPTY_POLL: Duration = Duration::from_millis(5);

/// Where commands get cgroups of their own.
#[derive(Debug)]
pub struct Cgroups {
    dir: OwnedFd,
    /// Names start with it, so that processes sharing the directory never
    /// pick the same name.
    prefix: String,
    next: AtomicU64,
    /// Cgroups whose command ended while processes of it still ran.
    lingering: Mutex<Vec<String>>,
}

/// One command's cgroup; removed when dropped, once empty.
#[derive(Debug)]
pub struct CommandCgroup {
    parent: Arc<Cgroups>,
    name: String,
    /// `cgroup.procs`, open for writing: a process enters by writing `0`.
    procs: OwnedFd,
}

impl Cgroups {
    /// Commands' cgroups beneath `dir`, an open directory of cgroup v2 this
    /// process may create cgroups in and move its children into. Checks
    /// that it is one, and that this kernel can kill a cgroup at once.
    pub fn new(dir: OwnedFd) -> io::Result<Arc<Cgroups>> {
        if !is_cgroup2(&rustix::fs::fstatfs(&dir)?) {
            return Err(io::Error::other("not a directory of cgroup v2"));
        }
        let cgroups = Arc::new(Cgroups {
            dir,
            prefix: format!("{}.", std::process::id()),
            next: AtomicU64::new(1),
            lingering: Mutex::new(Vec::new()),
        });
        // `cgroup.kill` (Linux 5.14) exists in every cgroup but the root.
        let probe = cgroups.make()?;
        let kill = rustix::fs::accessat(
            probe.dir()?,
            "cgroup.kill",
            rustix::fs::Access::WRITE_OK,
            AtFlags::empty(),
        );
        drop(probe);
        kill.map_err(|e| io::Error::other(format!("no cgroup.kill: {e}")))?;
        Ok(cgroups)
    }

    /// [`Cgroups::new`] for the directory at `path`, created if missing.
    pub fn open(path: &Path) -> io::Result<Arc<Cgroups>> {
        std::fs::create_dir_all(path)?;
        let dir = rustix::fs::open(path, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Self::new(dir)
    }

    /// A new, empty cgroup for one command.
    pub fn make(self: &Arc<Self>) -> io::Result<CommandCgroup> {
        self.sweep();
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}{n}", self.prefix);
            match rustix::fs::mkdirat(&self.dir, name.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                // Left by an earlier process that had this pid.
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
            let procs = rustix::fs::openat(
                &self.dir,
                format!("{name}/cgroup.procs").as_str(),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            );
            return match procs {
                Ok(procs) => Ok(CommandCgroup {
                    parent: self.clone(),
                    name,
                    procs,
                }),
                Err(e) => {
                    let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::REMOVEDIR);
                    Err(e.into())
                }
            };
        }
    }

    /// Removes the lingering cgroups that have emptied since.
    fn sweep(&self) {
        let Ok(mut lingering) = self.lingering.lock() else {
            return;
        };
        lingering.retain(|name| {
            rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::REMOVEDIR).is_err()
        });
    }

    /// Kills every process in every cgroup beneath, whoever made it, and
    /// removes those cgroups: the end of a workspace.
    pub fn kill_all(&self) -> io::Result<()> {
        let names = subdirectories(&self.dir)?;
        for name in &names {
            let _ = write_at(&self.dir, &format!("{name}/cgroup.kill"), b"1");
        }
        for name in &names {
            let cgroup = Subtree {
                dir: &self.dir,
                name,
            };
            cgroup.wait_empty_blocking(Duration::from_secs(10));
            let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::REMOVEDIR);
        }
        if let Ok(mut lingering) = self.lingering.lock() {
            lingering.clear();
        }
        Ok(())
    }
}

impl CommandCgroup {
    fn dir(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.parent.dir,
            self.name.as_str(),
            OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    fn subtree(&self) -> Subtree<'_> {
        Subtree {
            dir: &self.parent.dir,
            name: &self.name,
        }
    }

    /// Makes `command`'s process enter this cgroup before it runs anything.
    pub fn enter_on_spawn(&self, command: &mut tokio::process::Command) {
        let procs = self.procs.as_raw_fd();
        // SAFETY: the hook only writes to a descriptor that is open in the
        // child (inherited from the parent, which keeps it open while it
        // spawns), and allocates nothing.
        unsafe {
            command.as_std_mut().pre_exec(move || {
                let procs = BorrowedFd::borrow_raw(procs);
                rustix::io::write(procs, b"0")?;
                Ok(())
            });
        }
    }

    /// Moves the running process `pid` into this cgroup: what it starts
    /// from then on starts here.
    pub fn adopt(&self, pid: u32) -> io::Result<()> {
        rustix::io::write(&self.procs, pid.to_string().as_bytes())?;
        Ok(())
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        self.subtree().pids()
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal(&self, signal: Signal) {
        for pid in self.pids() {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }

    /// Kills every process in the cgroup at once.
    pub fn kill(&self) {
        if write_at(
            &self.parent.dir,
            &format!("{}/cgroup.kill", self.name),
            b"1",
        )
        .is_err()
        {
            self.signal(Signal::KILL);
        }
    }

    /// Whether a process is still in the cgroup.
    pub fn populated(&self) -> bool {
        self.subtree().populated()
    }

    /// Waits until the cgroup is empty or `limit` has passed; returns
    /// whether it is empty.
    pub async fn emptied(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.populated() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(EMPTY_POLL).await;
        }
    }
}

impl Drop for CommandCgroup {
    fn drop(&mut self) {
        let removed =
            rustix::fs::unlinkat(&self.parent.dir, self.name.as_str(), AtFlags::REMOVEDIR);
        if removed.is_err()
            && let Ok(mut lingering) = self.parent.lingering.lock()
        {
            lingering.push(std::mem::take(&mut self.name));
        }
    }
}

/// A cgroup named relative to an open directory.
struct Subtree<'a> {
    dir: &'a OwnedFd,
    name: &'a str,
}

impl Subtree<'_> {
    fn read(&self, file: &str) -> String {
        let Ok(fd) = rustix::fs::openat(
            self.dir,
            format!("{}/{file}", self.name).as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return String::new();
        };
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = rustix::io::read(&fd, &mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    fn pids(&self) -> Vec<i32> {
        self.read("cgroup.procs")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// `populated 1` in `cgroup.events`; a cgroup that cannot be read is
    /// gone, and so empty.
    fn populated(&self) -> bool {
        self.read("cgroup.events")
            .lines()
            .any(|l| l.trim() == "populated 1")
    }

    fn wait_empty_blocking(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.populated() && std::time::Instant::now() < deadline {
            std::thread::sleep(EMPTY_POLL);
        }
    }
}

fn write_at(dir: &OwnedFd, path: &str, bytes: &[u8]) -> io::Result<()> {
    let fd = rustix::fs::openat(dir, path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, bytes)?;
    Ok(())
}

/// The names of the directories in `dir`.
fn subdirectories(dir: &OwnedFd) -> io::Result<Vec<String>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd.as_fd())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type() == rustix::fs::FileType::Directory && name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Where this host mounts cgroup v2: `/sys/fs/cgroup` on a host with only
/// v2, `/sys/fs/cgroup/unified` on a hybrid one (which puts the
/// controllers on v1 but still tracks every process in v2); `None` when
/// neither is cgroup v2.
pub fn v2_mount() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|path| rustix::fs::statfs(path).is_ok_and(|fs| is_cgroup2(&fs)))
}
