//! The engine a test binary talks to (its crate root's `ENGINE`: dockerd
//! or a Podman service), and test images made locally by importing a root
//! filesystem (no registry is reachable), each built once per machine and
//! engine: the first test process to need one builds it under a file lock
//! while the others wait, and later runs find it by its tag. Also:
//! workspace records and cleanup for tests that drive the runtime directly.

use berth_core::{ResourceDefaults, Spec, Workspace, WorkspaceId, WorkspaceState};
use berth_runtime_docker::DockerRuntime;
use berth_runtime_docker::plan::{LABEL_HOME, Names};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The images the tests run workspaces in.
#[derive(Debug, Clone, Copy)]
pub enum TestImage {
    /// Only Debian's static busybox and its applet links: a shell, no
    /// interpreters.
    Busybox,
    /// No shell, no programs at all: just the agent's mount point.
    NoShell,
    /// A Debian minbase root with python3, perl and git (which fetching
    /// into a workspace needs).
    Debian,
}

impl TestImage {
    pub fn tag(self) -> &'static str {
        match self {
            TestImage::Busybox => "berth-test/busybox:1",
            TestImage::NoShell => "berth-test/noshell:1",
            TestImage::Debian => "berth-test/debian:2",
        }
    }
}

/// A container engine serving the Docker Engine API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(dead_code, reason = "each test binary runs on one engine")]
pub enum Engine {
    /// dockerd at `DOCKER_HOST`, or its default socket.
    Docker,
    /// A Podman service at `BERTH_PODMAN_HOST`, or the socket
    /// `scripts/prepare` starts it on.
    Podman,
}

