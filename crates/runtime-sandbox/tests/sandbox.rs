//! The sandbox runtime on the real kernel: escape attempts that must fail,
//! limits that must hold, and layer semantics (reset, snapshots, forks,
//! changes) that must be exact. Needs root, overlayfs, user namespaces and
//! cgroups; each test says which is missing.

#![expect(clippy::unwrap_used, reason = "a failing step should fail the test")]

use berth_core::{
    Change, ChangeKind, ExecRequest, ExportTarget, FileKind, Runtime, Spec, Workspace,
    WorkspacePath, spec::Network,
};
use berth_runtime_sandbox::{EngineExporter, SandboxConfig, SandboxRuntime};
use berth_testkit::attacks;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod support;

use support::{Ran, agent_binary, config, run};

async fn runtime(home: &Path) -> SandboxRuntime {
    support::runtime(config(home)).await
}

/// The runtime with its agent, which handles files.
async fn runtime_with_agent(home: &Path) -> SandboxRuntime {
    let mut config = config(home);
    config.agent_program = Some(agent_binary());
    support::runtime(config).await
}

thread_local! {
    static MADE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Ends the processes of every workspace this test made, even when the
/// test fails half-way (a failed fork-bomb test must not leave its bomb).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in MADE.with(|m| m.take()) {
            support::end_instances(&id);
        }
    }
}

fn workspace(spec: Spec) -> Workspace {
    let ws = support::workspace("test", spec);
    MADE.with(|m| m.borrow_mut().push(ws.id.to_string()));
    ws
}

async fn sh(rt: &SandboxRuntime, ws: &Workspace, script: &str) -> Ran {
    run(rt, ws, ExecRequest::argv(["/bin/sh", "-c", script])).await
}

/// A started workspace on the host base.
async fn started(rt: &SandboxRuntime, spec: Spec) -> Workspace {
    let ws = workspace(spec);
    rt.create(&ws, None).await.unwrap();
    rt.start(&ws).await.unwrap();
    ws
}

/// A workspace on the host base provisioned as the provider does it:
/// made, started, `setup` run, its state frozen into the cache under
/// `key` and started again; from then on its `/tmp` is the bounded tmpfs.
async fn set_up(rt: &SandboxRuntime, spec: Spec, setup: &str, key: &str) -> Workspace {
    let ws = started(rt, spec).await;
    let ran = sh(rt, &ws, setup).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    rt.save_cache(&ws, key).await.unwrap();
    ws
}

#[tokio::test]
async fn host_processes_are_invisible_and_isolation_is_reported() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let mut marker = std::process::Command::new("sleep")
        .arg("31337")
        .spawn()
        .unwrap();
    let ws = started(&rt, Spec::default()).await;

    let ran = sh(
        &rt,
        &ws,
        "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; ls -d /proc/[0-9]* | wc -l",
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        !ran.stdout.contains("31337"),
        "a host process is visible: {}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("berth-sandbox-init reap"),
        "pid 1 is the workspace's init: {}",
        ran.stdout
    );
    let count: u32 = ran.stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        count <= 4,
        "only the workspace's own processes: {}",
        ran.stdout
    );
    let whoami = sh(&rt, &ws, "id -u; cat /proc/self/uid_map; hostname").await;
    assert!(
        whoami
            .stdout
            .starts_with("0\n         0     100000      65536\nws-"),
        "{}",
        whoami.stdout
    );

    // The workspace sees its own cgroups as the root, and nothing of the
    // host's hierarchy.
    let cgroups = sh(&rt, &ws, "cat /proc/self/cgroup").await;
    assert!(
        !cgroups.stdout.is_empty() && cgroups.stdout.lines().all(|l| l.ends_with(":/")),
        "{}",
        cgroups.stdout
    );
    assert!(cgroup_file(&ws, "cgroup.procs").is_some_and(|procs| !procs.is_empty()));

    let isolation = rt.isolation(&ws);
    assert!(isolation.isolated && isolation.seccomp);
    for ns in ["user", "mount", "pid", "uts", "ipc", "net", "cgroup"] {
        assert!(
            isolation.namespaces.iter().any(|n| n == ns),
            "{ns} missing: {isolation:?}"
        );
    }
    assert_eq!(isolation.network, "none (loopback only)");
    assert!(isolation.limits.contains(&"pids=4096".to_string()));

    rt.remove(&ws).await.unwrap();
    marker.kill().unwrap();
    marker.wait().unwrap();
}

#[tokio::test]
async fn host_files_outside_the_layers_cannot_be_read_or_written() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let secret = home.path().join("secret.txt");
    fs::write(&secret, "host secret").unwrap();
    let ws = started(&rt, Spec::default()).await;
    let secret_path = secret.display().to_string();

    let script = format!(
        "cat {s} /proc/1/root{s} /proc/self/root{s} 2>/dev/null;
         ln -s {s} /workspace/link; cat /workspace/link 2>/dev/null;
         ln -s /proc/1/root/.. /workspace/up; ls /workspace/up/$(dirname {s}) 2>/dev/null;
         cat /proc/1/root/../../../../..{s} 2>/dev/null;
         echo written > /usr/bin/berth-escape 2>/dev/null && echo WROTE-USR;
         echo written >> /etc/passwd 2>/dev/null && echo WROTE-ETC;
         mkdir -p /tmp/b && mount --bind / /tmp/b 2>/dev/null && echo MOUNTED;
         ls /proc/1/root/root/.cargo 2>/dev/null && echo SAW-ROOT-HOME;
         echo done",
        s = secret_path
    );
    let ran = sh(&rt, &ws, &script).await;
    assert_eq!(
        ran.stdout.trim(),
        "done",
        "something got through: {}",
        ran.stdout
    );
    assert_eq!(fs::read_to_string(&secret).unwrap(), "host secret");
    assert!(!Path::new("/usr/bin/berth-escape").exists());
    assert!(
        !fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("written")
    );
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn a_service_on_the_host_loopback_is_unreachable_unless_the_spec_asks() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!(
        "bash -c 'echo hello > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo CONNECTED || echo REFUSED"
    );

    let isolated = started(&rt, Spec::default()).await;
    let ran = sh(&rt, &isolated, &probe).await;
    assert_eq!(ran.stdout.trim(), "REFUSED");
    let lo = sh(
        &rt,
        &isolated,
        "cat /sys/class/net/lo/operstate 2>/dev/null; grep -c : /proc/net/dev",
    )
    .await;
    assert_eq!(
        lo.stdout.lines().last(),
        Some("1"),
        "only lo exists: {}",
        lo.stdout
    );

    // The same probe gets through with the host's network: the test can fail.
    let spec = Spec {
        network: Some(Network::Host),
        ..Spec::default()
    };
    let open = started(&rt, spec).await;
    let ran = sh(&rt, &open, &probe).await;
    assert_eq!(ran.stdout.trim(), "CONNECTED");
    assert_eq!(rt.isolation(&open).network, "host");
    rt.remove(&isolated).await.unwrap();
    rt.remove(&open).await.unwrap();
}

fn limited(memory: Option<u64>, pids: Option<u32>) -> Spec {
    let mut spec = Spec::default();
    spec.limits.memory = memory;
    spec.limits.pids = pids;
    spec
}

fn cgroup_file(ws: &Workspace, file: &str) -> Option<String> {
    let layout = berth_runtime_sandbox::cgroup::detect().unwrap();
    let cgroups = support::instances(&layout, ws.id.as_str());
    let dir = cgroups
        .first()?
        .dirs
        .iter()
        .find(|d| d.join("pids.max").exists())?
        .clone();
    fs::read_to_string(dir.join(file))
        .ok()
        .map(|t| t.trim().to_string())
}

#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_pids_limit() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = started(&rt, limited(None, Some(64))).await;
    // Forks until refused, counting the children that could be made.
    let forks = "my $n = 0; for (1..200) { my $p = fork; next unless defined $p;
                 if ($p == 0) { sleep 600; exit } $n++ } print \"$n\\n\"";
    let ran = run(&rt, &ws, ExecRequest::argv(["perl", "-e", forks])).await;
    let made: u32 = ran
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{:?} {}", ran.code, ran.stderr));
    // 64 minus the init, the exec helper and perl itself.
    assert_eq!(made, 61, "children made under pids=64");
    assert_eq!(cgroup_file(&ws, "pids.max").as_deref(), Some("64"));
    let current: u32 = cgroup_file(&ws, "pids.current").unwrap().parse().unwrap();
    assert!(current <= 64);

    // A real bomb, ended by its timeout; the host can still fork.
    let mut bomb = ExecRequest::argv(["/bin/bash", "-c", "b(){ b|b& }; b; wait"]);
    bomb.timeout_ms = Some(1500);
    let _ = run(&rt, &ws, bomb).await;
    let host = std::process::Command::new("true").status().unwrap();
    assert!(host.success());
    let current: u32 = cgroup_file(&ws, "pids.current").unwrap().parse().unwrap();
    assert!(current <= 64);

    rt.stop(&ws).await.unwrap();
    assert_eq!(
        cgroup_file(&ws, "pids.current"),
        None,
        "stop removes the cgroup"
    );
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn the_memory_limit_is_enforced() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = started(&rt, limited(Some(64 << 20), None)).await;
    let hog = "my $x = 'a' x 300_000_000; print length $x";
    let ran = run(&rt, &ws, ExecRequest::argv(["perl", "-e", hog])).await;
    assert_eq!(
        ran.signal,
        Some(9),
        "killed by the OOM killer: {:?} {}",
        ran.code,
        ran.stderr
    );
    let fits = run(
        &rt,
        &ws,
        ExecRequest::argv([
            "sh",
            "-c",
            "head -c 10000000 /dev/zero | tail -c 10000000 | wc -c",
        ]),
    )
    .await;
    assert_eq!(fits.stdout.trim(), "10000000");
    rt.remove(&ws).await.unwrap();
}

