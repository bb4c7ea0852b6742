//! cgroup limits for a workspace, on cgroup v2 or on the v1 hierarchies
//! (hybrid hosts mount v2 without controllers, so v1 is used there).
//! Each workspace gets `berth/<name>` in every hierarchy it needs; its
//! processes are born in them, so killing what the cgroups hold ends the
//! workspace even if its init is stuck.
//!
//! The workspace's cgroup of v2 (on a hybrid host, one in its
//! controller-less v2 hierarchy, made for this) is also where its agent
//! gives each command a cgroup of its own: [`Layout::delegate`] lets the
//! workspace's root make cgroups beneath it and move its processes there,
//! and nothing else (its limits stay the host's).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "berth";
/// The CPU period used with a quota, in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// Where the controllers live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2 {
        root: PathBuf,
    },
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
        /// Lets a running workspace be paused for a consistent snapshot.
        freezer: Option<PathBuf>,
        /// The hybrid host's cgroup v2 hierarchy, without controllers: it
        /// tracks processes, where commands get cgroups of their own.
        unified: Option<PathBuf>,
    },
}

/// The limits to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u32>,
    pub cpus: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup controllers: {0}")]
    Unavailable(String),
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("processes still left in `{0}` after killing them")]
    Stuck(PathBuf),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

/// Finds the controllers: cgroup v2 if its root has memory and pids,
/// otherwise the v1 hierarchies.
pub fn detect() -> Result<Layout, CgroupError> {
    detect_at(Path::new(ROOT))
}

fn detect_at(root: &Path) -> Result<Layout, CgroupError> {
    for v2 in [root.to_path_buf(), root.join("unified")] {
        if let Ok(list) = fs::read_to_string(v2.join("cgroup.controllers")) {
            let has = |name: &str| list.split_whitespace().any(|c| c == name);
            if has("memory") && has("pids") {
                return Ok(Layout::V2 { root: v2 });
            }
        }
    }
    let v1 = |name: &str| {
        let dir = root.join(name);
        dir.join("cgroup.procs").is_file().then_some(dir)
    };
    match (
        v1("memory"),
        v1("pids"),
        v1("cpu").or_else(|| v1("cpu,cpuacct")),
    ) {
        (Some(memory), Some(pids), Some(cpu)) => Ok(Layout::V1 {
            memory,
            pids,
            cpu,
            freezer: v1("freezer"),
            unified: Some(root.join("unified"))
                .filter(|dir| dir.join("cgroup.controllers").is_file()),
        }),
        _ => Err(CgroupError::Unavailable(format!(
            "neither cgroup v2 with memory and pids nor v1 memory, pids and cpu under {}",
            root.display()
        ))),
    }
}

/// A workspace's cgroups.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cgroups {
    /// The workspace's own directories.
    pub dirs: Vec<PathBuf>,
    /// Their parents, which hold every workspace's cgroups.
    pub parents: Vec<PathBuf>,
}

impl Layout {
    /// The cgroup directories `name` has (or would have).
    pub fn cgroups(&self, name: &str) -> Cgroups {
        let roots = match self {
            Layout::V2 { root } => vec![root.clone()],
            Layout::V1 {
                memory,
                pids,
                cpu,
                freezer,
                unified,
            } => {
                let mut roots = vec![memory.clone(), pids.clone(), cpu.clone()];
                roots.extend(freezer.clone());
                roots.extend(unified.clone());
                roots
            }
        };
        Cgroups {
            dirs: roots.iter().map(|r| r.join(PARENT).join(name)).collect(),
            parents: roots.iter().map(|r| r.join(PARENT)).collect(),
        }
    }

