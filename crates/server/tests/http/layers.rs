//! The layer routes: snapshots, reset, changes, export, forks and garbage
//! collection on real `docker` workspaces (a busybox image made locally
//! with `docker import`); the patch of `diff` on a `local` workspace whose
//! repository is real; and the clear refusal of runtimes without layers.

use super::*;
use berth_runtime_docker::DockerRuntime;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const IMAGE: &str = "berth-test/server-busybox:1";

/// Runs the docker CLI; its stdout, or a panic with its stderr.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker (scripts/prepare installs it): {e}"));
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox image (no registry is reachable), made once per machine: the
/// first test process to need it builds it under a lock.
pub(super) fn image() -> &'static str {
    let exists = || {
        Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if exists() {
        return IMAGE;
    }
    let lock = std::fs::File::create(std::env::temp_dir().join("berth-server-image.lock")).unwrap();
    lock.lock().unwrap();
    if !exists() {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| {
                panic!("busybox is needed (scripts/prepare installs busybox-static)")
            });
        let root = tempfile::tempdir().unwrap();
        for dir in ["bin", "tmp", ".berth/run", "workspace"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        std::fs::copy(busybox, root.path().join("bin/busybox")).unwrap();
        for applet in ["sh", "ls", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet)).unwrap();
        }
        let tarball = root.path().with_extension("tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["--numeric-owner", "-cf"])
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        docker(&["import", tarball.to_str().unwrap(), IMAGE]);
        let _ = std::fs::remove_file(&tarball);
    }
    IMAGE
}

/// Removes every container and image made for a berth home (by its id),
/// even when the test failed half-way.
pub(super) struct DockerCleanup(String);

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.berth.home={}", self.0);
        for (list, remove) in [
            (
                vec!["ps", "-aq", "--filter", &label],
                vec!["rm", "-f", "-v"],
            ),
            (vec!["images", "-q", "--filter", &label], vec!["rmi", "-f"]),
        ] {
            let Ok(out) = Command::new("docker").args(&list).output() else {
                continue;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&remove).args(&ids).output();
            }
        }
    }
}

impl Api {
    pub(super) async fn with_docker() -> (Api, DockerCleanup) {
        let home = tempfile::tempdir().unwrap();
        let cleanup = DockerCleanup(
            berth_core::HomeId::load_or_create(home.path())
                .unwrap()
                .to_string(),
        );
        let docker = Arc::new(DockerRuntime::new(home.path()));
        let api = Api::start_with_runtimes(home, vec![docker], |config| config).await;
        (api, cleanup)
    }

    pub(super) async fn put_file(&self, id: &str, path: &str, content: &str) {
        let response = self
            .request(
                Method::PUT,
                &format!("/v1/workspaces/{id}/files/content?path={path}"),
            )
            .body(content.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "writing {path}");
    }