/// A file of a workspace's memory cgroup, read from the host.
fn memory_file(ws: &Workspace, files: &[&str]) -> String {
    let layout = berth_runtime_sandbox::cgroup::detect().unwrap();
    let cgroups = support::instances(&layout, ws.id.as_str()).pop().unwrap();
    let memory = &cgroups.dirs[0];
    files
        .iter()
        .find_map(|file| fs::read_to_string(memory.join(file)).ok())
        .unwrap()
}

/// The memory limit in force in a workspace's cgroup, read from the host.
fn memory_limit(ws: &Workspace) -> u64 {
    memory_file(ws, &["memory.max", "memory.limit_in_bytes"])
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_workspace_without_limits_gets_the_default_memory_limit_and_a_bounded_shm() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut config = config(home.path());
    config.defaults = berth_core::ResourceDefaults {
        memory: 256 << 20,
        shm: 8 << 20,
        tmp: 32 << 20,
    };
    let rt = support::runtime(config).await;
    let ws = set_up(&rt, Spec::default(), "true", "plain").await;
    assert_eq!(memory_limit(&ws), 256 << 20);
    let ran = sh(&rt, &ws, "df -k /tmp | tail -1 | awk '{print $2}'").await;
    assert_eq!(ran.stdout, "32768\n", "{}", ran.stderr);
    let ran = sh(
        &rt,
        &ws,
        "df -k /dev/shm | tail -1 | awk '{print $2}';
         head -c 6000000 /dev/zero > /dev/shm/fits && echo fits;
         head -c 3000000 /dev/zero > /dev/shm/more || echo refused",
    )
    .await;
    assert_eq!(ran.stdout, "8192\nfits\nrefused\n", "{}", ran.stderr);
    assert!(
        ran.stderr.contains("No space left on device"),
        "{}",
        ran.stderr
    );
    let isolation = rt.isolation(&ws);
    for limit in [
        format!("memory={}", 256 << 20),
        format!("shm={}", 8 << 20),
        format!("tmp={}", 32 << 20),
    ] {
        assert!(isolation.limits.contains(&limit), "{limit}: {isolation:?}");
    }
    assert!(
        isolation
            .notes
            .contains(&"memory limit 256MiB (the default, BERTH_DEFAULT_MEMORY)".to_string()),
        "{isolation:?}"
    );

    // A spec's limit overrides the default; /dev/shm and /tmp stay
    // within it, as their pages count against it.
    let own = set_up(&rt, limited(Some(4 << 20), None), "true", "own").await;
    assert_eq!(memory_limit(&own), 4 << 20);
    let ran = sh(&rt, &own, "df -k /tmp | tail -1 | awk '{print $2}'").await;
    assert_eq!(ran.stdout, "4096\n", "{}", ran.stderr);
    let isolation = rt.isolation(&own);
    assert!(
        isolation
            .notes
            .iter()
            .any(|n| n.starts_with("/tmp is a tmpfs of 4MiB (BERTH_TMP_SIZE")),
        "{isolation:?}"
    );
    for limit in [format!("shm={}", 4 << 20), format!("tmp={}", 4 << 20)] {
        assert!(isolation.limits.contains(&limit), "{limit}: {isolation:?}");
    }
    rt.remove(&ws).await.unwrap();
    rt.remove(&own).await.unwrap();
}

/// A workspace writes more into `/tmp` than its bound, as a build or an
/// agent's scratch files can: the write fails with ENOSPC inside, nothing
/// lands on the host's disk, the pages are charged to the workspace's
/// memory, and the workspace keeps working. Before `/tmp` was a tmpfs, it
/// was the overlay's upper directory on the host's disk, without a bound.
#[tokio::test]
async fn tmp_is_bounded_and_a_workspace_cannot_fill_the_host_through_it() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut config = config(home.path());
    config.defaults = berth_core::ResourceDefaults {
        memory: 256 << 20,
        shm: 8 << 20,
        tmp: 16 << 20,
    };
    let rt = support::runtime(config).await;
    let ws = set_up(
        &rt,
        Spec {
            root: Some("/".into()),
            ..Spec::default()
        },
        "echo kept > /tmp/left",
        "bounded",
    )
    .await;
    let upper = home
        .path()
        .join("sandbox")
        .join(ws.id.as_str())
        .join("upper");
    let disk_before = berth_core::usage::disk_usage(&upper).unwrap();

    let ran = sh(
        &rt,
        &ws,
        "head -c 100000000 /dev/zero > /tmp/fill || echo refused; wc -c < /tmp/fill",
    )
    .await;
    let mut lines = ran.stdout.lines();
    assert_eq!(lines.next(), Some("refused"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("No space left on device"),
        "{}",
        ran.stderr
    );
    let kept: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!(
        kept <= 16 << 20 && kept > 15 << 20,
        "/tmp holds {kept} bytes"
    );
    let disk_after = berth_core::usage::disk_usage(&upper).unwrap();
    assert!(
        disk_after < disk_before + (1 << 20),
        "the host's disk took {} bytes",
        disk_after - disk_before
    );
    let shmem: u64 = memory_file(&ws, &["memory.stat"])
        .lines()
        .find_map(|line| line.strip_prefix("shmem "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        shmem >= 15 << 20,
        "/tmp's pages count against the memory limit: shmem {shmem}"
    );

    let ran = sh(
        &rt,
        &ws,
        "rm /tmp/fill && echo scratch > /tmp/note && cat /tmp/note",
    )
    .await;
    assert_eq!(ran.stdout, "scratch\n", "{}", ran.stderr);
    let changes = rt.changes(&ws).await.unwrap();
    assert!(
        !changes.iter().any(|c| c.path.starts_with("tmp")),
        "/tmp's files are not the workspace's changes: {changes:?}"
    );
    rt.reset(&ws, None).await.unwrap();
    let ran = sh(&rt, &ws, "ls -A /tmp; stat -c %a /tmp").await;
    assert_eq!(
        ran.stdout, "left\n1777\n",
        "a reset brings back the provisioned /tmp: {}",
        ran.stderr
    );
    rt.remove(&ws).await.unwrap();
}

/// What a setup script leaves in `/tmp` (a file, a directory, a link,
/// modes and owners) is in the first workspace, in one made from the
/// cache, after a reset and in a fork; what a workspace writes there later
/// is scratch: in none of them, and in no snapshot.
#[tokio::test]
async fn a_setup_scripts_tmp_files_are_in_every_workspace_of_its_provisioned_state() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let setup = "echo 'Hello World' > /tmp/hello.txt && mkdir -p /tmp/dir/sub \
                 && echo deep > /tmp/dir/sub/file && chmod 640 /tmp/dir/sub/file \
                 && chown 1000:1000 /tmp/dir && ln -s hello.txt /tmp/link";
    let seen = "cat /tmp/hello.txt /tmp/dir/sub/file /tmp/link; \
                stat -c '%a %u' /tmp/dir/sub/file /tmp/dir; readlink /tmp/link; \
                ls -A /tmp; df -k /tmp | tail -1 | awk '{print $1}'";
    let expected = "Hello World\ndeep\nHello World\n640 0\n755 1000\nhello.txt\n\
                    dir\nhello.txt\nlink\ntmpfs\n";
    let first = set_up(&rt, Spec::default(), setup, "seeded").await;
    let ran = sh(&rt, &first, seen).await;
    assert_eq!(ran.stdout, expected, "the first workspace: {}", ran.stderr);

    let hit = workspace(Spec::default());
    rt.create(&hit, Some("seeded")).await.unwrap();
    rt.start(&hit).await.unwrap();
    let ran = sh(&rt, &hit, seen).await;
    assert_eq!(ran.stdout, expected, "a cache hit: {}", ran.stderr);

    let ran = sh(&rt, &hit, "echo scratch > /tmp/later && rm /tmp/hello.txt").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let snapshot = rt.snapshot(&hit).await.unwrap();
    let fork = workspace(Spec::default());
    rt.fork(&hit, &fork).await.unwrap();
    rt.start(&fork).await.unwrap();
    let ran = sh(&rt, &fork, seen).await;
    assert_eq!(ran.stdout, expected, "a fork: {}", ran.stderr);
    rt.reset(&hit, Some(&snapshot.id)).await.unwrap();
    let ran = sh(&rt, &hit, seen).await;
    assert_eq!(ran.stdout, expected, "a snapshot: {}", ran.stderr);
    sh(&rt, &hit, "echo scratch > /tmp/later").await;
    rt.reset(&hit, None).await.unwrap();
    let ran = sh(&rt, &hit, seen).await;
    assert_eq!(ran.stdout, expected, "a reset: {}", ran.stderr);
    for ws in [first, hit, fork] {
        rt.remove(&ws).await.unwrap();
    }
}

