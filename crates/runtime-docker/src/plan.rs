//! What berth asks of the Docker Engine, decided without talking to it:
//! names, labels and image tags, the container a workspace becomes, the
//! isolation that container has, when a container made from a committed
//! image may first be written, and how the Engine's change list maps to
//! workspace changes. Pure, so it is unit-tested without a daemon.

use berth_core::spec::Network;
use berth_core::{ChangeKind, HomeId, Isolation, ResourceDefaults, Spec, WorkspaceId};
use bollard::models::{ContainerCreateBody, HostConfig};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// berth's own directory in every container, never a workspace's file.
pub const BERTH_DIR: &str = ".berth";
/// Where the agent is mounted (read-only) in every container.
pub const AGENT_PATH: &str = "/.berth/agent";
/// The host directory where the agent serves its socket is mounted here.
pub const RUN_DIR: &str = "/.berth/run";
/// The socket's file name, in [`RUN_DIR`] and in its host directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// A tmpfs of a bounded size in every container but one being
/// provisioned: on the container's writable layer it could fill the
/// host's disk. Its pages are charged to the container's memory cgroup,
/// so it pins no more than the memory limit; the Engine leaves mounts out
/// of diffs and commits, so what a workspace writes there is in no
/// changes, cache entry, snapshot or fork.
///
/// What a setup script leaves in `/tmp` is part of the provisioned state,
/// though. A container made from a user's image runs its setup with
/// `/tmp` on its writable layer; before the commit to the cache,
/// [`STASH_TMP`] moves that `/tmp` to [`TMP_SEED`], and every container
/// made from the cache image (the first workspace, cache hits, resets,
/// forks, which carry the image's seed and not the origin's `/tmp`) gets
/// it copied into its tmpfs by [`SEED_TMP`] once its agent answers and
/// before it is handed out. The Engine cannot do the copy itself: dockerd
/// refuses runc's `tmpcopyup` option ("invalid tmpfs option"), though
/// Podman applies it to every tmpfs; with the image's `/tmp` moved aside
/// Podman's copy is empty, and both engines take the one path here. An
/// empty `/tmp` leaves no seed, and a start then costs no copy.
pub const TMP: &str = "/tmp";
/// Where a cache image keeps the `/tmp` its setup script left.
pub const TMP_SEED: &str = "/.berth/tmp";
/// Run in a container being provisioned, before its commit: moves a
/// non-empty `/tmp` to [`TMP_SEED`], in the container, where its links
/// lead nowhere but the container's own files.
pub const STASH_TMP: &str = "rm -rf /.berth/tmp && if [ -n \"$(ls -A /tmp)\" ]; then \
     mkdir -p /.berth && mv /tmp /.berth/tmp && mkdir -m 1777 /tmp; fi";
/// Run in a new container whose image has a [`TMP_SEED`]: copies it,
/// owners, modes, times and links as they are, into the `/tmp` tmpfs.
pub const SEED_TMP: &str = "cp -a /.berth/tmp/. /tmp/";
/// How long [`STASH_TMP`] or [`SEED_TMP`] may take.
pub const TMP_COPY_TIMEOUT: Duration = Duration::from_secs(300);

/// Marks a container or image as berth's.
pub const LABEL_MANAGED: &str = "dev.berth.managed";
/// The workspace id a container serves.
pub const LABEL_WORKSPACE: &str = "dev.berth.workspace";
/// The id of the berth home whose container or image it is: providers
/// with other homes may share the Engine, and must neither use nor
/// collect each other's.
pub const LABEL_HOME: &str = "dev.berth.home";

/// Seconds the Engine waits after SIGTERM before SIGKILL on stop. The agent
/// needs at most twice its grace period (2 s) and a margin to end commands.
pub const STOP_TIMEOUT_SECS: i32 = 10;
/// The process limit when a spec gives none: a fork bomb must not reach
/// the host's limit.
pub const DEFAULT_PIDS: u32 = 4096;

/// What one berth home calls its containers and images in the Engine, and
/// how it labels them. Every name carries the home's id, so a lookup by
/// name finds only this home's, and every list filters on its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    home: String,
}