    /// The cgroups of every instance of workspace `id` (named `id.N`)
    /// that exist now, including ones a crash left behind.
    pub fn instances(&self, id: &str) -> Vec<Cgroups> {
        let first = &self.cgroups(id).parents[0];
        let prefix = format!("{id}.");
        let Ok(entries) = fs::read_dir(first) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix) || name == id)
            .map(|name| self.cgroups(&name))
            .collect()
    }

    /// How many processes of the cgroups the kernel's OOM killer ended.
    pub fn oom_kills(&self, cgroups: &Cgroups) -> u64 {
        let events = match self {
            Layout::V2 { .. } => "memory.events",
            Layout::V1 { .. } => "memory.oom_control",
        };
        cgroups
            .dirs
            .first()
            .and_then(|dir| fs::read_to_string(dir.join(events)).ok())
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The cgroup of v2 among `cgroups`, beneath which commands can get
    /// cgroups of their own; `None` on a host with only v1.
    pub fn commands_root<'a>(&self, cgroups: &'a Cgroups) -> Option<&'a Path> {
        match self {
            Layout::V2 { .. } => cgroups.dirs.first(),
            Layout::V1 { unified: None, .. } => None,
            Layout::V1 { .. } => cgroups.dirs.last(),
        }
        .map(PathBuf::as_path)
    }

    /// Delegates the workspace's cgroup of v2 to its root (host ids `uid`
    /// and `gid`), as cgroup v2 intends delegation: the directory, so it
    /// can make cgroups beneath it, and `cgroup.procs` and
    /// `cgroup.threads`, so it can move its processes into them. Its
    /// limits and `cgroup.subtree_control` stay the host's.
    pub fn delegate(&self, cgroups: &Cgroups, uid: u32, gid: u32) -> Result<(), CgroupError> {
        let Some(dir) = self.commands_root(cgroups) else {
            return Ok(());
        };
        let owner = (
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
        for path in [
            dir.to_path_buf(),
            dir.join("cgroup.procs"),
            dir.join("cgroup.threads"),
        ] {
            rustix::fs::chown(&path, owner.0, owner.1)
                .map_err(|e| io_err("delegate", &path)(e.into()))?;
        }
        Ok(())
    }

    pub fn version(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
        }
    }

    /// Pauses (`frozen`) or resumes every process of cgroups made by
    /// [`Layout::create`], waiting until the kernel says it is done.
    /// Returns false when this host offers no freezer.
    pub fn freeze(&self, cgroups: &Cgroups, frozen: bool) -> Result<bool, CgroupError> {
        let (file, value, done) = match self {
            Layout::V2 { .. } => (
                cgroups.dirs[0].join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                (
                    cgroups.dirs[0].join("cgroup.events"),
                    if frozen { "frozen 1" } else { "frozen 0" },
                ),
            ),
            Layout::V1 { freezer: None, .. } => return Ok(false),
            Layout::V1 { .. } => {
                let Some(dir) = cgroups.dirs.get(3) else {
                    return Ok(false);
                };
                let state = if frozen { "FROZEN" } else { "THAWED" };
                (
                    dir.join("freezer.state"),
                    state,
                    (dir.join("freezer.state"), state),
                )
            }
        };
        write(&file, value)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = fs::read_to_string(&done.0).map_err(io_err("read", &done.0))?;
            if now.lines().any(|l| l.trim() == done.1) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Stuck(file));
            }
            // Freezing completes asynchronously, task by task.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Creates the workspace's cgroups with `limits`.
    pub fn create(&self, name: &str, limits: Limits) -> Result<Cgroups, CgroupError> {
        let cgroups = self.cgroups(name);
        match self {
            Layout::V2 { root } => {
                let parent = root.join(PARENT);
                fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
                for dir in [root, &parent] {
                    write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
                }
                let dir = &cgroups.dirs[0];
                make_dir(dir)?;
                if let Some(memory) = limits.memory {
                    write(&dir.join("memory.max"), &memory.to_string())?;
                    // No swap: the limit is the limit.
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                if let Some(pids) = limits.pids {
                    write(&dir.join("pids.max"), &pids.to_string())?;
                }
                if let Some(cpus) = limits.cpus {
                    let quota = (cpus * CPU_PERIOD as f64).round() as u64;
                    write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD}"))?;
                }
            }
            Layout::V1 { .. } => {
                for dir in &cgroups.dirs {
                    make_dir(dir)?;
                }
                let (memory, pids, cpu) = (&cgroups.dirs[0], &cgroups.dirs[1], &cgroups.dirs[2]);
                if let Some(bytes) = limits.memory {
                    write(&memory.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    let memsw = memory.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &bytes.to_string())?;
                    }
                }
                if let Some(max) = limits.pids {
                    write(&pids.join("pids.max"), &max.to_string())?;
                }
                if let Some(cpus) = limits.cpus {
                    let quota = (cpus * CPU_PERIOD as f64).round() as u64;
                    write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD.to_string())?;
                    write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        Ok(cgroups)
    }
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

/// The pids in a cgroup.
pub fn pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills everything in the cgroups, waits until they are empty (at most
/// `patience`) and removes them. Missing cgroups are already removed.
pub fn kill_and_remove(cgroups: &Cgroups, patience: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + patience;
    // Frozen tasks do not die, and a snapshot cut short may have left the
    // workspace frozen: thaw first, in whichever hierarchy freezes.
    for dir in &cgroups.dirs {
        for (file, value) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
            let path = dir.join(file);
            if path.exists() {
                let _ = fs::write(&path, value);
            }
        }
    }
    for dir in &cgroups.dirs {
        if !dir.exists() {
            continue;
        }
        // The cgroups the agent made for commands go first: a cgroup
        // with cgroups beneath it cannot be removed.
        remove_beneath(dir, deadline)?;
        loop {
            let kill = dir.join("cgroup.kill");
            if kill.exists() {
                let _ = fs::write(&kill, "1");
            }
            let left = pids(dir);
            if left.is_empty() {
                break;
            }
            for pid in left {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Stuck(dir.clone()));
            }
            // Killed processes leave the cgroup asynchronously.
            std::thread::sleep(Duration::from_millis(2));
        }
        match fs::remove_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", dir)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Kills and removes every cgroup beneath `dir`, deepest first.
fn remove_beneath(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child = entry.path();
        remove_beneath(&child, deadline)?;
        let _ = fs::write(child.join("cgroup.kill"), "1");
        while !pids(&child).is_empty() {
            if Instant::now() > deadline {
                return Err(CgroupError::Stuck(child));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match fs::remove_dir(&child) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &child)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_host_without_v2_controllers_uses_v1() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in ["unified", "memory", "pids", "cpu"] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        fs::write(r.join("unified/cgroup.controllers"), "").unwrap();
        for dir in ["memory", "pids", "cpu"] {
            fs::write(r.join(dir).join("cgroup.procs"), "").unwrap();
        }
        let layout = detect_at(r).unwrap();
        assert_eq!(layout.version(), "v1");
        let cgroups = layout.cgroups("ws1");
        assert_eq!(cgroups.dirs[0], r.join("memory/berth/ws1"));
        assert_eq!(cgroups.parents[1], r.join("pids/berth"));
    }

    #[test]
    fn v2_with_memory_and_pids_wins() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        assert_eq!(
            detect_at(root.path()).unwrap(),
            Layout::V2 {
                root: root.path().to_path_buf()
            }
        );
    }

    #[test]
    fn no_controllers_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let error = detect_at(root.path()).unwrap_err().to_string();
        assert!(error.contains("neither cgroup v2"), "{error}");
    }
}
