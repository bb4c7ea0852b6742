//! The plan: what a workspace's stage-1 init must do, computed from the
//! workspace's layers, spec and the host, without touching anything. The
//! runtime writes the plan as the init's config; tests read it directly.

use crate::cgroup::Cgroups;
use crate::config::{CONFIG_VERSION, IdMap, InitConfig, Mount};
use std::path::{Path, PathBuf};

/// Where berth's own files (init, agent, socket directory) are, inside.
pub const BERTH_DIR: &str = ".berth";

/// The host's system directories a `host` base binds read-only, when they
/// are real directories (on merged-/usr hosts `/bin` and friends are
/// symlinks, which the base's skeleton layer repeats instead).
pub const HOST_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt",
];

/// The parts of the host's `/etc` a `host` base shows: what programs need
/// to run (users, the dynamic linker, certificates, alternatives, shell
/// profiles), and nothing secret (no shadow, no ssh keys).
pub const HOST_ETC: &[&str] = &[
    "passwd",
    "group",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "profile",
    "profile.d",
    "bash.bashrc",
    "environment",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "mime.types",
    "inputrc",
    "gitconfig",
];

/// Device nodes bound from the host into the workspace's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The host base as found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostBase {
    /// Absolute host paths bound read-only at the same place inside.
    pub binds: Vec<PathBuf>,
}

/// The workspace's directories on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Bound at `/.berth/run`: where the agent's socket appears.
    pub run: PathBuf,
}

/// Everything the plan depends on.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub dirs: &'a Dirs,
    /// Layer trees, topmost first.
    pub lowers: Vec<PathBuf>,
    pub host_base: Option<&'a HostBase>,
    pub id_map: Option<IdMap>,
    pub private_network: bool,
    pub hostname: String,
    pub cgroups: Option<&'a Cgroups>,
    /// The size of the tmpfs at `/dev/shm`.
    pub shm_size: u64,
    /// The size of the tmpfs at `/tmp`; `None` leaves `/tmp` the
    /// overlay's, as it is while a workspace is provisioned (so that the
    /// cache layer holds what the setup script left there) and in
    /// workspaces made before it was bounded.
    pub tmp_size: Option<u64>,
    pub seccomp: bool,
    /// See [`InitConfig::delegate_cgroup`].
    pub delegate_cgroup: Option<String>,
    /// See [`InitConfig::home`].
    pub home: Option<&'a Path>,
    /// Host programs bound into `/.berth` by file name, e.g. the init
    /// binary and the agent.
    pub programs: Vec<PathBuf>,
    /// PID 1's argv, inside.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The workspace root inside (absolute): PID 1's working directory.
    pub root: String,
}

/// The path inside of a program bound by [`PlanInput::programs`].
pub fn program_inside(host: &Path) -> String {
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("/{BERTH_DIR}/{name}")
}