/// The image repositories of a home, as `berth-<home id>/<kind>`: cache
/// entries, snapshots, and each workspace's provisioned state (what a
/// reset returns to).
pub const CACHE: &str = "cache";
pub const SNAPSHOT: &str = "snapshot";
pub const PROVISIONED: &str = "provisioned";
/// The repository naming the image each workspace's container was made
/// from, so that no image a container uses is ever named only by a cache
/// entry or a snapshot: removing one of those names is then an untag on
/// every engine (Podman removes the containers of an image removed by
/// force, where Docker only drops the name).
pub const BASE: &str = "base";

impl Names {
    pub fn new(home: &HomeId) -> Names {
        Names {
            home: home.to_string(),
        }
    }

    /// The container serving workspace `id`.
    pub fn container(&self, id: &WorkspaceId) -> String {
        format!("berth-{}-{id}", self.home)
    }

    /// A container made only to read an image's files, never started.
    pub fn probe(&self, unique: &str) -> String {
        format!("berth-{}-probe-{unique}", self.home)
    }

    /// The repository of images of `kind` ([`CACHE`], [`SNAPSHOT`],
    /// [`PROVISIONED`]).
    pub fn repo(&self, kind: &str) -> String {
        format!("berth-{}/{kind}", self.home)
    }

    pub fn cache_image(&self, key: &str) -> String {
        format!("{}:{key}", self.repo(CACHE))
    }

    pub fn snapshot_image(&self, id: &str) -> String {
        format!("{}:{id}", self.repo(SNAPSHOT))
    }

    pub fn provisioned_image(&self, id: &WorkspaceId) -> String {
        format!("{}:{id}", self.repo(PROVISIONED))
    }

    /// The name of the image workspace `id`'s container was made from.
    pub fn base_image(&self, id: &WorkspaceId) -> String {
        format!("{}:{id}", self.repo(BASE))
    }

    /// The id of the home, as its label carries it.
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The labels of everything made for this home: images committed from
    /// its containers carry them too.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_HOME.to_string(), self.home.clone()),
        ])
    }

    /// The Engine's label filter for what this home made: one label, for
    /// Podman (4.3) answers a list filtered by two with nothing; the rest
    /// is checked by [`Names::is_ours`].
    pub fn label_filter(&self) -> HashMap<&'static str, Vec<String>> {
        HashMap::from([("label", vec![format!("{LABEL_HOME}={}", self.home)])])
    }

    /// Whether an object labelled `labels` carries every label of
    /// [`Names::labels`].
    pub fn is_ours(&self, labels: &HashMap<String, String>) -> bool {
        self.labels()
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// Whether an image listed with `repo_tags` has no name: engines list none,
/// or `<none>:<none>`.
pub fn dangling(repo_tags: &[String]) -> bool {
    repo_tags.iter().all(|tag| tag == "<none>:<none>")
}

/// Whether `text` can be an image tag (and so a snapshot id or cache key):
/// what Docker accepts, which also keeps it from naming another image.
pub fn valid_tag(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && text.len() <= 128
}

/// What a container is made from, besides the workspace's spec.
#[derive(Debug, Clone)]
pub struct ContainerPlan<'a> {
    pub id: &'a WorkspaceId,
    /// The home's names and labels.
    pub names: &'a Names,
    pub spec: &'a Spec,
    /// The image (name or id) the container starts from.
    pub image: &'a str,
    /// The agent executable on the host.
    pub agent: &'a str,
    /// The host directory mounted at [`RUN_DIR`].
    pub run_dir: &'a str,
    /// The memory limit and `/dev/shm` and `/tmp` sizes where the spec
    /// sets none.
    pub defaults: ResourceDefaults,
    /// Whether `/tmp` is the bounded tmpfs of [`TMP`]: all but a container
    /// being provisioned from a user's image.
    pub bounded_tmp: bool,
}

