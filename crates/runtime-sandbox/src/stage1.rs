//! Stage 1: the namespace setup that must happen before any async runtime
//! or second thread exists. A fresh single-threaded process (the
//! `berth-sandbox-init` binary, or any binary that calls [`main`] first
//! thing, such as the agent) runs it:
//!
//! - `start CONFIG`: in a private mount namespace, mounts the workspace's
//!   overlay and host-side binds, forks a child into new user/mount/PID/
//!   UTS/IPC (and network) namespaces, maps its ids, moves it into the
//!   workspace's cgroups, and stays as its parent until it exits (or kills
//!   it once the config's home is deleted: see `end_with_home`). The
//!   child mounts `/proc` and `/dev/pts`, pivots into the overlay, enters
//!   its own cgroup namespace once moved, drops capabilities, sets
//!   `no_new_privs`, installs the seccomp filter and executes the
//!   workspace's PID 1. The line `started PID` on stdout
//!   tells the caller it all went through; any failure is printed as
//!   `failed: ...` instead.
//! - `exec CONFIG PID CWD -- ARGV...`: joins the cgroups and namespaces of
//!   workspace init PID, forks, and runs ARGV inside under the same
//!   restrictions, relaying its exit status.
//! - `reap`: a minimal PID 1 that reaps orphans until killed.

use crate::config::{InitConfig, Mount};
use crate::{seccomp, seed, sys};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{PidfdFlags, Signal};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Capabilities the workspace's root keeps (Docker's default set); the
/// rest, notably CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE and
/// CAP_NET_ADMIN, go from the bounding set.
pub const KEPT_CAPABILITIES: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("usage: berth-sandbox-init start CONFIG | exec CONFIG PID CWD -- ARGV... | reap")]
    Usage,
    #[error("cannot read the sandbox config `{path}`: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("mount target `{0}` passes through a symlink in the workspace")]
    SymlinkTarget(PathBuf),
    #[error("the workspace's init failed: {0}")]
    Child(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
}

fn step<T>(what: impl FnOnce() -> String, result: io::Result<T>) -> Result<T, InitError> {
    result.map_err(|source| InitError::Step {
        step: what(),
        source,
    })
}

fn errno<T>(what: impl FnOnce() -> String, result: rustix::io::Result<T>) -> Result<T, InitError> {
    step(what, result.map_err(io::Error::from))
}

/// Runs stage 1 from command-line arguments (without the program name)
/// and returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let result = match args.first().map(String::as_str) {
        Some("start") if args.len() == 2 => load(&args[1]).and_then(|c| start(&c)),
        Some("exec") if args.len() >= 6 && args[4] == "--" => {
            let pid = args[2].parse().map_err(|_| InitError::Usage);
            load(&args[1]).and_then(|c| exec(&c, pid?, &args[3], &args[5..]))
        }
        Some("reap") => reap(),
        _ => Err(InitError::Usage),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "failed: {error}");
            let _ = out.flush();
            eprintln!("berth-sandbox-init: {error}");
            125
        }
    }
}

fn load(path: &str) -> Result<InitConfig, InitError> {
    let text = fs::read(path).map_err(|e| InitError::Config {
        path: path.into(),
        detail: e.to_string(),
    })?;
    serde_json::from_slice(&text).map_err(|e| InitError::Config {
        path: path.into(),
        detail: e.to_string(),
    })
}

fn namespace_flags(config: &InitConfig) -> libc::c_int {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if config.id_map.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    if config.private_network {
        flags |= libc::CLONE_NEWNET;
    }
    flags
}