/// Computes the init's config.
pub fn plan(input: &PlanInput<'_>) -> InitConfig {
    let dirs = input.dirs;
    let mut mounts = vec![
        Mount::Overlay {
            lowers: input.lowers.clone(),
            upper: dirs.upper.clone(),
            work: dirs.work.clone(),
        },
        Mount::Dir {
            target: "proc".into(),
            mode: 0o555,
        },
    ];
    if let Some(base) = input.host_base {
        for path in &base.binds {
            mounts.push(Mount::Bind {
                source: path.clone(),
                target: path.strip_prefix("/").unwrap_or(path).to_path_buf(),
                readonly: true,
            });
        }
    }
    mounts.push(Mount::Tmpfs {
        target: "dev".into(),
        mode: 0o755,
        size: None,
        seed: false,
    });
    mounts.push(Mount::Dir {
        target: "dev/pts".into(),
        mode: 0o755,
    });
    mounts.push(Mount::Tmpfs {
        target: "dev/shm".into(),
        mode: 0o1777,
        size: Some(input.shm_size),
        seed: false,
    });
    for device in DEVICES {
        mounts.push(Mount::Bind {
            source: Path::new("/dev").join(device),
            target: Path::new("dev").join(device),
            readonly: false,
        });
    }
    for (link, target) in [
        ("dev/ptmx", "pts/ptmx"),
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        mounts.push(Mount::Symlink {
            link: link.into(),
            target: target.into(),
        });
    }
    // `/tmp` is a tmpfs of a bounded size: on the overlay it could fill
    // the host's disk (a bound on the overlay's own disk use would need
    // project quotas, which few hosts' filesystems have). The pages the
    // workspace writes are charged to its memory cgroup, so it pins no
    // more than the memory limit. It starts as a copy of the overlay's
    // `/tmp`, the provisioned one (see `crate::seed`); what the
    // workspace writes there is in no layer, so changes, snapshots, forks
    // and the cache leave it out, and each start (a reset, a restart)
    // brings back the provisioned `/tmp`.
    if let Some(size) = input.tmp_size {
        mounts.push(Mount::Tmpfs {
            target: "tmp".into(),
            mode: 0o1777,
            size: Some(size),
            seed: true,
        });
    }
    mounts.push(Mount::Bind {
        source: dirs.run.clone(),
        target: Path::new(BERTH_DIR).join("run"),
        readonly: false,
    });
    for program in &input.programs {
        mounts.push(Mount::Bind {
            source: program.clone(),
            target: PathBuf::from(program_inside(program).trim_start_matches('/')),
            readonly: true,
        });
    }
    let cgroups = input.cgroups.map(|c| c.dirs.clone()).unwrap_or_default();
    InitConfig {
        version: CONFIG_VERSION,
        rootfs: dirs.rootfs.clone(),
        mounts,
        id_map: input.id_map,
        private_network: input.private_network,
        hostname: input.hostname.clone(),
        cgroups,
        seccomp: input.seccomp,
        delegate_cgroup: input.delegate_cgroup.clone(),
        home: input.home.map(Path::to_path_buf),
        command: input.command.clone(),
        env: input.env.clone(),
        cwd: input.root.clone(),
    }
}