/// The Engine's create request for a workspace's container: the agent as
/// its entrypoint, the socket directory mounted, limits, network, labels.
pub fn container_body(plan: &ContainerPlan<'_>) -> ContainerCreateBody {
    let spec = plan.spec;
    let mut labels = plan.names.labels();
    labels.insert(LABEL_WORKSPACE.to_string(), plan.id.to_string());
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let memory = i64::try_from(plan.defaults.memory(spec)).ok();
    let shm = i64::try_from(plan.defaults.shm(spec)).ok();
    let host_config = HostConfig {
        binds: Some(vec![
            format!("{}:{AGENT_PATH}:ro", plan.agent),
            format!("{}:{RUN_DIR}", plan.run_dir),
        ]),
        network_mode: Some(network_mode(spec).to_string()),
        memory,
        // Swap beyond the memory limit would let a workspace exceed it.
        memory_swap: memory,
        pids_limit: Some(i64::from(spec.limits.pids.unwrap_or(DEFAULT_PIDS))),
        nano_cpus: spec.limits.cpus.map(|c| (c * 1e9) as i64),
        shm_size: shm,
        tmpfs: plan
            .bounded_tmp
            .then(|| HashMap::from([(TMP.to_string(), tmp_options(plan.defaults.tmp(spec)))])),
        // The agent is PID 1 and reaps; Docker's own init would hide it.
        init: Some(false),
        ..HostConfig::default()
    };
    ContainerCreateBody {
        image: Some(plan.image.to_string()),
        entrypoint: Some(vec![AGENT_PATH.to_string()]),
        cmd: Some(vec![
            "--socket".into(),
            format!("{RUN_DIR}/{SOCKET_NAME}"),
            "--root".into(),
            spec.root().into(),
        ]),
        working_dir: Some(spec.root().to_string()),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels),
        stop_timeout: Some(i64::from(STOP_TIMEOUT_SECS)),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

/// The mount options of [`TMP`]: `exec`, as on disk, where the Engine's
/// default is `noexec`; sticky and writable by all, as `/tmp` is.
fn tmp_options(size: u64) -> String {
    format!("rw,exec,nosuid,nodev,size={size},mode=1777")
}

/// The size of the tmpfs at [`TMP`] of a container the Engine describes
/// with `host_config`; `None` when it has none (one made before `/tmp`
/// was a tmpfs) or none of a known size.
pub fn tmp_size(host_config: &HostConfig) -> Option<u64> {
    let options = host_config.tmpfs.as_ref()?.get(TMP)?;
    options
        .split(',')
        .find_map(|option| option.strip_prefix("size="))
        .and_then(berth_core::spec::parse_bytes)
}

fn network_mode(spec: &Spec) -> &'static str {
    match spec.network {
        Some(Network::Host) => "host",
        Some(Network::None) | None => "none",
    }
}

/// The isolation a workspace's container has, made with `defaults` and a
/// `/tmp` tmpfs of `tmp` bytes (`None`: on its writable layer).
pub fn isolation(spec: &Spec, defaults: ResourceDefaults, tmp: Option<u64>) -> Isolation {
    let mut namespaces: Vec<String> = ["mount", "pid", "uts", "ipc"]
        .into_iter()
        .map(String::from)
        .collect();
    let network = network_mode(spec);
    if network == "none" {
        namespaces.push("net".into());
    }
    let (memory, shm) = (defaults.memory(spec), defaults.shm(spec));
    let mut limits = vec![
        format!("memory={memory}"),
        format!("pids={}", spec.limits.pids.unwrap_or(DEFAULT_PIDS)),
    ];
    if let Some(cpus) = spec.limits.cpus {
        limits.push(format!("cpus={cpus}"));
    }
    limits.push(format!("shm={shm}"));
    if let Some(tmp) = tmp {
        limits.push(format!("tmp={tmp}"));
    }
    let mut notes = vec![
        "a Docker container: the Engine's default seccomp profile and capabilities, \
         no user namespace unless the daemon remaps users"
            .to_string(),
    ];
    notes.extend(ResourceDefaults::notes(spec, memory, shm, tmp));
    notes.push(
        "no cgroup for commands inside a container: each command runs under a shepherd, \
         its child subreaper, and a timeout or a cancel ends every process beneath it, \
         however it detached, and no other command's (a command that kills its \
         shepherd has them killed at once); a session or terminal runs under one \
         shepherd for its life, and closing it, or its shell exiting, ends every \
         process started in it; a session command's timeout or cancel ends every \
         process that appeared beneath the session's shepherd while it ran, but the \
         shell, however it detached"
            .into(),
    );
    Isolation {
        isolated: true,
        namespaces,
        limits,
        seccomp: true,
        network: network.into(),
        notes,
    }
}