/// `start`: see the module documentation.
pub fn start(config: &InitConfig) -> Result<i32, InitError> {
    // Mount points made here must be passable by the workspace's root,
    // which is not their owner, whatever umask the runtime has.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    step(
        || "cannot make a private mount namespace".into(),
        sys::unshare(UnshareFlags::NEWNS),
    )?;
    errno(
        || "cannot make mounts private".into(),
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        ),
    )?;
    for mount in &config.mounts {
        host_mount(&config.rootfs, mount)?;
    }
    // The child reaches the workspace's root only through this working
    // directory, which it inherits (moved into its own mount namespace):
    // as the workspace's root it may not be able to look up the rootfs
    // path itself, which runs through `$BERTH_HOME`, often a 0700
    // directory of host root's.
    step(
        || format!("cannot enter `{}`", config.rootfs.display()),
        std::env::set_current_dir(&config.rootfs),
    )?;

    let (sync_read, mut sync_write) = step(|| "cannot make a pipe".into(), io::pipe())?;
    let (mut err_read, err_write) = step(|| "cannot make a pipe".into(), io::pipe())?;
    let flags = namespace_flags(config);
    let child = step(
        || "cannot create the workspace's namespaces".into(),
        sys::clone_into(flags),
    )?;
    let Some(pid) = child else {
        drop(sync_write);
        drop(err_read);
        let error = match child_setup(config, sync_read) {
            Err(error) => error.to_string(),
            Ok(never) => match never {},
        };
        let mut err_write = err_write;
        let _ = err_write.write_all(error.as_bytes());
        std::process::exit(126);
    };
    drop(sync_read);
    drop(err_write);

    let parent_side = (|| {
        if let Some(map) = config.id_map {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let line = format!("0 {} {}\n", map.host, map.size);
            step(
                || "cannot deny setgroups".into(),
                fs::write(proc.join("setgroups"), "deny"),
            )?;
            step(
                || format!("cannot write uid_map `{}`", line.trim()),
                fs::write(proc.join("uid_map"), &line),
            )?;
            step(
                || format!("cannot write gid_map `{}`", line.trim()),
                fs::write(proc.join("gid_map"), &line),
            )?;
        }
        step(
            || "cannot release the workspace's init".into(),
            sync_write.write_all(b"1"),
        )?;
        // Moving a process between cgroups waits for an RCU grace period
        // on cgroup v1, often milliseconds: it happens while the child
        // sets itself up, which waits for it only before it runs anything.
        move_to_cgroups(pid, &config.cgroups)?;
        step(
            || "cannot release the workspace's init".into(),
            sync_write.write_all(b"2"),
        )
    })();
    drop(sync_write);
    let mut failure = String::new();
    let _ = err_read.read_to_string(&mut failure);
    if let Err(error) = parent_side {
        let _ = rustix::process::kill_process(pid_of(pid), rustix::process::Signal::KILL);
        let _ = wait(pid);
        // A child that failed first said why; the pipe it broke by ending
        // is only the echo of that.
        return Err(match error {
            InitError::Step { source, .. }
                if source.kind() == io::ErrorKind::BrokenPipe && !failure.is_empty() =>
            {
                InitError::Child(failure)
            }
            error => error,
        });
    }
    if !failure.is_empty() {
        let _ = wait(pid);
        return Err(InitError::Child(failure));
    }
    release_the_tree(&config.rootfs);
    let reported = {
        let mut out = io::stdout().lock();
        writeln!(out, "started {pid}").and_then(|()| out.flush())
    };
    if let Err(source) = reported {
        // Whoever started this init is gone and will never record the
        // workspace as running: nothing may be left behind unknown.
        let _ = rustix::process::kill_process(pid_of(pid), rustix::process::Signal::KILL);
        let _ = wait(pid);
        return Err(InitError::Step {
            step: "the runtime went away before the workspace was reported".into(),
            source,
        });
    }
    if let Some(home) = &config.home {
        end_with_home(pid, home);
    }
    let code = wait(pid)?;
    // Read by the runtime when a workspace ends as it starts.
    match code {
        0..=128 => eprintln!("berth-sandbox-init: the workspace's init exited with code {code}"),
        signal => eprintln!(
            "berth-sandbox-init: the workspace's init was killed by signal {}",
            signal - 128
        ),
    }
    Ok(code)
}

/// Lets go of this namespace's copy of the workspace's tree once the
/// workspace runs in its own: the workspace's mount namespace holds every
/// mount it needs, and the copy here (a few dozen mounts) would only cost
/// kernel memory for as long as the workspace lives. Nothing here uses it
/// again. A failure leaves the copy where it was, which costs memory and
/// nothing else.
fn release_the_tree(rootfs: &Path) {
    if std::env::set_current_dir("/").is_ok() {
        let _ = rustix::mount::unmount(rootfs, UnmountFlags::DETACH);
    }
}

/// How often a running workspace's init looks whether its home is still
/// there.
const HOME_CHECK: Duration = Duration::from_secs(2);