/// A setup script leaves links to host paths in `/tmp`: to a root-only
/// host file, to a host directory, and a directory whose entries are
/// such links. The copy into the workspace's tmpfs runs as host root
/// outside the workspace's root directory, where following one would
/// copy the host's files in; it copies links as links, so inside they
/// lead to the workspace's own (missing) paths and the host's bytes are
/// nowhere in the workspace.
#[tokio::test]
async fn a_setup_scripts_links_in_tmp_to_host_files_are_copied_as_links_not_followed() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let secret_dir = home.path().join("host-secrets");
    fs::create_dir(&secret_dir).unwrap();
    fs::write(secret_dir.join("token"), "host-secret-bytes\n").unwrap();
    fs::set_permissions(
        secret_dir.join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let secret = secret_dir.join("token").display().to_string();
    let rt = runtime(home.path()).await;
    let setup = format!(
        "ln -s {secret} /tmp/file-link && ln -s {dir} /tmp/dir-link \
         && mkdir /tmp/nest && ln -s {secret} /tmp/nest/inner \
         && ln -s /proc/1/root{secret} /tmp/magic",
        dir = secret_dir.display()
    );
    let ws = set_up(&rt, Spec::default(), &setup, "links").await;
    let ran = sh(
        &rt,
        &ws,
        "for l in file-link dir-link nest/inner magic; do readlink /tmp/$l; done; \
         cat /tmp/file-link /tmp/dir-link/token /tmp/nest/inner 2>/dev/null; \
         grep -rs host-secret-bytes /tmp || echo absent",
    )
    .await;
    assert_eq!(
        ran.stdout,
        format!(
            "{secret}\n{}\n{secret}\n/proc/1/root{secret}\nabsent\n",
            secret_dir.display()
        ),
        "{}",
        ran.stderr
    );
    assert_eq!(
        fs::read_to_string(&secret).unwrap(),
        "host-secret-bytes\n",
        "the host file is untouched"
    );
    rt.remove(&ws).await.unwrap();
}

/// A setup script leaves more in `/tmp` than a workspace's `/tmp` holds:
/// the start fails, saying which file did not fit and why, rather than
/// handing out a workspace with part of its provisioned state.
#[tokio::test]
async fn a_provisioned_tmp_larger_than_its_bound_fails_the_start_naming_the_file() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut config = config(home.path());
    config.defaults = berth_core::ResourceDefaults {
        memory: 256 << 20,
        shm: 8 << 20,
        tmp: 4 << 20,
    };
    let rt = support::runtime(config).await;
    let ws = started(&rt, Spec::default()).await;
    let ran = sh(&rt, &ws, "head -c 6000000 /dev/zero > /tmp/big").await;
    assert_eq!(
        ran.code,
        Some(0),
        "on disk while provisioned: {}",
        ran.stderr
    );
    let err = rt.save_cache(&ws, "too-big").await.unwrap_err().to_string();
    assert!(
        err.contains("/tmp/big") && err.contains("No space left on device"),
        "{err}"
    );
    rt.remove(&ws).await.unwrap();
}

/// A workspace whose state was written before `/tmp` was a tmpfs keeps
/// `/tmp` on disk, as its cached layers may hold files there, and `show`
/// says so.
#[tokio::test]
async fn a_workspace_made_before_tmp_was_a_tmpfs_keeps_it_on_disk_and_says_so() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = set_up(&rt, Spec::default(), "true", "old").await;
    rt.stop(&ws).await.unwrap();
    let path = home
        .path()
        .join("sandbox")
        .join(ws.id.as_str())
        .join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let fields = state.as_object_mut().unwrap();
    assert!(fields.remove("tmp_size").is_some());
    assert!(fields.remove("provisioning").is_some());
    fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    rt.start(&ws).await.unwrap();
    let ran = sh(&rt, &ws, "grep -c ' /tmp ' /proc/mounts").await;
    assert_eq!(ran.stdout, "0\n", "{}", ran.stderr);
    let isolation = rt.isolation(&ws);
    assert!(
        isolation
            .notes
            .iter()
            .any(|n| n.starts_with("/tmp is on disk")),
        "{isolation:?}"
    );
    assert!(
        !isolation.limits.iter().any(|l| l.starts_with("tmp=")),
        "{isolation:?}"
    );
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn mounting_new_namespaces_and_module_loading_are_refused() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let ran = sh(
        &rt,
        &ws,
        "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m 2>/dev/null && echo MOUNTED;
         unshare -U true 2>/dev/null && echo UNSHARED;
         unshare -m true 2>/dev/null && echo UNSHARED-MOUNT;
         perl -e 'open(F, \"<\", \"/dev/null\"); my ($e, $m) = (\"\", \"x\" x 16);
                  syscall(313, fileno(F), $e, 0); print \"finit_module: $!\\n\";
                  syscall(175, $m, 16, $e); print \"init_module: $!\\n\"'
         echo done",
    )
    .await;
    assert_eq!(
        ran.stdout,
        "finit_module: Operation not permitted\ninit_module: Operation not permitted\ndone\n",
        "{}",
        ran.stderr
    );
    let caps = sh(
        &rt,
        &ws,
        "grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    assert!(caps.stdout.contains("NoNewPrivs:\t1"), "{}", caps.stdout);
    assert!(caps.stdout.contains("Seccomp:\t2"), "{}", caps.stdout);
    let bounding = u64::from_str_radix(
        caps.stdout
            .lines()
            .next()
            .unwrap()
            .split('\t')
            .nth(1)
            .unwrap(),
        16,
    )
    .unwrap();
    assert_eq!(bounding & (1 << 21), 0, "CAP_SYS_ADMIN is gone");
    assert_eq!(bounding & (1 << 16), 0, "CAP_SYS_MODULE is gone");
    rt.remove(&ws).await.unwrap();
}

/// A host directory like a fresh clone: files, a nested directory, modes.
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("clone");
    fs::create_dir_all(repo.join("src/deep/er")).unwrap();
    fs::write(repo.join("README"), "readme\n").unwrap();
    fs::write(repo.join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(repo.join("src/deep/er/leaf.txt"), "leaf\n").unwrap();
    fs::write(repo.join("run.sh"), "echo run\n").unwrap();
    fs::set_permissions(repo.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    repo
}

fn change(path: &str, kind: ChangeKind, file_kind: FileKind) -> Change {
    Change::new(std::path::Path::new(path), kind, file_kind)
}

/// A workspace provisioned with `repo` at `project/` and cached as `key`.
async fn provisioned(rt: &SandboxRuntime, home: &Path, key: &str) -> Workspace {
    let ws = workspace(Spec::default());
    rt.create(&ws, None).await.unwrap();
    let dest = WorkspacePath::parse("project").unwrap();
    rt.import(&ws, &repo(home), &dest).await.unwrap();
    rt.start(&ws).await.unwrap();
    let setup = sh(
        rt,
        &ws,
        "cd project && echo built > build.out && id -u > owner",
    )
    .await;
    assert_eq!(setup.code, Some(0), "{}", setup.stderr);
    rt.save_cache(&ws, key).await.unwrap();
    ws
}

const EDITS: &str = "cd /workspace/project
    echo changed > README
    rm run.sh
    chmod 600 src/main.rs
    mv src/deep src/moved
    mkdir -p new/dir && echo n > new/dir/file";

#[tokio::test]
async fn changes_are_exact_and_reset_restores_files_deletions_and_permissions() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime_with_agent(home.path()).await;
    let ws = provisioned(&rt, home.path(), "key-reset").await;
    assert!(rt.has_cache("key-reset").await);
    assert_eq!(
        rt.changes(&ws).await.unwrap(),
        vec![],
        "provisioned state is the base"
    );
    let owner = rt
        .read_file(&ws, &WorkspacePath::parse("project/owner").unwrap())
        .await
        .unwrap()
        .read_all(u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        owner, b"0\n",
        "files made inside belong to the workspace's root"
    );

    let ran = sh(&rt, &ws, EDITS).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    use ChangeKind::*;
    use FileKind::{Dir, File};
    assert_eq!(
        rt.changes(&ws).await.unwrap(),
        vec![
            change("project/README", Modified, File),
            change("project/new", Added, Dir),
            change("project/new/dir", Added, Dir),
            change("project/new/dir/file", Added, File),
            change("project/run.sh", Deleted, File),
            change("project/src/deep", Deleted, Dir),
            change("project/src/deep/er", Deleted, Dir),
            change("project/src/deep/er/leaf.txt", Deleted, File),
            change("project/src/main.rs", Modified, File),
            change("project/src/moved", Added, Dir),
            change("project/src/moved/er", Added, Dir),
            change("project/src/moved/er/leaf.txt", Added, File),
        ]
    );

    let archive = home.path().join("changes.tar.zst");
    let summary = rt
        .export_changes(
            &ws,
            &ExportTarget::Archive {
                path: archive.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(summary.deleted.len(), 4);
    let out = home.path().join("exported");
    berth_layers::extract_archive(&archive, &out).unwrap();
    assert_eq!(
        fs::read_to_string(out.join("project/README")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("project/src/moved/er/leaf.txt")).unwrap(),
        "leaf\n"
    );

    rt.reset(&ws, None).await.unwrap();
    assert_eq!(rt.changes(&ws).await.unwrap(), vec![]);
    let after = sh(&rt, &ws, "cd /workspace/project; cat README run.sh src/deep/er/leaf.txt; stat -c %a src/main.rs run.sh; ls").await;
    assert_eq!(
        after.stdout, "readme\necho run\nleaf\n644\n755\nREADME\nbuild.out\nowner\nrun.sh\nsrc\n",
        "{}",
        after.stderr
    );
    rt.remove(&ws).await.unwrap();
}

/// A workspace whose root is `/`, as Derrick's configs make them: the
/// clone at its absolute path, commands at `/`, the setup script's files
/// anywhere saved with the cache (`/tmp` too: its tmpfs starts with the
/// provisioned `/tmp`), and changes, export and reset covering the whole
/// filesystem but berth's own directory and `/tmp`, whose later files are
/// scratch that a reset drops.
#[tokio::test]
async fn a_workspace_rooted_at_slash_keeps_repositories_at_their_absolute_paths() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut config = config(home.path());
    config.agent_program = Some(agent_binary());
    let rt = support::runtime(config).await;
    let spec = Spec {
        root: Some("/".into()),
        ..Spec::default()
    };
    let ws = workspace(spec.clone());
    rt.create(&ws, None).await.unwrap();
    let dest = WorkspacePath::parse("code/app").unwrap();
    rt.import(&ws, &repo(home.path()), &dest).await.unwrap();
    rt.start(&ws).await.unwrap();
    let setup = sh(
        &rt,
        &ws,
        "mkdir -p /var/tmp && echo 'Hello World' > /var/tmp/hello.txt \
         && echo 'Hello World' > /tmp/hello.txt",
    )
    .await;
    assert_eq!(setup.code, Some(0), "{}", setup.stderr);
    rt.save_cache(&ws, "key-slash").await.unwrap();
    rt.remove(&ws).await.unwrap();

    let ws = workspace(spec);
    rt.create(&ws, Some("key-slash")).await.unwrap();
    rt.start(&ws).await.unwrap();
    let ran = run(
        &rt,
        &ws,
        ExecRequest::shell(
            "pwd; cat /var/tmp/hello.txt /tmp/hello.txt; ls -A /tmp; ls code/app; \
             touch /code/made-inside && echo writable",
        ),
    )
    .await;
    assert_eq!(
        ran.stdout, "/\nHello World\nHello World\nhello.txt\nREADME\nrun.sh\nsrc\nwritable\n",
        "{}",
        ran.stderr
    );
    assert_eq!(
        rt.changes(&ws).await.unwrap(),
        vec![change(
            "code/made-inside",
            ChangeKind::Added,
            FileKind::File
        )]
    );
    rt.write_file(
        &ws,
        &WorkspacePath::parse("tmp/test.patch").unwrap(),
        b"patch\n".to_vec(),
    )
    .await
    .unwrap();
    let ran = sh(
        &rt,
        &ws,
        "echo changed > /code/app/README && cat /tmp/test.patch",
    )
    .await;
    assert_eq!(ran.stdout, "patch\n", "{}", ran.stderr);
    use ChangeKind::*;
    use FileKind::File;
    assert_eq!(
        rt.changes(&ws).await.unwrap(),
        vec![
            change("code/app/README", Modified, File),
            change("code/made-inside", Added, File),
        ],
        "everything but berth's own directory and /tmp"
    );
    let out = home.path().join("exported");
    rt.export_changes(&ws, &ExportTarget::Directory { path: out.clone() })
        .await
        .unwrap();
    assert_eq!(
        fs::read_to_string(out.join("code/app/README")).unwrap(),
        "changed\n"
    );
    rt.reset(&ws, None).await.unwrap();
    assert_eq!(rt.changes(&ws).await.unwrap(), vec![]);
    let after = sh(
        &rt,
        &ws,
        "cat /code/app/README /var/tmp/hello.txt /tmp/hello.txt; ls -A /tmp",
    )
    .await;
    assert_eq!(
        after.stdout, "readme\nHello World\nHello World\nhello.txt\n",
        "{}",
        after.stderr
    );
    rt.remove(&ws).await.unwrap();
}

/// A workspace that turned a directory of its filesystem into a link to a
/// host path cannot have a clone imported through it: the link is never
/// followed, so nothing lands on (or is removed from) the host.
#[tokio::test]
async fn an_import_through_a_link_the_workspace_planted_is_refused() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let victim = home.path().join("victim");
    fs::create_dir_all(victim.join("app")).unwrap();
    fs::write(victim.join("app/keep"), "host file\n").unwrap();
    let ws = started(
        &rt,
        Spec {
            root: Some("/".into()),
            ..Spec::default()
        },
    )
    .await;
    let planted = sh(&rt, &ws, &format!("ln -s {} /code", victim.display())).await;
    assert_eq!(planted.code, Some(0), "{}", planted.stderr);
    rt.stop(&ws).await.unwrap();
    let imported = rt
        .import(
            &ws,
            &repo(home.path()),
            &WorkspacePath::parse("code/app").unwrap(),
        )
        .await;
    let err = imported.unwrap_err().to_string();
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(
        fs::read_to_string(victim.join("app/keep")).unwrap(),
        "host file\n"
    );
    assert!(!victim.join("app/README").exists());
    rt.remove(&ws).await.unwrap();
}