/// Finds the host base's binds on this host: the real directories of
/// [`HOST_DIRS`], the existing entries of [`HOST_ETC`], and `extra`.
pub fn host_base(root: &Path, extra: &[PathBuf]) -> HostBase {
    let mut binds = Vec::new();
    for dir in HOST_DIRS {
        let path = root.join(dir);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            binds.push(Path::new("/").join(dir));
        }
    }
    for entry in HOST_ETC {
        if root.join("etc").join(entry).exists() {
            binds.push(Path::new("/etc").join(entry));
        }
    }
    binds.extend(extra.iter().filter(|p| p.exists()).cloned());
    HostBase { binds }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Dirs {
        Dirs {
            rootfs: "/h/ws/rootfs".into(),
            upper: "/h/ws/upper".into(),
            work: "/h/ws/work".into(),
            run: "/h/ws/run".into(),
        }
    }

    fn input<'a>(
        dirs: &'a Dirs,
        base: Option<&'a HostBase>,
        cgroups: Option<&'a Cgroups>,
    ) -> PlanInput<'a> {
        PlanInput {
            dirs,
            lowers: vec!["/h/layers/b/tree".into(), "/h/layers/a/tree".into()],
            host_base: base,
            id_map: Some(IdMap {
                host: 100_000,
                size: 65_536,
            }),
            private_network: true,
            hostname: "ws1".into(),
            cgroups,
            shm_size: 64 << 20,
            tmp_size: Some(1 << 30),
            seccomp: true,
            delegate_cgroup: None,
            home: Some(Path::new("/h")),
            programs: vec!["/opt/berth/berth-agent".into()],
            command: vec!["/.berth/berth-agent".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            root: "/workspace".into(),
        }
    }

    #[test]
    fn the_overlay_comes_first_with_layers_topmost_first() {
        let dirs = dirs();
        let config = plan(&input(&dirs, None, None));
        assert_eq!(
            config.mounts[0],
            Mount::Overlay {
                lowers: vec!["/h/layers/b/tree".into(), "/h/layers/a/tree".into()],
                upper: "/h/ws/upper".into(),
                work: "/h/ws/work".into(),
            }
        );
        assert_eq!(config.cwd, "/workspace");
        assert_eq!(config.rootfs, PathBuf::from("/h/ws/rootfs"));
    }

    #[test]
    fn host_directories_are_bound_read_only_and_devices_are_minimal() {
        let dirs = dirs();
        let base = HostBase {
            binds: vec!["/usr".into(), "/etc/passwd".into()],
        };
        let config = plan(&input(&dirs, Some(&base), None));
        let binds: Vec<_> = config
            .mounts
            .iter()
            .filter_map(|m| match m {
                Mount::Bind {
                    source,
                    target,
                    readonly,
                } => Some((
                    source.display().to_string(),
                    target.display().to_string(),
                    *readonly,
                )),
                _ => None,
            })
            .collect();
        assert!(binds.contains(&("/usr".into(), "usr".into(), true)));
        assert!(binds.contains(&("/etc/passwd".into(), "etc/passwd".into(), true)));
        assert!(binds.contains(&("/h/ws/run".into(), ".berth/run".into(), false)));
        assert!(binds.contains(&(
            "/opt/berth/berth-agent".into(),
            ".berth/berth-agent".into(),
            true
        )));
        let devices: Vec<_> = binds
            .iter()
            .filter(|(_, t, _)| t.starts_with("dev/"))
            .map(|(_, t, _)| t.trim_start_matches("dev/").to_string())
            .collect();
        assert_eq!(devices, DEVICES);
        // Nothing else of the host is bound: no /proc, /sys, /home, /root.
        assert_eq!(binds.len(), 2 + 1 + 1 + DEVICES.len());
        // The host's /dev is never bound whole; a tmpfs is filled instead.
        assert!(config.mounts.contains(&Mount::Tmpfs {
            target: "dev".into(),
            mode: 0o755,
            size: None,
            seed: false,
        }));
        // `/tmp` is a bounded tmpfs, never a bind of anything.
        let tmp: Vec<_> = config
            .mounts
            .iter()
            .filter(|m| matches!(
                m,
                Mount::Tmpfs { target, .. } | Mount::Bind { target, .. } | Mount::Dir { target, .. }
                    if target.as_path() == Path::new("tmp")
            ))
            .collect();
        assert_eq!(
            tmp,
            [&Mount::Tmpfs {
                target: "tmp".into(),
                mode: 0o1777,
                size: Some(1 << 30),
                seed: true,
            }]
        );
    }

    #[test]
    fn a_workspace_made_before_tmp_was_bounded_keeps_it_on_the_overlay() {
        let dirs = dirs();
        let mut input = input(&dirs, None, None);
        input.tmp_size = None;
        let config = plan(&input);
        assert!(!config.mounts.iter().any(|m| matches!(
            m,
            Mount::Tmpfs { target, .. } | Mount::Bind { target, .. } if target.as_path() == Path::new("tmp")
        )));
    }

    #[test]
    fn dev_shm_is_a_tmpfs_of_the_size_given() {
        let dirs = dirs();
        let mut input = input(&dirs, None, None);
        input.shm_size = 16 << 20;
        let config = plan(&input);
        assert!(config.mounts.contains(&Mount::Tmpfs {
            target: "dev/shm".into(),
            mode: 0o1777,
            size: Some(16 << 20),
            seed: false,
        }));
    }

    #[test]
    fn cgroups_and_isolation_settings_pass_through() {
        let dirs = dirs();
        let cgroups = Cgroups {
            dirs: vec!["/sys/fs/cgroup/pids/berth/ws1".into()],
            parents: vec!["/sys/fs/cgroup/pids/berth".into()],
        };
        let config = plan(&input(&dirs, None, Some(&cgroups)));
        assert_eq!(config.cgroups, cgroups.dirs);
        assert!(config.private_network && config.seccomp);
        assert_eq!(config.id_map.map(|m| m.host), Some(100_000));
    }

    #[test]
    fn host_base_skips_symlinked_system_dirs_and_secrets() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("etc/ssl")).unwrap();
        std::fs::write(r.join("etc/passwd"), "").unwrap();
        std::fs::write(r.join("etc/shadow"), "").unwrap();
        let base = host_base(r, &[]);
        assert_eq!(
            base.binds,
            vec![
                PathBuf::from("/usr"),
                PathBuf::from("/etc/passwd"),
                PathBuf::from("/etc/ssl")
            ]
        );
    }
}