/// Returns once the workspace's init `pid` ended, or once `home` was
/// deleted (`rm -rf` of a berth home while its workspaces run), when it
/// kills that init and with it every process of the workspace's PID
/// namespace: nothing would ever end them otherwise. The home is held
/// open and its link count read on a slow timer; a deleted directory has
/// none. An init that cannot watch says so and just waits.
fn end_with_home(pid: u32, home: &Path) {
    let watched = rustix::process::pidfd_open(pid_of(pid), PidfdFlags::empty()).and_then(|init| {
        match rustix::fs::open(
            home,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(dir) => Ok((init, Some(dir))),
            Err(Errno::NOENT) => Ok((init, None)),
            Err(e) => Err(e),
        }
    });
    let (init, dir) = match watched {
        Ok(watched) => watched,
        Err(e) => {
            eprintln!(
                "berth-sandbox-init: cannot watch the home `{}`: {e}",
                home.display()
            );
            return;
        }
    };
    let every = Timespec::try_from(HOME_CHECK).unwrap_or_default();
    loop {
        let deleted = dir
            .as_ref()
            .is_none_or(|dir| rustix::fs::fstat(dir).is_ok_and(|stat| stat.st_nlink == 0));
        if deleted {
            eprintln!(
                "berth-sandbox-init: the home `{}` was deleted; ending the workspace",
                home.display()
            );
            let _ = rustix::process::pidfd_send_signal(&init, Signal::KILL);
            return;
        }
        // The descriptor of a process becomes readable when it ends.
        match rustix::event::poll(&mut [PollFd::new(&init, PollFlags::IN)], Some(&every)) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => return,
            Err(e) => {
                eprintln!("berth-sandbox-init: cannot watch the workspace's init: {e}");
                return;
            }
        }
    }
}

fn pid_of(pid: u32) -> rustix::process::Pid {
    // A pid returned by clone is never zero.
    rustix::process::Pid::from_raw(pid as i32).unwrap_or(rustix::process::Pid::INIT)
}

fn wait_status(pid: u32) -> Result<Option<rustix::process::WaitStatus>, InitError> {
    let status = errno(
        || format!("cannot wait for process {pid}"),
        rustix::process::waitpid(Some(pid_of(pid)), rustix::process::WaitOptions::empty()),
    )?;
    Ok(status.map(|(_, status)| status))
}

/// Waits for `pid` and turns its end into an exit code (128 + signal).
fn wait(pid: u32) -> Result<i32, InitError> {
    Ok(match wait_status(pid)? {
        Some(status) => status
            .exit_status()
            .or_else(|| status.terminating_signal().map(|s| 128 + s))
            .unwrap_or(1),
        None => 1,
    })
}

fn join_cgroups(cgroups: &[PathBuf]) -> Result<(), InitError> {
    move_to_cgroups(std::process::id(), cgroups)
}

/// Moves process `pid` (all its threads) into each of `cgroups`.
fn move_to_cgroups(pid: u32, cgroups: &[PathBuf]) -> Result<(), InitError> {
    let pid = pid.to_string();
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        step(
            || format!("cannot join cgroup `{}`", dir.display()),
            fs::write(&procs, &pid),
        )?;
    }
    Ok(())
}

/// `rootfs/rel`, refusing any component that is a symlink: the rootfs
/// holds the workspace's own files, which must not redirect a mount.
fn inside(rootfs: &Path, rel: &Path) -> Result<PathBuf, InitError> {
    let mut path = rootfs.to_path_buf();
    for component in rel.components() {
        match component {
            Component::Normal(name) => path.push(name),
            Component::RootDir | Component::CurDir => continue,
            _ => return Err(InitError::SymlinkTarget(rel.to_path_buf())),
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(InitError::SymlinkTarget(rel.to_path_buf()));
        }
    }
    Ok(path)
}