/// Host pids in the cgroups of every instance of `ws`.
fn host_pids(ws: &Workspace) -> Vec<u32> {
    let layout = berth_runtime_sandbox::cgroup::detect().unwrap();
    let mut pids: Vec<u32> = support::instances(&layout, ws.id.as_str())
        .iter()
        .flat_map(|cgroups| cgroups.dirs.first())
        .flat_map(|dir| {
            fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Waits (at most 10 s) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::yield_now();
    }
}

/// The mount points under `dir` in the mount namespace of any process on
/// the host, as `PID: PATH`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(mountinfo) = fs::read_to_string(entry.path().join("mountinfo")) else {
            continue;
        };
        found.extend(
            mountinfo
                .lines()
                .filter_map(|line| line.split(' ').nth(4))
                .filter(|point| point.starts_with(&*dir))
                .map(|point| format!("{pid}: {point}")),
        );
    }
    found
}

#[tokio::test]
async fn a_running_workspaces_tree_is_mounted_in_its_own_namespace_alone() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime_with_agent(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let ran = sh(
        &rt,
        &ws,
        "test -x /bin/sh && echo kept > /tmp/t && cat /tmp/t",
    )
    .await;
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(0), "kept\n"));
    // Every copy of the tree kept elsewhere costs kernel memory for as
    // long as the workspace lives.
    assert_eq!(
        mounts_under(home.path()),
        Vec::<String>::new(),
        "no host-side namespace keeps a copy of the workspace's mounts"
    );
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn deleting_the_home_of_a_running_workspace_ends_its_processes() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime_with_agent(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    // A process of the workspace's own, detached from the agent's command.
    let ran = sh(&rt, &ws, "setsid sleep 600 >/dev/null 2>&1 & echo $!").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let before = host_pids(&ws);
    assert!(before.len() >= 2, "the agent and the sleep run: {before:?}");

    fs::remove_dir_all(home.path()).unwrap();
    eventually(
        "every process of the workspace ends once its home is deleted",
        || host_pids(&ws).is_empty(),
    );
}

#[tokio::test]
async fn a_reset_switches_to_the_standby_and_ends_everything_of_the_old_instance() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = provisioned(&rt, home.path(), "key-standby").await;
    let ws_dir = home.path().join("sandbox").join(ws.id.as_str());
    // A workspace gets its standby once it has been reset.
    rt.settle().await;
    assert!(!ws_dir.join("upper.standby").exists());
    rt.reset(&ws, None).await.unwrap();
    for round in 0..2 {
        // What the runtime does after answering is done: the standby runs.
        rt.settle().await;
        assert!(ws_dir.join("upper.standby").is_dir(), "round {round}");
        let ran = sh(
            &rt,
            &ws,
            "cd /workspace/project && echo changed > README && rm run.sh && \
             (sleep 4242 >/dev/null 2>&1 &) && hostname",
        )
        .await;
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        let hostname = ran.stdout;
        // The old instance: every process in the sleep's PID namespace.
        let pid_ns = |pid: &u32| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let all = host_pids(&ws);
        let sleep = all
            .iter()
            .find(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x004242\x00")
            })
            .unwrap();
        let before: Vec<u32> = all
            .iter()
            .filter(|pid| pid_ns(pid) == pid_ns(sleep))
            .copied()
            .collect();
        assert!(before.len() >= 2, "the init and the sleep: {before:?}");

        rt.reset(&ws, None).await.unwrap();
        assert_eq!(rt.changes(&ws).await.unwrap(), vec![], "round {round}");
        let after = sh(&rt, &ws, "cat /workspace/project/README /workspace/project/run.sh; hostname; ps -e -o comm= | grep -c sleep").await;
        assert_eq!(
            after.stdout,
            format!("readme\necho run\n{hostname}0\n"),
            "round {round}: {}",
            after.stderr
        );
        // The old instance's processes all end; the new one's are others.
        let now = host_pids(&ws);
        eventually("the old instance's processes end", || {
            before
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        });
        assert!(
            now.iter().all(|pid| !before.contains(pid)),
            "{before:?} {now:?}"
        );
        assert_eq!(
            cgroup_file(&ws, "pids.max").as_deref(),
            Some("4096"),
            "the new instance has the workspace's limits"
        );
    }

    // A stop ends the standby too, and leaves no instance behind.
    rt.settle().await;
    assert!(ws_dir.join("upper.standby").is_dir());
    rt.stop(&ws).await.unwrap();
    assert_eq!(host_pids(&ws), Vec::<u32>::new());
    let layout = berth_runtime_sandbox::cgroup::detect().unwrap();
    assert!(support::instances(&layout, ws.id.as_str()).is_empty());
    assert!(!ws_dir.join("upper.standby").exists());

    // A stopped workspace resets without starting, and starts reset.
    rt.start(&ws).await.unwrap();
    let ran = sh(&rt, &ws, "echo again > /workspace/project/README").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    rt.stop(&ws).await.unwrap();
    rt.reset(&ws, None).await.unwrap();
    assert_eq!(
        host_pids(&ws),
        Vec::<u32>::new(),
        "a reset does not start a stopped workspace"
    );
    rt.start(&ws).await.unwrap();
    let ran = sh(&rt, &ws, "cat /workspace/project/README").await;
    assert_eq!(ran.stdout, "readme\n");
    rt.remove(&ws).await.unwrap();
}