/// The finest step of the mtimes in an image berth committed.
const MTIME_GRANULE: Duration = Duration::from_secs(1);
/// How far behind the wall clock the kernel's file timestamps may be: they
/// come from a clock that advances once a tick (10 ms at the slowest).
const STAMP_LAG: Duration = Duration::from_millis(20);
/// The longest [`first_write_at`] asks anyone to wait.
pub const LONGEST_FIRST_WRITE_WAIT: Duration = MTIME_GRANULE.saturating_add(STAMP_LAG);

/// When a container made from an image may first be written to (`None`:
/// at once), from the image's labels and its `Created` timestamp (RFC 3339
/// with nanoseconds).
///
/// `docker commit` truncates every file's mtime to whole seconds, and the
/// Engine's diff takes two mtimes as equal when their seconds match and
/// either has no nanoseconds: an edit keeping a file's size, made in the
/// second of the commit, would not be a change. Files in the image were
/// stamped at or before its creation, so once the wall clock is past the
/// creation's second every later edit lands in a later second. A
/// correctness wait of at most a second and a tick, like git's "racy git"
/// handling, not a timing guess.
///
/// Only images berth committed (they carry [`LABEL_MANAGED`]) need it: a
/// user's base image holds old files. An unreadable timestamp costs a full
/// second from `now`, which is past any commit already made; a timestamp
/// ahead of `now` (another clock) is not waited for beyond that.
pub fn first_write_at(
    labels: Option<&HashMap<String, String>>,
    created: Option<&str>,
    now: SystemTime,
) -> Option<SystemTime> {
    let committed = labels
        .and_then(|l| l.get(LABEL_MANAGED))
        .is_some_and(|v| v == "true");
    if !committed {
        return None;
    }
    let latest = now + LONGEST_FIRST_WRITE_WAIT;
    let Some(created) = created.and_then(|c| OffsetDateTime::parse(c, &Rfc3339).ok()) else {
        return Some(latest);
    };
    // The creation's whole second, then the next one.
    let secs = u64::try_from(created.unix_timestamp()).ok()?;
    let next_second = UNIX_EPOCH + Duration::from_secs(secs) + MTIME_GRANULE + STAMP_LAG;
    (next_second > now).then(|| next_second.min(latest))
}

/// One entry of the Engine's change list, under the workspace root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineChange {
    /// Relative to the workspace root.
    pub path: String,
    pub kind: ChangeKind,
}

/// The absolute path in the container of `rel`, a path relative to the
/// workspace root `root`.
pub fn inside(root: &str, rel: &str) -> String {
    match (root, rel) {
        (root, "") => root.to_string(),
        ("/", rel) => format!("/{rel}"),
        (root, rel) => format!("{root}/{rel}"),
    }
}