fn host_mount(rootfs: &Path, mount: &Mount) -> Result<(), InitError> {
    match mount {
        Mount::Overlay {
            lowers,
            upper,
            work,
        } => overlay(rootfs, lowers, upper, work),
        Mount::Bind {
            source,
            target,
            readonly,
        } => {
            let target = inside(rootfs, target)?;
            let meta = step(
                || format!("cannot bind `{}`", source.display()),
                fs::metadata(source),
            )?;
            if fs::symlink_metadata(&target).is_err() {
                let made = if meta.is_dir() {
                    fs::create_dir_all(&target)
                } else {
                    target
                        .parent()
                        .map_or(Ok(()), fs::create_dir_all)
                        .and_then(|()| fs::File::create(&target).map(drop))
                };
                step(
                    || format!("cannot create mount point `{}`", target.display()),
                    made,
                )?;
            }
            errno(
                || {
                    format!(
                        "cannot bind `{}` to `{}`",
                        source.display(),
                        target.display()
                    )
                },
                rustix::mount::mount_bind_recursive(source, &target),
            )?;
            if *readonly {
                errno(
                    || format!("cannot make `{}` read-only", target.display()),
                    rustix::mount::mount_remount(
                        &target,
                        MountFlags::BIND
                            | MountFlags::RDONLY
                            | MountFlags::NOSUID
                            | MountFlags::NODEV,
                        "",
                    ),
                )?;
            }
            Ok(())
        }
        Mount::Tmpfs {
            target,
            mode,
            size,
            seed,
        } => {
            let target = inside(rootfs, target)?;
            step(
                || format!("cannot create `{}`", target.display()),
                fs::create_dir_all(&target),
            )?;
            // What the rootfs holds there, opened before the mount hides it.
            let below = match seed {
                true => Some(step(
                    || format!("cannot open `{}`", target.display()),
                    seed::open_source(&target),
                )?),
                false => None,
            };
            errno(
                || format!("cannot mount tmpfs at `{}`", target.display()),
                rustix::mount::mount(
                    "tmpfs",
                    &target,
                    "tmpfs",
                    MountFlags::NOSUID | MountFlags::NODEV,
                    std::ffi::CString::new(match size {
                        Some(size) => format!("mode={mode:o},size={size}"),
                        None => format!("mode={mode:o}"),
                    })
                    .unwrap_or_default()
                    .as_c_str(),
                ),
            )?;
            let Some(below) = below else {
                return Ok(());
            };
            let tmpfs = step(
                || format!("cannot open `{}`", target.display()),
                seed::open_source(&target),
            )?;
            Ok(seed::copy(below.as_fd(), tmpfs.as_fd())?)
        }
        Mount::Dir { target, mode } => {
            let target = inside(rootfs, target)?;
            step(
                || format!("cannot create `{}`", target.display()),
                fs::create_dir_all(&target).and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&target, fs::Permissions::from_mode(*mode))
                }),
            )
        }
        Mount::Symlink { link, target } => {
            let link = inside(rootfs, link)?;
            if fs::symlink_metadata(&link).is_ok() {
                return Ok(());
            }
            step(
                || format!("cannot link `{}`", link.display()),
                symlink(target, &link),
            )
        }
    }
}

/// Mounts the overlay with the new mount API, one `lowerdir+` per layer,
/// so the number of layers is not bounded by one page of options.
fn overlay(rootfs: &Path, lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<(), InitError> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let what = || format!("cannot mount the overlay at `{}`", rootfs.display());
    let fs = errno(what, fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC))?;
    for lower in lowers {
        let added = fsconfig_set_string(&fs, "lowerdir+", lower);
        errno(
            || {
                let hint = match added {
                    Err(rustix::io::Errno::INVAL) => " (one layer at a time needs Linux 6.8+)",
                    _ => "",
                };
                format!("overlay refuses lower layer `{}`{hint}", lower.display())
            },
            added,
        )?;
    }
    errno(what, fsconfig_set_string(&fs, "upperdir", upper))?;
    errno(what, fsconfig_set_string(&fs, "workdir", work))?;
    // Renamed directories are copied by userland instead of redirected, and
    // no metadata-only copies: the upper directory then holds whole files,
    // which is what change listing and layer freezing rely on.
    errno(what, fsconfig_set_string(&fs, "redirect_dir", "off"))?;
    errno(what, fsconfig_set_string(&fs, "metacopy", "off"))?;
    errno(what, fsconfig_create(&fs))?;
    let mnt = errno(
        what,
        fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()),
    )?;
    errno(
        what,
        move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            rootfs,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        ),
    )
}