/// The trees that removals and resets moved away, still waiting to be
/// removed.
fn discarded(home: &Path) -> Vec<PathBuf> {
    fs::read_dir(home.join("layers/.tmp"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path().join("discarded"))
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test]
async fn settle_waits_for_the_teardown_and_removals_a_reset_and_a_remove_leave() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = support::runtime(SandboxConfig {
        standby: false,
        ..config(home.path())
    })
    .await;
    let ws = started(&rt, Spec::default()).await;
    let ws_dir = home.path().join("sandbox").join(ws.id.as_str());
    let ran = sh(
        &rt,
        &ws,
        "seq 1 2000 | while read n; do echo $n > /workspace/f$n; done",
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let layout = berth_runtime_sandbox::cgroup::detect().unwrap();
    assert_eq!(support::instances(&layout, ws.id.as_str()).len(), 1);

    // The reset answers before the old instance is torn down and its
    // upper directory removed; settle waits for both.
    rt.reset(&ws, None).await.unwrap();
    rt.settle().await;
    assert_eq!(
        support::instances(&layout, ws.id.as_str()).len(),
        1,
        "only the new instance's cgroups are left"
    );
    let works: Vec<_> = fs::read_dir(&ws_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("work."))
        .collect();
    assert_eq!(
        works,
        vec!["work.2"],
        "the old instance's work directory is gone"
    );
    assert_eq!(discarded(home.path()), Vec::<PathBuf>::new());

    rt.remove(&ws).await.unwrap();
    rt.settle().await;
    assert!(!ws_dir.exists());
    assert_eq!(discarded(home.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn snapshots_survive_a_restart_and_forks_are_independent() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = provisioned(&rt, home.path(), "key-snap").await;
    sh(&rt, &ws, "echo snapshotted > /workspace/project/README").await;
    let snapshot = rt.snapshot(&ws).await.unwrap();
    sh(
        &rt,
        &ws,
        "echo later > /workspace/project/README; rm -r /workspace/project/src",
    )
    .await;

    let fork = workspace(Spec::default());
    rt.fork(&ws, &fork).await.unwrap();
    rt.start(&fork).await.unwrap();
    let seen = sh(&rt, &fork, "cat /workspace/project/README; ls /workspace/project/src 2>&1 | head -c 0; test -e /workspace/project/src || echo nosrc").await;
    assert_eq!(seen.stdout, "later\nnosrc\n");
    sh(&rt, &fork, "echo fork > /workspace/project/README").await;
    sh(&rt, &ws, "echo origin > /workspace/project/extra").await;
    let origin = sh(&rt, &ws, "cat /workspace/project/README").await;
    assert_eq!(
        origin.stdout, "later\n",
        "the fork's write stays in the fork"
    );
    let forked = sh(
        &rt,
        &fork,
        "cat /workspace/project/README; test -e /workspace/project/extra || echo noextra",
    )
    .await;
    assert_eq!(forked.stdout, "fork\nnoextra\n");

    // A new runtime over the same state directory, as after a restart.
    drop(rt);
    let rt = runtime(home.path()).await;
    assert!(rt.exists(&ws).await.unwrap());
    rt.reset(&ws, Some(&snapshot.id)).await.unwrap();
    let restored = sh(
        &rt,
        &ws,
        "cat /workspace/project/README /workspace/project/src/main.rs",
    )
    .await;
    assert_eq!(
        restored.stdout, "snapshotted\nfn main() {}\n",
        "{}",
        restored.stderr
    );
    rt.reset(&ws, None).await.unwrap();
    let provisioned = sh(&rt, &ws, "cat /workspace/project/README").await;
    assert_eq!(provisioned.stdout, "readme\n");

    // Layers stay while something holds them, and go after.
    let report = rt.gc(&[ws.clone(), fork.clone()]).await.unwrap();
    assert!(report.orphans.is_empty());
    assert!(
        report.removed.is_empty(),
        "nothing unreferenced yet: {report:?}"
    );
    // Letting go of them collects them without an explicit gc, except
    // what the cache entry still holds.
    rt.remove_snapshot(&snapshot.id).await.unwrap();
    // Gone, as an id that was never a layer's: not found, not a failure.
    for unknown in [snapshot.id.as_str(), "0"] {
        let err = rt.remove_snapshot(unknown).await.unwrap_err();
        assert!(
            matches!(err, berth_core::RuntimeError::SnapshotNotFound(_)),
            "{unknown}: {err}"
        );
    }
    rt.remove(&fork).await.unwrap();
    rt.remove(&ws).await.unwrap();
    let cached = rt.store().list().unwrap();
    assert!(!cached.is_empty(), "the cache entry holds its layers");
    assert!(
        cached.iter().all(|l| l.meta.id.to_string() != snapshot.id),
        "the snapshot's layer is gone with the snapshot"
    );
    rt.remove_cache("key-snap").await.unwrap();
    assert!(rt.store().list().unwrap().is_empty());
    let report = rt.gc(&[]).await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
}

/// Without an agent, commands still run (through the init), and every
/// file operation is refused saying why, rather than run as commands
/// inside a workspace that controls what they meet.
#[tokio::test]
async fn without_an_agent_commands_run_and_file_operations_are_refused() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let ran = sh(&rt, &ws, "echo made > file").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let file = WorkspacePath::parse("file").unwrap();
    let refused = "runtime `sandbox` does not support file operations without an agent";
    let read = rt.read_file(&ws, &file).await.err().map(|e| e.to_string());
    assert_eq!(read.as_deref(), Some(refused));
    let write = rt.write_file(&ws, &file, b"x".to_vec()).await;
    assert_eq!(write.err().map(|e| e.to_string()).as_deref(), Some(refused));
    let list = rt.list_files(&ws, &WorkspacePath::parse("").unwrap()).await;
    assert_eq!(list.err().map(|e| e.to_string()).as_deref(), Some(refused));
    let remove = rt.remove_file(&ws, &file).await;
    assert_eq!(
        remove.err().map(|e| e.to_string()).as_deref(),
        Some(refused)
    );
    let kept = sh(&rt, &ws, "cat file").await;
    assert_eq!(kept.stdout, "made\n", "nothing was written or removed");
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn a_cached_workspace_starts_from_the_cache_and_files_round_trip() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime_with_agent(home.path()).await;
    let first = provisioned(&rt, home.path(), "key-files").await;
    rt.remove(&first).await.unwrap();

    let ws = workspace(Spec::default());
    rt.create(&ws, Some("key-files")).await.unwrap();
    rt.start(&ws).await.unwrap();
    assert_eq!(
        rt.host_path(&ws),
        None,
        "no host view of workspace-made symlinks"
    );
    let late = rt
        .import(
            &ws,
            &repo(home.path()),
            &WorkspacePath::parse("late").unwrap(),
        )
        .await;
    assert!(
        late.is_err(),
        "a running overlay's upper directory is left alone"
    );
    let listed = rt
        .list_files(&ws, &WorkspacePath::parse("project").unwrap())
        .await
        .unwrap();
    let names: Vec<_> = listed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "project/README",
            "project/build.out",
            "project/owner",
            "project/run.sh",
            "project/src"
        ]
    );
    let path = WorkspacePath::parse("notes/today.md").unwrap();
    rt.write_file(&ws, &path, b"# notes\n".to_vec())
        .await
        .unwrap();
    assert_eq!(
        rt.read_file(&ws, &path)
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"# notes\n"
    );
    let upper = home
        .path()
        .join("sandbox")
        .join(ws.id.as_str())
        .join("upper/workspace/notes/today.md");
    assert_eq!(
        fs::metadata(&upper).unwrap().uid(),
        100_000,
        "stored as the workspace's root"
    );
    rt.remove_file(&ws, &path).await.unwrap();
    assert!(matches!(
        rt.read_file(&ws, &path).await,
        Err(berth_core::RuntimeError::NotFound(_))
    ));
    rt.remove(&ws).await.unwrap();
    assert!(!rt.exists(&ws).await.unwrap());
}