impl Engine {
    /// Where the engine's API is.
    pub fn host(self) -> String {
        let (variable, default) = match self {
            Engine::Docker => ("DOCKER_HOST", "unix:///var/run/docker.sock"),
            Engine::Podman => ("BERTH_PODMAN_HOST", "unix:///run/berth-podman.sock"),
        };
        std::env::var(variable)
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    fn name(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// The engine of this test binary.
pub fn engine() -> Engine {
    crate::ENGINE
}

/// The engine's own command-line client, talking to [`Engine::host`].
pub fn command(args: &[&str]) -> Command {
    let mut command = match engine() {
        Engine::Docker => {
            let mut command = Command::new("docker");
            command.env("DOCKER_HOST", Engine::Docker.host());
            command
        }
        Engine::Podman => {
            let mut command = Command::new("podman");
            command.args(["--remote", "--url", &Engine::Podman.host()]);
            command
        }
    };
    command.args(args);
    command
}

/// Runs the engine's client; panics with its stderr when it fails.
pub fn cli(args: &[&str]) -> String {
    let name = engine().name();
    let out = command(args).output().unwrap_or_else(|e| {
        panic!("cannot run {name} (scripts/prepare installs and starts it): {e}")
    });
    assert!(
        out.status.success(),
        "{name} {} failed against {}: {}",
        args.join(" "),
        engine().host(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the engine has the image `name` (a tag or an id).
pub fn image_exists(name: &str) -> bool {
    command(&["image", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The image's tag, built first if this machine lacks it.
pub fn image(which: TestImage) -> &'static str {
    let tag = which.tag();
    if image_exists(tag) {
        return tag;
    }
    let lock_path =
        std::env::temp_dir().join(format!("berth-test-images-{}.lock", engine().name()));
    let lock = fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    // Another process may have built it while this one waited.
    if !image_exists(tag) {
        let root = tempfile::Builder::new()
            .prefix("berth-image-")
            .tempdir_in("/var/tmp")
            .unwrap();
        match which {
            TestImage::Busybox => busybox_root(root.path()),
            TestImage::NoShell => berth_dirs(root.path()),
            TestImage::Debian => debian_root(root.path()),
        }
        import(root.path(), tag);
    }
    drop(lock);
    tag
}

/// The directories every image has: where the agent and its socket are
/// mounted, and a place for temporary files.
fn berth_dirs(root: &Path) {
    fs::create_dir_all(root.join(".berth/run")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
}

fn busybox_root(root: &Path) {
    berth_dirs(root);
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(root.join("root")).unwrap();
    fs::copy(busybox_path(), bin.join("busybox")).unwrap();
    let list = Command::new(busybox_path()).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
}

/// The host's static busybox (Debian's busybox-static).
pub fn busybox_path() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("busybox is missing: apt-get install busybox-static"))
}

fn debian_root(root: &Path) {
    let mirror = std::env::var("BERTH_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_string());
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=python3-minimal,perl-base,git",
            "bookworm",
        ])
        .arg(root)
        .arg(&mirror)
        .output()
        .unwrap_or_else(|e| panic!("cannot run debootstrap (apt-get install debootstrap): {e}"));
    assert!(
        out.status.success(),
        "debootstrap from {mirror} failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // What the package cache holds is not needed to run.
    let _ = fs::remove_dir_all(root.join("var/cache/apt/archives"));
    berth_dirs(root);
}

fn import(root: &Path, tag: &str) {
    let tarball = root.with_extension("tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of {} failed", root.display());
    cli(&["import", &tarball.display().to_string(), tag]);
    let _ = fs::remove_file(&tarball);
}

/// A workspace record, as the provider would hand it to the runtime.
pub fn workspace(spec: Spec) -> Workspace {
    Workspace {
        id: WorkspaceId::generate(),
        name: "test".into(),
        runtime: "docker".into(),
        spec,
        state: WorkspaceState::Creating,
        labels: Default::default(),
        runtime_info: serde_json::Value::Null,
        cache_key: None,
        error: None,
        owner_pid: None,
        created_at: 0,
        updated_at: 0,
        last_active_at: 0,
        node: None,
    }
}

pub fn spec_for(image: &str) -> Spec {
    Spec {
        runtime: Some("docker".into()),
        image: Some(image.into()),
        ..Spec::default()
    }
}

/// A runtime with its own home, and the containers and images made
/// through it removed when dropped.
pub struct World {
    pub home: tempfile::TempDir,
    pub runtime: Arc<DockerRuntime>,
    ids: std::sync::Mutex<Vec<WorkspaceId>>,
    images: std::sync::Mutex<Vec<String>>,
}

impl World {
    pub fn new() -> World {
        Self::with_defaults(ResourceDefaults::for_this_host())
    }

    /// A world whose runtime gives containers `defaults`.
    pub fn with_defaults(defaults: ResourceDefaults) -> World {
        let home = berth_testkit::temp_dir();
        let runtime = Arc::new(
            DockerRuntime::with_host(home.path(), engine().host()).with_defaults(defaults),
        );
        World {
            home,
            runtime,
            ids: std::sync::Mutex::new(Vec::new()),
            images: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// What the world's runtime calls its containers and images.
    pub fn names(&self) -> &Names {
        self.runtime.names().unwrap()
    }

    /// Marks a workspace's container and images for removal at the end.
    pub fn track(&self, ws: &Workspace) {
        self.ids.lock().unwrap().push(ws.id.clone());
    }

    /// Marks an image (a cache entry, a snapshot) for removal at the end.
    pub fn track_image(&self, image: String) {
        self.images.lock().unwrap().push(image);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let Ok(names) = self.runtime.names() else {
            return;
        };
        for id in self.ids.lock().unwrap().iter() {
            let _ = command(&["rm", "-f", "-v", &names.container(id)]).output();
            for image in [names.base_image(id), names.provisioned_image(id)] {
                let _ = command(&["rmi", &image]).output();
            }
        }
        for image in self.images.lock().unwrap().iter() {
            let _ = command(&["rmi", image]).output();
        }
        // Images committed from this world's containers and named by
        // nothing any more (a fork's base, a replaced provisioned state).
        // One label: Podman matches nothing when given two.
        let _ = command(&[
            "image",
            "prune",
            "-f",
            "--filter",
            &format!("label={}={}", LABEL_HOME, names.home()),
        ])
        .output();
    }
}