/// The child, in its new namespaces: finishes the filesystem, locks
/// itself down and becomes the workspace's PID 1.
fn child_setup(
    config: &InitConfig,
    mut sync: io::PipeReader,
) -> Result<std::convert::Infallible, InitError> {
    let mut byte = [0u8; 1];
    step(
        || "the init's parent went away".into(),
        sync.read_exact(&mut byte),
    )?;
    if config.id_map.is_some() {
        become_root()?;
    }
    errno(
        || "cannot set the hostname".into(),
        rustix::system::sethostname(config.hostname.as_bytes()),
    )?;
    if config.private_network {
        step(
            || "cannot bring up the loopback interface".into(),
            sys::loopback_up(),
        )?;
    }
    // Paths are relative to the working directory, the workspace's root.
    let rootfs = Path::new("");
    let proc = inside(rootfs, Path::new("proc"))?;
    errno(
        || "cannot mount /proc".into(),
        rustix::mount::mount(
            "proc",
            &proc,
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ),
    )?;
    mask_proc(&proc, &inside(rootfs, Path::new("dev/null"))?)?;
    let pts = inside(rootfs, Path::new("dev/pts"))?;
    errno(
        || "cannot mount /dev/pts".into(),
        rustix::mount::mount(
            "devpts",
            &pts,
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            c"newinstance,ptmxmode=0666,mode=0620",
        ),
    )?;

    // The overlay was mounted before this mount namespace existed, so it
    // is locked here and pivot_root refuses it; a bind of it made here is
    // not (and takes the lock over from the old root when pivoting). The
    // bind is entered through its descriptor, never by a path.
    enter_own_bind()?;
    errno(
        || "cannot pivot into the workspace".into(),
        rustix::process::pivot_root(".", "."),
    )?;
    errno(
        || "cannot detach the host's filesystem".into(),
        rustix::mount::unmount(".", UnmountFlags::DETACH),
    )?;
    step(|| "cannot enter /".into(), std::env::set_current_dir("/"))?;
    // Nothing runs before the parent has moved this process into the
    // workspace's cgroups, whose namespace then starts here.
    step(
        || "the init's parent went away".into(),
        sync.read_exact(&mut byte),
    )?;
    drop(sync);
    step(
        || "cannot make the cgroup namespace".into(),
        sys::unshare(UnshareFlags::NEWCGROUP),
    )?;
    let mut command = config.command.clone();
    if let Some(flag) = &config.delegate_cgroup {
        command.extend([flag.clone(), own_cgroup()?.to_string()]);
    }
    lock_down(config.seccomp)?;
    Err(run(&command, &config.env, &config.cwd))
}

/// Opens the workspace's cgroup of v2 for its PID 1: a cgroup v2 mount
/// made in the new cgroup namespace, whose root is that cgroup, attached
/// nowhere (no process of the workspace can reach it by a path) and left
/// open across the exec. Returns its descriptor's number.
fn own_cgroup() -> Result<i32, InitError> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    use std::os::fd::IntoRawFd as _;
    let what = || "cannot open the workspace's cgroup v2 for its agent".to_string();
    let fs = errno(
        what,
        rustix::mount::fsopen("cgroup2", FsOpenFlags::FSOPEN_CLOEXEC),
    )?;
    errno(what, rustix::mount::fsconfig_create(&fs))?;
    let mount = errno(
        what,
        rustix::mount::fsmount(
            &fs,
            FsMountFlags::empty(),
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        ),
    )?;
    Ok(mount.into_raw_fd())
}

/// Binds the working directory's tree onto itself and makes the bind the
/// working directory.
fn enter_own_bind() -> Result<(), InitError> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};
    let what = || "cannot bind the workspace's root".to_string();
    let bind = errno(
        what,
        open_tree(
            rustix::fs::CWD,
            ".",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE,
        ),
    )?;
    errno(
        what,
        move_mount(
            &bind,
            "",
            rustix::fs::CWD,
            ".",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        ),
    )?;
    errno(
        || "cannot enter the workspace's root".into(),
        rustix::process::fchdir(&bind),
    )
}

/// Switches to root of the new user namespace (host ids are unmapped).
fn become_root() -> Result<(), InitError> {
    let root_gid = rustix::process::Gid::ROOT;
    let root_uid = rustix::process::Uid::ROOT;
    errno(
        || "cannot become root in the user namespace".into(),
        rustix::thread::set_thread_res_gid(root_gid, root_gid, root_gid),
    )?;
    errno(
        || "cannot become root in the user namespace".into(),
        rustix::thread::set_thread_res_uid(root_uid, root_uid, root_uid),
    )
}

/// Hides the `/proc` entries that expose the host's kernel, and makes the
/// kernel's tunables read-only, as container runtimes do.
fn mask_proc(proc: &Path, null: &Path) -> Result<(), InitError> {
    for name in [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "sysrq-trigger",
    ] {
        let path = proc.join(name);
        if path.exists() {
            errno(
                || format!("cannot mask /proc/{name}"),
                rustix::mount::mount_bind(null, &path),
            )?;
        }
    }
    for name in ["sys", "bus", "irq", "fs"] {
        let path = proc.join(name);
        if !path.is_dir() {
            continue;
        }
        errno(
            || format!("cannot protect /proc/{name}"),
            rustix::mount::mount_bind_recursive(&path, &path),
        )?;
        errno(
            || format!("cannot make /proc/{name} read-only"),
            rustix::mount::mount_remount(
                &path,
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                "",
            ),
        )?;
    }
    Ok(())
}