#[tokio::test]
async fn the_agent_is_pid_1_and_serves_commands_and_files() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut config = config(home.path());
    config.agent_program = Some(agent_binary());
    let rt = SandboxRuntime::new(config).unwrap();
    let ws = started(&rt, Spec::default()).await;

    let ran = sh(
        &rt,
        &ws,
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u; pwd",
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // The agent is handed the workspace's cgroup v2 as a descriptor.
    let stdout = match ran.stdout.split_once(" --cgroup-fd ") {
        Some((before, after)) => {
            let (fd, rest) = after.split_once(' ').unwrap();
            assert!(fd.parse::<u32>().unwrap() > 2, "{}", ran.stdout);
            format!("{before} {rest}")
        }
        None => ran.stdout.clone(),
    };
    assert_eq!(
        stdout,
        "/.berth/berth-agent --socket /.berth/run/agent.sock --root /workspace \n0\n/workspace\n"
    );
    let path = WorkspacePath::parse("dir/file.txt").unwrap();
    rt.write_file(&ws, &path, b"through the agent".to_vec())
        .await
        .unwrap();
    assert_eq!(
        rt.read_file(&ws, &path)
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"through the agent"
    );
    let upper = home
        .path()
        .join("sandbox")
        .join(ws.id.as_str())
        .join("upper/workspace/dir/file.txt");
    assert_eq!(fs::metadata(&upper).unwrap().uid(), 100_000);
    assert_eq!(
        rt.changes(&ws).await.unwrap(),
        vec![
            change("dir", ChangeKind::Added, FileKind::Dir),
            change("dir/file.txt", ChangeKind::Added, FileKind::File)
        ]
    );
    // Isolation holds for what the agent runs too.
    let seen = sh(
        &rt,
        &ws,
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; ls -d /proc/[0-9]* | wc -l",
    )
    .await;
    assert_eq!(
        seen.stdout.lines().take(2).collect::<Vec<_>>(),
        ["NoNewPrivs:\t1", "Seccomp:\t2"]
    );

    // Nothing of the provider's environment (where credentials live)
    // reaches the workspace: cargo's variables are in this test's. The
    // agent's own environment is read from the host: the workspace may
    // not read it (see the ptrace test).
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let agent_pid = rt.start(&ws).await.unwrap()["pid"].as_u64().unwrap();
    let mut agent_env: Vec<String> = fs::read(format!("/proc/{agent_pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    agent_env.sort();
    assert_eq!(agent_env, ["HOME", "LANG", "PATH", "USER"]);
    let env = sh(&rt, &ws, "env | cut -d= -f1 | sort").await;
    assert_eq!(
        env.stdout, "HOME\nLANG\nPATH\nPWD\nUSER\n",
        "{}",
        env.stderr
    );

    // A stuck agent does not stop teardown.
    let info = rt.start(&ws).await.unwrap();
    let pid = info["pid"].as_u64().unwrap() as i32;
    let agent = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(agent, rustix::process::Signal::STOP).unwrap();
    rt.remove(&ws).await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the agent is gone"
    );
    assert!(cgroup_file(&ws, "pids.current").is_none());
}

#[tokio::test]
async fn a_workspace_cannot_ptrace_its_agent() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut config = config(home.path());
    config.agent_program = Some(agent_binary());
    let rt = SandboxRuntime::new(config).unwrap();
    let ws = started(&rt, Spec::default()).await;
    let agent = rt.start(&ws).await.unwrap()["pid"].as_u64().unwrap() as u32;
    let limit = std::time::Duration::from_secs(20);

    let attacked = tokio::time::timeout(limit, sh(&rt, &ws, attacks::ON_THE_AGENT)).await;
    let state = attacks::process_state(agent).unwrap();
    if !matches!(state, 'S' | 'R') {
        // Let the cleanup end it rather than leave it stopped.
        let pid = rustix::process::Pid::from_raw(agent as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
    }
    let attacked = attacked.expect("the agent answers the attack itself");
    assert_eq!(
        attacked.stdout,
        attacks::ON_THE_AGENT_REFUSED,
        "{}",
        attacked.stderr
    );
    assert!(matches!(state, 'S' | 'R'), "the agent is in state {state}");
    let after = tokio::time::timeout(limit, sh(&rt, &ws, "echo still here"))
        .await
        .expect("the agent still answers");
    assert_eq!(after.stdout, "still here\n");
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn kill_term_int_or_stop_of_its_agent_from_inside_leaves_it_serving() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = with_agent(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let agent = rt.start(&ws).await.unwrap()["pid"].as_u64().unwrap() as u32;
    let limit = std::time::Duration::from_secs(20);

    for round in 0..3 {
        let sent = tokio::time::timeout(limit, sh(&rt, &ws, attacks::SIGNALS_TO_THE_AGENT))
            .await
            .expect("the agent answers the command that signals it");
        assert_eq!(sent.stdout, "sent\n", "round {round}: {}", sent.stderr);
        let state = attacks::process_state(agent);
        assert!(
            matches!(state, Some('S' | 'R')),
            "round {round}: the agent is in state {state:?}"
        );
        let ran = tokio::time::timeout(limit, sh(&rt, &ws, "echo still here > f; cat f"))
            .await
            .expect("the agent still answers");
        assert_eq!(ran.stdout, "still here\n", "round {round}");
        let path = WorkspacePath::parse("f").unwrap();
        let read = tokio::time::timeout(limit, rt.read_file(&ws, &path))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.read_all(u64::MAX).await.unwrap(), b"still here\n");
    }
    rt.remove(&ws).await.unwrap();
}

/// The nice value of host process `pid`.
fn nice_of(pid: u32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields restart after the command name's `)`; nice is field 19.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[tokio::test]
async fn busy_loops_in_the_workspace_run_below_the_agent_and_cannot_outrank_it() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = with_agent(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let agent = rt.start(&ws).await.unwrap()["pid"].as_u64().unwrap() as u32;
    let busy = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let ran = sh(
        &rt,
        &ws,
        &format!(
            "for i in $(seq {busy}); do (while :; do :; done) >/dev/null 2>&1 & done; \
             renice -n 0 -p $$ >/dev/null 2>&1 && echo reniced || echo refused"
        ),
    )
    .await;
    assert_eq!(ran.stdout, "refused\n", "{}", ran.stderr);
    let loops: Vec<u32> = host_pids(&ws)
        .into_iter()
        .filter(|pid| *pid != agent && attacks::process_state(*pid) == Some('R'))
        .collect();
    assert!(loops.len() >= busy, "{loops:?}");
    // Nicer by 10 than the agent, as far as nice values go.
    let nice = (nice_of(agent) + 10).min(19);
    assert!(nice_of(agent) < nice);
    assert!(loops.iter().all(|pid| nice_of(*pid) == nice), "{loops:?}");

    // The agent answers at once, however busy the workspace is.
    let limit = std::time::Duration::from_secs(5);
    for round in 0..20 {
        let ran = tokio::time::timeout(limit, sh(&rt, &ws, "echo $round"))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no answer within {limit:?}"));
        assert_eq!(ran.code, Some(0), "round {round}");
    }
    rt.remove(&ws).await.unwrap();
}

/// The workspace's root raises the nice value of its agent and of each of
/// its threads to 19 (the kernel lets it: they are its own user's), then
/// keeps the CPUs busy: the next call from the host puts the agent back at
/// the nice value it started at, which the agent reports, and is answered.
#[tokio::test]
async fn renice_of_the_agent_and_its_threads_from_inside_does_not_hold() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = with_agent(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let agent = rt.start(&ws).await.unwrap()["pid"].as_u64().unwrap() as u32;
    let base = nice_of(agent);
    assert!(base < 19, "the agent starts at nice {base}");
    let socket = rt.agent_socket(&ws).unwrap();
    let client =
        berth_agent_client::AgentClient::connect(&socket, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(client.info(false).await.unwrap().nice, base);

    let busy = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let attack = format!(
        "lowered=0; for t in /proc/1/task/*; do \
           renice -n 19 -p ${{t##*/}} >/dev/null 2>&1 && lowered=$((lowered + 1)); done; \
         for i in $(seq {busy}); do (while :; do :; done) >/dev/null 2>&1 & done; \
         echo $lowered"
    );
    let ran = sh(&rt, &ws, &attack).await;
    let lowered: usize = ran.stdout.trim().parse().unwrap();
    assert!(
        lowered >= 1,
        "the kernel refused the renice: {}",
        ran.stderr
    );

    let ran = sh(&rt, &ws, "echo answered").await;
    assert_eq!(ran.stdout, "answered\n");
    // Every thread of the agent is back at its nice value, by its own
    // account (asked on a connection that holds nothing) and the host's.
    let info = client.info(false).await.unwrap();
    assert_eq!(info.nice, base, "the agent stays at nice {}", info.nice);
    let tasks = fs::read_dir(format!("/proc/{agent}/task")).unwrap();
    for task in tasks {
        let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let nice = nice_of_thread(agent, tid);
        assert!(nice <= base, "thread {tid} of the agent is at nice {nice}");
    }
    // The commands' room stops at their own nice value, not the agent's.
    let ran = sh(
        &rt,
        &ws,
        "renice -n 0 -p $$ >/dev/null 2>&1 && echo raised || echo refused",
    )
    .await;
    assert_eq!(ran.stdout, "refused\n", "{}", ran.stderr);
    rt.remove(&ws).await.unwrap();
}

/// The nice value of thread `tid` of host process `pid`.
fn nice_of_thread(pid: u32, tid: u32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_stopped_agent_makes_exec_and_read_fail_in_bounded_time() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut config = config(home.path());
    config.agent_program = Some(agent_binary());
    let rt = SandboxRuntime::new(config).unwrap();
    let ws = started(&rt, Spec::default()).await;
    assert_eq!(sh(&rt, &ws, "echo up").await.stdout, "up\n");
    let agent = rt.start(&ws).await.unwrap()["pid"].as_u64().unwrap() as i32;
    let agent = rustix::process::Pid::from_raw(agent).unwrap();
    // A command without a timeout, silent, running when the agent wedges.
    let mut silent = rt
        .exec(&ws, ExecRequest::shell("sleep 1000"), Default::default())
        .await
        .unwrap();
    // As a wedged agent would be, whatever wedged it.
    rustix::process::kill_process(agent, rustix::process::Signal::STOP).unwrap();
    let stopped = std::time::Instant::now();
    let deadlines = berth_agent_client::Deadlines::from_env();
    let bound = |limit: std::time::Duration| limit + std::time::Duration::from_secs(3);
    let never = std::time::Duration::from_secs(60);

    let mut request = ExecRequest::shell("echo never");
    request.timeout_ms = Some(2000);
    let began = std::time::Instant::now();
    let exec = tokio::time::timeout(never, rt.exec(&ws, request, Default::default())).await;
    let took = began.elapsed();
    let read = async {
        let began = std::time::Instant::now();
        let path = WorkspacePath::parse("file.txt").unwrap();
        let read = tokio::time::timeout(never, rt.read_file(&ws, &path)).await;
        (read, began.elapsed())
    };
    let (read, read_took) = read.await;
    let silent = tokio::time::timeout(never, berth_agent_client::collect(&mut silent)).await;
    let silent_took = stopped.elapsed();
    rustix::process::kill_process(agent, rustix::process::Signal::CONT).unwrap();

    let err = exec.expect("exec ends").unwrap_err();
    assert!(
        matches!(
            err,
            berth_core::RuntimeError::AgentTimeout {
                operation: "exec",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not answer `exec`"), "{err}");
    let exec_limit = deadlines
        .exec(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    assert!(took <= bound(exec_limit), "exec failed after {took:?}");
    let Err(err) = read.expect("the read ends") else {
        panic!("the read of a stopped agent succeeded");
    };
    assert!(
        matches!(
            err,
            berth_core::RuntimeError::AgentTimeout {
                operation: "read_file",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        read_took <= bound(deadlines.answer),
        "the read failed after {read_took:?}"
    );
    let (_, stderr, exit) = silent.expect("the command without a timeout ends");
    assert!(exit.cancelled && exit.code.is_none(), "{exit:?}");
    let stderr = String::from_utf8(stderr).unwrap();
    assert!(stderr.contains("the agent stopped answering"), "{stderr}");
    assert!(
        silent_took <= bound(deadlines.answer * 2),
        "the command without a timeout ended {silent_took:?} after the agent stopped"
    );
    // Once it runs again, it answers again.
    assert_eq!(sh(&rt, &ws, "echo back").await.stdout, "back\n");
    rt.remove(&ws).await.unwrap();
}

/// A workspace whose commands run through the agent, which gives each a
/// cgroup of its own.
async fn agent_workspace(home: &Path) -> (SandboxRuntime, Workspace) {
    let rt = with_agent(home).await;
    let ws = started(&rt, Spec::default()).await;
    let notes = rt.isolation(&ws).notes.join("\n");
    assert!(
        notes.contains("a cgroup of its own"),
        "this host gives commands no cgroup: {notes}"
    );
    (rt, ws)
}

/// How long processes may take to go once their end was decided.
const GONE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test]
async fn timeout_ends_a_setsid_double_forked_child() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let (rt, ws) = agent_workspace(home.path()).await;
    let marker = attacks::marker();

    let mut request = ExecRequest::shell(attacks::detaching(&marker));
    request.timeout_ms = Some(1000);
    let ran = run(&rt, &ws, request).await;
    assert_eq!(ran.stdout, "started\n", "{}", ran.stderr);
    let left = attacks::survivors(&format!("sleep {marker}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the timeout: {left:?}");
    // The workspace goes on serving commands.
    assert_eq!(sh(&rt, &ws, "echo next").await.stdout, "next\n");
    rt.remove(&ws).await.unwrap();
}

// Multi-threaded: the client's tasks must go on sending while the test
// waits for processes to appear.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_session_or_terminal_ends_what_it_started() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let (rt, ws) = agent_workspace(home.path()).await;
    let socket = rt.agent_socket(&ws).unwrap();
    let agent =
        berth_agent_client::AgentClient::connect(&socket, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let marker = attacks::marker();
    let daemon =
        format!("(setsid sh -c 'trap \"\" TERM HUP; sleep {marker}' >/dev/null 2>&1 &); echo left");

    let session = agent.session(Default::default()).await.unwrap();
    let (out, _, _) = session.run(&daemon).await.unwrap();
    assert_eq!(out, b"left\n");
    attacks::wait_for(&format!("sleep {marker}"), 1);
    session.close().await.unwrap();
    let left = attacks::survivors(&format!("sleep {marker}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the session: {left:?}");

    let terminal = agent
        .terminal(berth_core::proto::TerminalParams::default())
        .await
        .unwrap();
    terminal.write(format!("{daemon}\n").as_bytes()).unwrap();
    attacks::wait_for(&format!("sleep {marker}"), 1);
    terminal.write(b"exit\n").unwrap();
    let (_, _, exit) = terminal.output().await;
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let left = attacks::survivors(&format!("sleep {marker}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the terminal: {left:?}");
    rt.remove(&ws).await.unwrap();
}

// Multi-threaded: the client's tasks must go on sending while the test
// waits for processes to go.
#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_session_command_ends_its_setsid_double_forked_child_at_once() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let (rt, ws) = agent_workspace(home.path()).await;
    let socket = rt.agent_socket(&ws).unwrap();
    let agent =
        berth_agent_client::AgentClient::connect(&socket, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let session = agent.session(Default::default()).await.unwrap();
    let (out, _, _) = session.run("cd /tmp && export KEPT=yes").await.unwrap();
    assert_eq!(out, b"");
    let job = attacks::marker();
    let (out, _, _) = session
        .run(&format!("(sleep {job} >/dev/null 2>&1 &); echo job"))
        .await
        .unwrap();
    assert_eq!(out, b"job\n");

    let marker = attacks::marker();
    let timed_out = session
        .start(&attacks::detaching(&marker), Some(1000), None)
        .await
        .unwrap();
    let (out, _, status) = timed_out.output().await;
    assert_eq!(out, b"started\n");
    assert!(status.timed_out, "{status:?}");
    // Ended with the command, while the session lives on.
    let left = attacks::survivors(&format!("sleep {marker}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the timeout: {left:?}");
    let (out, _, _) = session.run("echo \"$PWD $KEPT\"").await.unwrap();
    assert_eq!(out, b"/tmp yes\n", "the session keeps its state");
    // A background job of a command that finished is the session's.
    assert_eq!(attacks::processes_with(&format!("sleep {job}")).len(), 1);
    session.close().await.unwrap();
    let left = attacks::survivors(&format!("sleep {job}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the session: {left:?}");
    rt.remove(&ws).await.unwrap();
}

/// A container engine stand-in: exports a small root filesystem made of
/// host binaries and their libraries, and counts its exports.
struct Exporter {
    rootfs: tempfile::TempDir,
    exports: std::sync::atomic::AtomicUsize,
}

impl Exporter {
    fn new() -> Exporter {
        let rootfs = tempfile::tempdir().unwrap();
        let root = rootfs.path();
        let init = env!("CARGO_BIN_EXE_berth-sandbox-init");
        for program in ["/usr/bin/sh", "/usr/bin/cat", "/usr/bin/ls", init] {
            let ldd = std::process::Command::new("ldd")
                .arg(program)
                .output()
                .unwrap();
            let libs = String::from_utf8_lossy(&ldd.stdout).into_owned();
            let mut needed: Vec<String> = libs
                .split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(String::from)
                .collect();
            if program != init {
                needed.push(program.to_string());
            }
            for path in needed {
                let target = root.join(path.trim_start_matches('/'));
                fs::create_dir_all(target.parent().unwrap()).unwrap();
                fs::copy(&path, &target).unwrap();
            }
        }
        // Merged /usr as on the host, so /lib64/ld-linux... resolves.
        for link in ["bin", "lib", "lib64"] {
            if root.join("usr").join(link).exists()
                && fs::symlink_metadata(root.join(link)).is_err()
            {
                std::os::unix::fs::symlink(format!("usr/{link}"), root.join(link)).unwrap();
            }
        }
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/os-release"), "ID=berth-test-image\n").unwrap();
        Exporter {
            rootfs,
            exports: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl berth_runtime_sandbox::ImageExporter for Exporter {
    fn image_id(&self, image: &str) -> Result<String, String> {
        match image {
            "test/image" => Ok("sha256:test-image".into()),
            other => Err(format!("no such image: {other}")),
        }
    }

    fn export(&self, _image: &str, into: &Path) -> Result<(), String> {
        self.exports
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(self.rootfs.path())
            .arg("-cf")
            .arg(into)
            .arg(".")
            .status()
            .map_err(|e| e.to_string())?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| "tar failed".to_string())
    }
}

#[tokio::test]
async fn a_container_image_is_exported_once_into_a_base_layer() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let exporter = std::sync::Arc::new(Exporter::new());
    let rt = SandboxRuntime::with_exporter(config(home.path()), Some(exporter.clone())).unwrap();
    let spec = Spec {
        image: Some("docker:test/image".into()),
        ..Spec::default()
    };
    let first = started(&rt, spec.clone()).await;
    let second = started(&rt, spec).await;
    assert_eq!(
        exporter.exports.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let ran = sh(&rt, &second, "cat /etc/os-release; ls /; ls /usr/bin").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.starts_with("ID=berth-test-image\n"),
        "{}",
        ran.stdout
    );
    assert_eq!(
        ran.stdout
            .lines()
            .filter(|l| *l == "cat" || *l == "ls" || *l == "sh")
            .count(),
        3,
        "only the image's programs, not the host's: {}",
        ran.stdout
    );
    let missing = workspace(Spec {
        image: Some("docker:missing".into()),
        ..Spec::default()
    });
    let error = rt.create(&missing, None).await.unwrap_err().to_string();
    assert!(error.contains("cannot find image `missing`"), "{error}");
    rt.remove(&first).await.unwrap();
    rt.remove(&second).await.unwrap();
}

/// An engine's exporter that counts its exports.
struct Counted {
    engine: EngineExporter,
    exports: std::sync::atomic::AtomicUsize,
}

impl berth_runtime_sandbox::ImageExporter for Counted {
    fn image_id(&self, image: &str) -> Result<String, String> {
        self.engine.image_id(image)
    }

    fn export(&self, image: &str, into: &Path) -> Result<(), String> {
        self.exports
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.engine.export(image, into)
    }
}

/// `docker:NAME` through a real engine (dockerd, at `DOCKER_HOST` or its
/// default socket): an image the test makes with `docker import` is
/// exported once into a layer and the workspace runs in it; a missing
/// image and an engine nobody answers for are named.
#[tokio::test]
async fn a_workspace_starts_from_an_image_docker_import_made() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let image = Exporter::new();
    let tarball = image.rootfs.path().with_extension("tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(image.rootfs.path())
        .args(["--numeric-owner", "-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let tag = format!(
        "berth-test/sandbox-base:{}",
        home.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase()
            .replace('.', "")
    );
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker (scripts/prepare installs it): {e}"));
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    docker(&["import", tarball.to_str().unwrap(), &tag]);
    let _ = fs::remove_file(&tarball);

    let engine = std::sync::Arc::new(Counted {
        engine: EngineExporter::from_env(),
        exports: Default::default(),
    });
    let rt = SandboxRuntime::with_exporter(config(home.path()), Some(engine.clone())).unwrap();
    let spec = Spec {
        image: Some(format!("docker:{tag}")),
        ..Spec::default()
    };
    let first = started(&rt, spec.clone()).await;
    let ran = sh(&rt, &first, "cat /etc/os-release; ls /usr/bin").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.starts_with("ID=berth-test-image\n"),
        "{}",
        ran.stdout
    );
    // The image is exported once: the next workspace finds its layer.
    let second = started(&rt, spec).await;
    assert_eq!(engine.exports.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        sh(&rt, &second, "cat /etc/os-release").await.stdout,
        "ID=berth-test-image\n"
    );

    let missing = workspace(Spec {
        image: Some("docker:berth-test/never-imported:0".into()),
        ..Spec::default()
    });
    let error = rt.create(&missing, None).await.unwrap_err().to_string();
    assert!(
        error.contains("no image `berth-test/never-imported:0`"),
        "{error}"
    );
    let nowhere = EngineExporter::new("unix:///nonexistent/docker.sock");
    let other_home = tempfile::tempdir().unwrap();
    let unreachable = SandboxRuntime::with_exporter(
        config(other_home.path()),
        Some(std::sync::Arc::new(nowhere)),
    )
    .unwrap();
    let error = unreachable
        .create(
            &workspace(Spec {
                image: Some(format!("docker:{tag}")),
                ..Spec::default()
            }),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot reach a container engine at unix:///nonexistent/docker.sock")
            && error.contains("DOCKER_HOST"),
        "{error}"
    );
    rt.remove(&first).await.unwrap();
    rt.remove(&second).await.unwrap();
    docker(&["rmi", &tag]);
}

#[tokio::test]
async fn weaker_isolation_is_refused_unless_accepted_and_then_reported() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let mut weaker = config(home.path());
    weaker.id_map = None;
    let rt = SandboxRuntime::new(weaker.clone()).unwrap();
    let error = rt.available().await.unwrap_err();
    assert!(error.contains("no user namespace"), "{error}");
    let ws = workspace(Spec::default());
    rt.create(&ws, None).await.unwrap();
    let refused = rt.start(&ws).await.unwrap_err().to_string();
    assert!(refused.contains("BERTH_SANDBOX_ACCEPT_WEAKER"), "{refused}");
    rt.remove(&ws).await.unwrap();

    weaker.accept_weaker = true;
    let rt = SandboxRuntime::new(weaker).unwrap();
    let ws = started(&rt, Spec::default()).await;
    let isolation = rt.isolation(&ws);
    assert!(
        !isolation.namespaces.iter().any(|n| n == "user"),
        "{isolation:?}"
    );
    assert!(
        isolation.notes.iter().any(|n| n.contains("host root")),
        "{isolation:?}"
    );
    let ran = sh(
        &rt,
        &ws,
        "cat /proc/self/uid_map; mount -t tmpfs none /tmp 2>/dev/null || echo refused",
    )
    .await;
    assert_eq!(ran.stdout, "         0          0 4294967295\nrefused\n");
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn a_frozen_workspace_is_still_torn_down() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let layout = berth_runtime_sandbox::cgroup::detect().unwrap();
    let cgroups = support::instances(&layout, ws.id.as_str()).pop().unwrap();
    // As a snapshot cut short by a crash would leave it.
    if !layout.freeze(&cgroups, true).unwrap() {
        panic!("this host has no cgroup freezer");
    }
    rt.remove(&ws).await.unwrap();
    assert!(support::instances(&layout, ws.id.as_str()).is_empty());
}

/// The plan a stopped workspace's init was started with, copied to
/// `home/plan.json`, with the cgroups and overlay work directory the stop
/// removed made again, so the init can be started by hand from it.
async fn replayable_plan(
    rt: &SandboxRuntime,
    ws: &Workspace,
    home: &Path,
) -> (PathBuf, berth_runtime_sandbox::InitConfig) {
    let ws_dir = home.join("sandbox").join(ws.id.as_str());
    let started_plan = ws_dir.join("init.1.json");
    assert!(
        started_plan.is_file(),
        "the start left its plan at {}",
        started_plan.display()
    );
    let plan = home.join("plan.json");
    fs::copy(&started_plan, &plan).unwrap();
    rt.stop(ws).await.unwrap();
    assert!(
        !started_plan.exists(),
        "the stop removed the plan with the instance"
    );
    let config: berth_runtime_sandbox::InitConfig =
        serde_json::from_slice(&fs::read(&plan).unwrap()).unwrap();
    for dir in &config.cgroups {
        fs::create_dir_all(dir).unwrap();
    }
    for mount in &config.mounts {
        if let berth_runtime_sandbox::Mount::Overlay { work, .. } = mount {
            fs::create_dir_all(work).unwrap();
        }
    }
    (plan, config)
}

#[tokio::test]
async fn an_init_whose_runtime_went_away_leaves_nothing_running() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    // Its cgroups and overlay work directory went with the stop; the init
    // needs them again.
    let (plan, config) = replayable_plan(&rt, &ws, home.path()).await;

    // The runtime is gone before the init can report: its stdout leads
    // nowhere.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_berth-sandbox-init"))
        .arg("start")
        .arg(&plan)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the runtime went away"),
        "the init ends because nobody reads its report: {stderr}"
    );
    for dir in &config.cgroups {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert_eq!(
            procs, "",
            "the workspace's processes are gone with the init"
        );
        fs::remove_dir(dir).unwrap();
    }
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn an_init_failing_while_its_parent_releases_it_reports_its_error_not_a_broken_pipe() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    let ws = started(&rt, Spec::default()).await;
    let (plan, mut config) = replayable_plan(&rt, &ws, home.path()).await;
    // The kernel refuses hostnames over 64 bytes: the workspace's init
    // fails in its first step, while its parent still moves it into its
    // cgroups and then writes to the pipe the init has closed by ending.
    config.hostname = "h".repeat(100);
    fs::write(&plan, serde_json::to_vec(&config).unwrap()).unwrap();
    for attempt in 0..20 {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_berth-sandbox-init"))
            .arg("start")
            .arg(&plan)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            report.trim_end(),
            "failed: the workspace's init failed: cannot set the hostname: Invalid argument (os error 22)",
            "attempt {attempt}: the init's own error is reported"
        );
    }
    for dir in &config.cgroups {
        fs::remove_dir(dir).unwrap();
    }
    rt.remove(&ws).await.unwrap();
}

/// A runtime as berth runs it: the agent is each workspace's PID 1.
async fn with_agent(home: &Path) -> SandboxRuntime {
    let mut config = config(home);
    config.agent_program = Some(agent_binary());
    support::runtime(config).await
}

#[tokio::test]
async fn a_home_of_mode_0700_inside_a_0700_directory_runs_workspaces() {
    let _cleanup = Cleanup;
    // As `mktemp -d` makes them, and as root's own home is.
    let outer = tempfile::tempdir().unwrap();
    let home = outer.path().join("home");
    fs::create_dir(&home).unwrap();
    for dir in [outer.path(), &home] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    let rt = with_agent(&home).await;
    let ws = started(&rt, Spec::default()).await;
    let ran = sh(
        &rt,
        &ws,
        "echo kept > /workspace/f; cat /workspace/f; id -u",
    )
    .await;
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (
            Some(0),
            "kept
0
"
        ),
        "{}",
        ran.stderr
    );
    // A reset starts an instance, and the next one switches to a standby.
    for _ in 0..2 {
        rt.reset(&ws, None).await.unwrap();
        let ran = sh(&rt, &ws, "ls /workspace; echo listed").await;
        assert_eq!(ran.stdout, "listed\n", "{}", ran.stderr);
    }
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn a_start_killed_by_its_memory_limit_names_the_limit() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = with_agent(home.path()).await;
    let ws = workspace(limited(Some(64 << 10), None));
    rt.create(&ws, None).await.unwrap();
    let error = rt.start(&ws).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "workspace {} did not start: it ran out of memory under its limit of 64KiB (limits.memory)",
            ws.id
        )),
        "{error}"
    );
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn a_start_over_a_missing_layer_names_the_layer() {
    let _cleanup = Cleanup;
    let home = tempfile::tempdir().unwrap();
    let rt = with_agent(home.path()).await;
    let ws = workspace(Spec::default());
    let info = rt.create(&ws, None).await.unwrap();
    let stack: Vec<berth_layers::LayerId> = serde_json::from_value(info["stack"].clone()).unwrap();
    let tree = rt.store().trees_top_first(&stack).remove(0);
    fs::rename(&tree, tree.with_extension("gone")).unwrap();
    let error = rt.start(&ws).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "overlay refuses lower layer `{}`: No such file or directory",
            tree.display()
        )),
        "{error}"
    );
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn two_homes_name_their_cgroups_apart_and_gc_in_one_leaves_the_other_running() {
    let _cleanup = Cleanup;
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (we, they) = (runtime(ours.path()).await, runtime(theirs.path()).await);
    let mine = started(&we, Spec::default()).await;
    let their = started(&they, Spec::default()).await;
    let layout = berth_runtime_sandbox::cgroup::detect().unwrap();
    for (home, ws) in [(ours.path(), &mine), (theirs.path(), &their)] {
        let id = berth_core::HomeId::load_or_create(home).unwrap();
        let cgroups = support::instances(&layout, ws.id.as_str());
        assert_eq!(cgroups.len(), 1);
        let name = cgroups[0].dirs[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(&format!("{id}-{}.", ws.id)), "{name}");
    }

    // Collecting with nothing live ends ours, and nothing of theirs.
    let report = we.gc(&[]).await.unwrap();
    assert_eq!(report.orphans, [mine.id.to_string()]);
    assert!(support::instances(&layout, mine.id.as_str()).is_empty());
    let ran = sh(&they, &their, "echo alive").await;
    assert_eq!(ran.stdout, "alive\n", "{}", ran.stderr);
    assert_eq!(support::instances(&layout, their.id.as_str()).len(), 1);
    they.remove(&their).await.unwrap();
}