    async fn file(&self, id: &str, path: &str) -> Option<String> {
        let response = self
            .get(&format!("/v1/workspaces/{id}/files/content?path={path}"))
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::OK => Some(response.text().await.unwrap()),
            StatusCode::NOT_FOUND => None,
            other => panic!("reading {path}: {other}"),
        }
    }

    /// The changes as `path -> kind`.
    async fn changes(&self, id: &str) -> BTreeMap<String, String> {
        let (status, body) = self
            .json(self.get(&format!("/v1/workspaces/{id}/changes")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["path"].as_str().unwrap().to_string(),
                    c["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn kinds(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(path, kind)| (path.to_string(), kind.to_string()))
        .collect()
}

/// The files of a `.tar.zst` archive, with their contents.
fn unpack(archive: &[u8]) -> BTreeMap<String, String> {
    let tar = zstd::decode_all(archive).unwrap();
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().display().to_string();
            let mut content = String::new();
            std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
            files.insert(path.trim_start_matches("./").to_string(), content);
        }
    }
    files
}

#[tokio::test]
async fn snapshots_reset_changes_export_and_forks_work_on_docker_workspaces() {
    let image = image();
    let (api, _cleanup) = Api::with_docker().await;
    let id = api
        .create(json!({ "runtime": "docker", "image": image, "name": "layers" }))
        .await;
    api.put_file(&id, "a.txt", "one").await;
    api.put_file(&id, "dir/b.txt", "two").await;
    let changes = api.changes(&id).await;
    assert_eq!(
        changes.get("a.txt").map(String::as_str),
        Some("added"),
        "{changes:?}"
    );
    assert_eq!(
        changes.get("dir/b.txt").map(String::as_str),
        Some("added"),
        "{changes:?}"
    );

    let (status, snapshot) = api
        .json(api.post(&format!("/v1/workspaces/{id}/snapshots")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    assert_eq!(snapshot["workspace"], id.as_str());
    let snapshot = snapshot["id"].as_str().unwrap().to_string();

    // Back to the snapshot: later writes are gone, earlier ones are back.
    api.put_file(&id, "a.txt", "changed").await;
    api.put_file(&id, "c.txt", "new").await;
    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/reset"))
                .json(&json!({ "to": snapshot })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(api.file(&id, "a.txt").await.as_deref(), Some("one"));
    assert_eq!(api.file(&id, "c.txt").await, None);
    assert_eq!(api.changes(&id).await, kinds(&[]));

    // Changes since the snapshot, exported: deletions are counted, not
    // carried.
    api.put_file(&id, "a.txt", "three").await;
    let response = api
        .request(
            Method::DELETE,
            &format!("/v1/workspaces/{id}/files?path=dir/b.txt"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let changes = api.changes(&id).await;
    assert_eq!(
        changes.get("a.txt").map(String::as_str),
        Some("modified"),
        "{changes:?}"
    );
    assert_eq!(
        changes.get("dir/b.txt").map(String::as_str),
        Some("deleted"),
        "{changes:?}"
    );

    let response = api
        .get(&format!("/v1/workspaces/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/zstd");
    assert_eq!(headers["x-berth-export-deleted"], "1");
    let archive = response.bytes().await.unwrap();
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        archive.len().to_string().as_str()
    );
    let files = unpack(&archive);
    assert_eq!(
        files.get("a.txt").map(String::as_str),
        Some("three"),
        "{files:?}"
    );
    assert!(!files.contains_key("dir/b.txt"), "{files:?}");
    assert_eq!(
        std::fs::read_dir(api.home.path().join("tmp"))
            .unwrap()
            .count(),
        0,
        "the archive is not left behind"
    );

    // A count outside 1..=64 is refused, naming the field.
    for count in [0, 65] {
        let (status, body) = api
            .json(
                api.post(&format!("/v1/workspaces/{id}/fork"))
                    .json(&json!({ "count": count })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`count`") && message.contains(&format!("not {count}")),
            "{body}"
        );
    }

    // Forks start from the current state and go their own way.
    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/fork"))
                .json(&json!({ "count": 2 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let forks: Vec<String> = body["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ws| ws["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(forks.len(), 2);
    for fork in &forks {
        assert_eq!(api.file(fork, "a.txt").await.as_deref(), Some("three"));
    }
    api.put_file(&forks[0], "a.txt", "fork").await;
    assert_eq!(api.file(&id, "a.txt").await.as_deref(), Some("three"));
    assert_eq!(api.file(&forks[1], "a.txt").await.as_deref(), Some("three"));

    // Without a body, a reset goes back to the provisioned state.
    let response = api
        .post(&format!("/v1/workspaces/{id}/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.file(&id, "a.txt").await, None);

    let remove_snapshot = format!("/v1/snapshots/{snapshot}");
    let response = api
        .request(Method::DELETE, &remove_snapshot)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = api
        .json(api.request(Method::DELETE, &remove_snapshot))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &[&snapshot],
    );
    // Ids no runtime could have made are not found either (not a 500).
    for unknown in [
        "0",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let (status, body) = api
            .json(api.request(Method::DELETE, &format!("/v1/snapshots/{unknown}")))
            .await;
        assert_error(
            status,
            &body,
            StatusCode::NOT_FOUND,
            "not_found",
            &[unknown],
        );
    }
    // A reset to a snapshot that is gone is not found, naming it; the
    // workspace is left as it was.
    api.put_file(&id, "kept.txt", "kept").await;
    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/reset"))
                .json(&json!({ "to": snapshot })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no snapshot", &snapshot],
    );
    assert_eq!(api.file(&id, "kept.txt").await.as_deref(), Some("kept"));

    for ws in forks.iter().chain([&id]) {
        let (status, _) = api
            .json(api.request(Method::DELETE, &format!("/v1/workspaces/{ws}")))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body) = api.json(api.post("/v1/gc")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["runtimes"][0]["runtime"], "docker", "{body}");
    assert!(body["runtimes"][0]["removed"].is_array(), "{body}");
    // Local workspaces' leftover cgroups are collected too.
    assert_eq!(body["runtimes"][1]["runtime"], "local", "{body}");
}

#[tokio::test]
async fn an_export_takes_no_path_from_the_client() {
    let image = image();
    let (api, _cleanup) = Api::with_docker().await;
    let id = api
        .create(json!({ "runtime": "docker", "image": image }))
        .await;
    api.put_file(&id, "a.txt", "one").await;
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("out.tar.zst");
    for query in ["path", "target", "output"] {
        let (status, body) = api
            .json(api.get(&format!(
                "/v1/workspaces/{id}/export?{query}={}",
                target.display()
            )))
            .await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_query",
            &[query],
        );
    }
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn ids_that_can_name_nothing_are_bad_requests_naming_the_id() {
    let api = Api::start().await;
    let id = api.local().await;
    for path in ["/v1/snapshots/Not.A.Snapshot", "/v1/snapshots/a-b"] {
        let (status, body) = api.json(api.request(Method::DELETE, path)).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_id",
            &["snapshot", path.trim_start_matches("/v1/snapshots/")],
        );
    }
    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/reset"))
                .json(&json!({ "to": "../up" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_id",
        &["snapshot", "../up"],
    );
    for (path, named) in [
        ("/v1/workspaces/two%20words", "two words"),
        ("/v1/workspaces/a%2Fb/changes", "a/b"),
    ] {
        let (status, body) = api.json(api.get(path)).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_id",
            &["workspace", named],
        );
    }
    // A well-formed id that names nothing is still not found.
    let (status, body) = api.json(api.get("/v1/workspaces/nothing-here")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["nothing-here"],
    );
}

#[tokio::test]
async fn runtimes_without_layers_refuse_clearly() {
    let api = Api::start().await;
    let id = api.local().await;
    for (method, route, what) in [
        (Method::POST, "snapshots", "snapshots"),
        (Method::POST, "reset", "reset"),
        (Method::GET, "changes", "changes"),
        (Method::GET, "export", "export"),
    ] {
        let (status, body) = api
            .json(api.request(method, &format!("/v1/workspaces/{id}/{route}")))
            .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported",
            &[&id, "local", what],
        );
    }
    // A runtime that cannot fork says so, and no fork is left listed.
    let (status, body) = api
        .json(api.post(&format!("/v1/workspaces/{id}/fork")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        &["local", "fork"],
    );
    let (_, listed) = api.json(api.get("/v1/workspaces")).await;
    assert_eq!(
        listed["workspaces"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let (status, body) = api.json(api.post("/v1/gc")).await;
    // Only local's leftover cgroups are collected: it keeps no layers.
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({ "runtimes": [{ "runtime": "local", "removed": [], "orphans": [] }] })
        )
    );

    let (status, body) = api
        .json(api.request(Method::DELETE, "/v1/snapshots/nope"))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", &["nope"]);
    let (status, body) = api.json(api.post("/v1/workspaces/nope/snapshots")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", &["nope"]);
    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/fork"))
                .json(&json!({ "count": 2, "name": "x" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        &["name"],
    );
}

#[tokio::test]
async fn diff_is_a_patch_that_applies_to_a_fresh_checkout() {
    let api = Api::start().await;
    let upstream = tempfile::tempdir().unwrap();
    berth_testkit::make_repo(
        upstream.path(),
        &[("README", "one\n"), ("src/lib.rs", "fn a() {}\n")],
    );
    let url = format!("file://{}", upstream.path().display());
    let id = api
        .create(json!({
            "runtime": "local",
            "repositories": [{ "url": url, "path": "code" }],
        }))
        .await;
    let diff = || async {
        let response = api
            .get(&format!("/v1/workspaces/{id}/diff"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/x-diff")
        );
        response.text().await.unwrap()
    };
    assert_eq!(diff().await, "", "nothing has changed yet");

    let code = api.root(&id).join("code");
    std::fs::write(code.join("README"), "one\ntwo\n").unwrap();
    std::fs::remove_file(code.join("src/lib.rs")).unwrap();
    std::fs::write(code.join("NEW"), "new file\n").unwrap();
    let patch = diff().await;
    assert!(patch.contains("a/code/README"), "{patch}");

    let fresh = tempfile::tempdir().unwrap();
    berth_testkit::git(
        fresh.path(),
        &[
            "clone",
            "-q",
            &url,
            fresh.path().join("code").to_str().unwrap(),
        ],
    );
    // From the workspace root, as documented.
    let patch_file = fresh.path().join("changes.patch");
    std::fs::write(&patch_file, &patch).unwrap();
    berth_testkit::git(fresh.path(), &["apply", "-p1", "changes.patch"]);
    let checkout = fresh.path().join("code");
    assert_eq!(
        std::fs::read_to_string(checkout.join("README")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("NEW")).unwrap(),
        "new file\n"
    );
    assert!(!checkout.join("src/lib.rs").exists());
}