/// Drops capabilities, forbids gaining privileges, installs the filter.
fn lock_down(with_seccomp: bool) -> Result<(), InitError> {
    let keep: u64 = KEPT_CAPABILITIES
        .iter()
        .fold(0, |bits, cap| bits | (1 << cap));
    step(
        || "cannot drop capabilities".into(),
        sys::drop_bounding_set(keep),
    )?;
    let kept = CapabilitySet::from_bits_truncate(keep);
    let current = errno(
        || "cannot read capabilities".into(),
        rustix::thread::capabilities(None),
    )?;
    errno(
        || "cannot drop capabilities".into(),
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: current.effective & kept,
                permitted: current.permitted & kept,
                inheritable: current.inheritable & kept,
            },
        ),
    )?;
    errno(
        || "cannot set no_new_privs".into(),
        rustix::thread::set_no_new_privs(true),
    )?;
    if with_seccomp {
        seccomp::install_default()?;
    }
    Ok(())
}

fn run(argv: &[String], env: &[(String, String)], cwd: &str) -> InitError {
    let Some((program, args)) = argv.split_first() else {
        return InitError::Usage;
    };
    if let Err(source) = std::env::set_current_dir(cwd) {
        return InitError::Step {
            step: format!("cannot enter `{cwd}`"),
            source,
        };
    }
    let source = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .exec();
    InitError::Step {
        step: format!("cannot run `{program}`"),
        source,
    }
}

/// `exec`: see the module documentation.
pub fn exec(config: &InitConfig, pid: u32, cwd: &str, argv: &[String]) -> Result<i32, InitError> {
    // A pidfd pins the process: if PID 1 died and its number was reused,
    // the namespaces joined below could only be the reuser's, so the
    // caller checks the process's start time before calling this.
    join_cgroups(&config.cgroups)?;
    let pidfd = errno(
        || format!("workspace init {pid} is gone"),
        rustix::process::pidfd_open(pid_of(pid), rustix::process::PidfdFlags::empty()),
    )?;
    let mut flags = rustix::thread::ThreadNameSpaceType::MOUNT
        | rustix::thread::ThreadNameSpaceType::PROCESS_ID
        | rustix::thread::ThreadNameSpaceType::HOST_NAME_AND_NIS_DOMAIN_NAME
        | rustix::thread::ThreadNameSpaceType::INTER_PROCESS_COMMUNICATION
        | rustix::thread::ThreadNameSpaceType::CONTROL_GROUP;
    if config.id_map.is_some() {
        flags |= rustix::thread::ThreadNameSpaceType::USER;
    }
    if config.private_network {
        flags |= rustix::thread::ThreadNameSpaceType::NETWORK;
    }
    errno(
        || format!("cannot enter the namespaces of workspace init {pid}"),
        rustix::thread::move_into_thread_name_spaces(std::os::fd::AsFd::as_fd(&pidfd), flags),
    )?;
    drop(pidfd);
    if config.id_map.is_some() {
        become_root()?;
    }
    // Joining a PID namespace applies to children only.
    match step(|| "cannot fork".into(), sys::fork())? {
        Some(child) => {
            let status = wait_status(child)?;
            if let Some(signal) = status.and_then(|s| s.terminating_signal()) {
                sys::die_by(signal);
            }
            Ok(status.and_then(|s| s.exit_status()).unwrap_or(1))
        }
        None => {
            // The command's environment is this process's own: the caller
            // composed it, as for any other process it spawns.
            let env: Vec<(String, String)> = std::env::vars().collect();
            let error = match lock_down(config.seccomp) {
                Ok(()) => run(argv, &env, cwd),
                Err(error) => error,
            };
            eprintln!("berth-sandbox-init: {error}");
            std::process::exit(126);
        }
    }
}

/// `reap`: waits for children forever (orphans are re-parented to PID 1).
fn reap() -> Result<i32, InitError> {
    loop {
        if let Err(rustix::io::Errno::CHILD) =
            rustix::process::wait(rustix::process::WaitOptions::empty())
        {
            // Nothing to reap yet; SIGCHLD cannot wake a pause() without a
            // handler, so look again a second later.
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