/// Keeps the Engine's changes under the workspace root `root`, relative
/// to it: what a workspace's files are, as opposed to caches and logs the
/// commands left elsewhere in the container. Under the root `/`, berth's
/// own directory is left out too.
pub fn workspace_changes<'a>(
    root: &str,
    changes: impl IntoIterator<Item = (&'a str, ChangeKind)>,
) -> Vec<EngineChange> {
    let prefix = format!("{}/", root.trim_end_matches('/'));
    let ours = |rel: &str| {
        root == "/"
            && (rel == BERTH_DIR
                || rel
                    .strip_prefix(BERTH_DIR)
                    .is_some_and(|r| r.starts_with('/')))
    };
    let mut out: Vec<EngineChange> = changes
        .into_iter()
        .filter_map(|(path, kind)| {
            let rel = path.strip_prefix(&prefix)?;
            (!rel.is_empty() && !ours(rel)).then(|| EngineChange {
                path: rel.trim_end_matches('/').to_string(),
                kind,
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The kind of a path from a Go `os.FileMode`, as the Engine's archive
/// stat reports it.
pub fn file_kind(go_mode: u32) -> berth_core::FileKind {
    const DIR: u32 = 1 << 31;
    const SYMLINK: u32 = 1 << 27;
    const OTHER: u32 = (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19);
    if go_mode & DIR != 0 {
        berth_core::FileKind::Dir
    } else if go_mode & SYMLINK != 0 {
        berth_core::FileKind::Symlink
    } else if go_mode & OTHER != 0 {
        berth_core::FileKind::Other
    } else {
        berth_core::FileKind::File
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::FileKind;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn body(spec: &Spec) -> ContainerCreateBody {
        body_with(spec, true)
    }

    fn body_with(spec: &Spec, bounded_tmp: bool) -> ContainerCreateBody {
        container_body(&ContainerPlan {
            id: &WorkspaceId::from_string("01abc"),
            names: &names(),
            spec,
            image: "debian:12",
            agent: "/home/b/docker/agent/berth-agent-1234",
            run_dir: "/home/b/docker/run/01abc",
            defaults: DEFAULTS,
            bounded_tmp,
        })
    }

    fn names() -> Names {
        Names::new(&HomeId::from_text("0123456789abcdef").unwrap())
    }

    #[test]
    fn every_name_and_label_carries_the_home() {
        let names = names();
        let other = Names::new(&HomeId::from_text("fedcba9876543210").unwrap());
        let ws = WorkspaceId::from_string("01abc");
        assert_eq!(names.container(&ws), "berth-0123456789abcdef-01abc");
        assert_eq!(names.cache_image("k1"), "berth-0123456789abcdef/cache:k1");
        assert_eq!(
            names.snapshot_image("s1"),
            "berth-0123456789abcdef/snapshot:s1"
        );
        assert_eq!(
            names.provisioned_image(&ws),
            "berth-0123456789abcdef/provisioned:01abc"
        );
        assert_eq!(names.base_image(&ws), "berth-0123456789abcdef/base:01abc");
        assert_eq!(
            names.label_filter(),
            HashMap::from([("label", vec!["dev.berth.home=0123456789abcdef".into()])])
        );
        for (ours, theirs) in [
            (names.container(&ws), other.container(&ws)),
            (names.probe("p"), other.probe("p")),
            (names.cache_image("k1"), other.cache_image("k1")),
            (names.snapshot_image("s1"), other.snapshot_image("s1")),
            (names.provisioned_image(&ws), other.provisioned_image(&ws)),
            (names.base_image(&ws), other.base_image(&ws)),
        ] {
            assert_ne!(ours, theirs);
        }
    }

    #[test]
    fn an_image_is_dangling_when_it_has_no_name() {
        assert!(dangling(&[]));
        assert!(dangling(&["<none>:<none>".into()]));
        assert!(!dangling(&["berth-0123456789abcdef/base:01abc".into()]));
    }

    #[test]
    fn only_what_carries_every_label_of_the_home_is_ours() {
        let names = names();
        assert!(names.is_ours(&names.labels()));
        let mut more = names.labels();
        more.insert(LABEL_WORKSPACE.into(), "01abc".into());
        assert!(names.is_ours(&more));
        let other = Names::new(&HomeId::from_text("fedcba9876543210").unwrap());
        assert!(!names.is_ours(&other.labels()));
        let mut unmanaged = names.labels();
        unmanaged.remove(LABEL_MANAGED);
        assert!(!names.is_ours(&unmanaged));
        assert!(!names.is_ours(&HashMap::new()));
    }

    const DEFAULTS: ResourceDefaults = ResourceDefaults {
        memory: 1 << 30,
        shm: 32 << 20,
        tmp: 256 << 20,
    };

    #[test]
    fn the_agent_is_the_read_only_entrypoint_serving_the_mounted_socket() {
        let body = body(&spec("{}"));
        assert_eq!(body.entrypoint, Some(vec![AGENT_PATH.to_string()]));
        let cmd = body.cmd.unwrap();
        assert_eq!(cmd[..2], ["--socket", "/.berth/run/agent.sock"]);
        let binds = body.host_config.unwrap().binds.unwrap();
        assert_eq!(
            binds,
            [
                "/home/b/docker/agent/berth-agent-1234:/.berth/agent:ro",
                "/home/b/docker/run/01abc:/.berth/run"
            ]
        );
        assert_eq!(body.working_dir.as_deref(), Some("/workspace"));
    }

    #[test]
    fn network_is_none_unless_the_spec_asks_for_the_host() {
        let none = body(&spec("{}")).host_config.unwrap();
        assert_eq!(none.network_mode.as_deref(), Some("none"));
        let host = body(&spec(r#"{"network":"host"}"#)).host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert!(
            isolation(&spec("{}"), DEFAULTS, None)
                .namespaces
                .contains(&"net".into())
        );
        assert_eq!(
            isolation(&spec(r#"{"network":"host"}"#), DEFAULTS, None).network,
            "host"
        );
    }

    #[test]
    fn limits_become_memory_pids_and_cpus() {
        let host = body(&spec(
            r#"{"limits":{"memory":"256m","pids":64,"cpus":1.5}}"#,
        ))
        .host_config
        .unwrap();
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_swap, Some(256 << 20));
        assert_eq!(host.pids_limit, Some(64));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        let unset = body(&spec("{}")).host_config.unwrap();
        assert_eq!(unset.memory, Some(1 << 30), "the default memory limit");
        assert_eq!(unset.memory_swap, Some(1 << 30));
        assert_eq!(unset.pids_limit, Some(i64::from(DEFAULT_PIDS)));
    }

    #[test]
    fn shared_memory_has_the_default_size_within_the_memory_limit() {
        let shm = |json: &str| body(&spec(json)).host_config.unwrap().shm_size;
        assert_eq!(shm("{}"), Some(32 << 20));
        assert_eq!(shm(r#"{"limits":{"memory":"16m"}}"#), Some(16 << 20));
        let shown = isolation(&spec("{}"), DEFAULTS, None);
        for limit in [format!("memory={}", 1 << 30), format!("shm={}", 32 << 20)] {
            assert!(shown.limits.contains(&limit), "{limit}: {shown:?}");
        }
        assert!(
            shown
                .notes
                .contains(&"memory limit 1GiB (the default, BERTH_DEFAULT_MEMORY)".to_string()),
            "{shown:?}"
        );
    }

    #[test]
    fn tmp_is_an_executable_tmpfs_of_the_default_size_within_the_memory_limit() {
        let tmp = |json: &str| tmp_size(&body(&spec(json)).host_config.unwrap());
        assert_eq!(tmp("{}"), Some(256 << 20));
        assert_eq!(tmp(r#"{"limits":{"tmp":"64m"}}"#), Some(64 << 20));
        assert_eq!(tmp(r#"{"limits":{"memory":"16m"}}"#), Some(16 << 20));
        let options = &body(&spec("{}")).host_config.unwrap().tmpfs.unwrap()[TMP];
        for option in ["exec", "nosuid", "nodev", "mode=1777"] {
            assert!(options.split(',').any(|o| o == option), "{options}");
        }
        // As an engine may describe it, and as older containers have none.
        let described = |options: &str| HostConfig {
            tmpfs: Some(HashMap::from([(TMP.to_string(), options.to_string())])),
            ..HostConfig::default()
        };
        assert_eq!(
            tmp_size(&described("rw,size=262144k,mode=1777")),
            Some(256 << 20)
        );
        assert_eq!(tmp_size(&described("rw")), None);
        assert_eq!(tmp_size(&HostConfig::default()), None);
        // Provisioned from a user's image, `/tmp` is on the layer, for
        // the commit to hold what the setup script leaves there.
        let provisioning = body_with(&spec("{}"), false).host_config.unwrap();
        assert_eq!(provisioning.tmpfs, None);

        let shown = isolation(&spec("{}"), DEFAULTS, Some(256 << 20));
        assert!(
            shown.limits.contains(&format!("tmp={}", 256 << 20)),
            "{shown:?}"
        );
        assert!(
            shown
                .notes
                .iter()
                .any(|n| n.starts_with("/tmp is a tmpfs of 256MiB")),
            "{shown:?}"
        );
        let old = isolation(&spec("{}"), DEFAULTS, None);
        assert!(!old.limits.iter().any(|l| l.starts_with("tmp=")), "{old:?}");
        assert!(
            old.notes.iter().any(|n| n.starts_with("/tmp is on disk")),
            "{old:?}"
        );
    }

    #[test]
    fn labels_name_the_workspace_and_env_comes_from_the_spec() {
        let body = body(&spec(r#"{"env":{"A":"1","B":"two words"}}"#));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_WORKSPACE], "01abc");
        assert_eq!(labels[LABEL_HOME], "0123456789abcdef");
        assert_eq!(body.env.unwrap(), ["A=1", "B=two words"]);
    }

    #[test]
    fn changes_outside_the_workspace_root_are_left_out() {
        let changes = workspace_changes(
            "/workspace",
            [
                ("/workspace", ChangeKind::Modified),
                ("/workspace/repo/b.txt", ChangeKind::Added),
                ("/tmp/cache", ChangeKind::Added),
                ("/workspace/repo/a.txt", ChangeKind::Deleted),
                ("/workspaces/other", ChangeKind::Added),
                ("/root/.ash_history", ChangeKind::Modified),
            ],
        );
        assert_eq!(
            changes,
            [
                EngineChange {
                    path: "repo/a.txt".into(),
                    kind: ChangeKind::Deleted
                },
                EngineChange {
                    path: "repo/b.txt".into(),
                    kind: ChangeKind::Added
                },
            ]
        );
    }

    #[test]
    fn under_the_root_slash_everything_but_berths_own_directory_is_a_change() {
        let changes = workspace_changes(
            "/",
            [
                ("/.berth", ChangeKind::Modified),
                ("/.berth/agent", ChangeKind::Added),
                ("/.berthday", ChangeKind::Added),
                ("/code/x/f", ChangeKind::Added),
                ("/tmp/test.patch", ChangeKind::Added),
            ],
        );
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, [".berthday", "code/x/f", "tmp/test.patch"]);
        assert_eq!(inside("/", "code/x"), "/code/x");
        assert_eq!(inside("/", ""), "/");
        assert_eq!(inside("/workspace", "code"), "/workspace/code");
        assert_eq!(inside("/workspace", ""), "/workspace");
    }

    #[test]
    fn the_root_is_where_the_agent_serves_and_commands_start() {
        let rooted = body(&spec(r#"{"root":"/"}"#));
        assert_eq!(rooted.working_dir.as_deref(), Some("/"));
        assert_eq!(rooted.cmd.unwrap()[2..], ["--root", "/"]);
    }

    #[test]
    fn tags_refuse_what_would_name_another_image() {
        assert!(valid_tag("01hx2k9q"));
        assert!(valid_tag("0123abcd.v-2_x"));
        for bad in ["", "a:b", "a/b", "-a", ".a", "a b", &"x".repeat(129)] {
            assert!(!valid_tag(bad), "{bad:?}");
        }
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn a_committed_image_is_written_to_only_past_its_creation_second() {
        let berth = HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]);
        let ours = Some(&berth);
        // 2026-11-23T23:09:19Z is 1795475359 s.
        let created = Some("2026-11-23T23:09:19.561306962Z");
        // The next second, and the kernel's stamps a tick behind.
        let next = Some(at(1_795_475_360, 20_000_000));
        assert_eq!(
            first_write_at(ours, created, at(1_795_475_359, 700_000_000)),
            next
        );
        // The same moment written with an offset.
        let offset = Some("2026-11-24T01:09:19.561306962+02:00");
        assert_eq!(
            first_write_at(ours, offset, at(1_795_475_359, 700_000_000)),
            next
        );
        // Already past: no wait.
        assert_eq!(
            first_write_at(ours, created, at(1_795_475_360, 20_000_000)),
            None
        );
        assert_eq!(first_write_at(ours, created, at(1_795_475_400, 0)), None);
    }

    #[test]
    fn an_unreadable_or_future_creation_costs_at_most_one_second() {
        let berth = HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]);
        let now = at(1_795_475_359, 250_000_000);
        let second_later = Some(at(1_795_475_360, 270_000_000));
        assert_eq!(first_write_at(Some(&berth), None, now), second_later);
        assert_eq!(
            first_write_at(Some(&berth), Some("yesterday"), now),
            second_later
        );
        assert_eq!(
            first_write_at(Some(&berth), Some("2026-11-23T23:19:19Z"), now),
            second_later
        );
    }

    #[test]
    fn a_base_image_is_written_to_at_once() {
        let created = Some("2026-11-23T23:09:19.561306962Z");
        let now = at(1_795_475_359, 700_000_000);
        assert_eq!(first_write_at(None, created, now), None);
        let theirs = HashMap::from([("org.example".to_string(), "x".to_string())]);
        assert_eq!(first_write_at(Some(&theirs), created, now), None);
    }

    #[test]
    fn go_file_modes_map_to_kinds() {
        assert_eq!(file_kind(0o644), FileKind::File);
        assert_eq!(file_kind((1 << 31) | 0o755), FileKind::Dir);
        assert_eq!(file_kind((1 << 27) | 0o777), FileKind::Symlink);
        assert_eq!(file_kind((1 << 26) | (1 << 21) | 0o666), FileKind::Other);
    }
}
