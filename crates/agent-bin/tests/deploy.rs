//! The files under `deploy/`: the wrapper script really fetches and runs
//! the agent, and the Compose and Kubernetes examples are well-formed and
//! wire the agent, its socket and the workspace together.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The value after `flag` in an argument list.
fn flag(args: &[String], flag: &str) -> String {
    let at = args.iter().position(|a| a == flag).unwrap();
    args[at + 1].clone()
}

#[test]
fn compose_mounts_the_agent_as_entrypoint_with_its_socket_directory() {
    let compose = yaml("compose.yaml");
    let service = &compose["services"]["workspace"];
    let entrypoint = strings(&service["entrypoint"]);
    let volumes = strings(&service["volumes"]);
    assert!(
        volumes.contains(&format!("./berth-agent:{}:ro", entrypoint[0])),
        "the entrypoint {} is the agent, mounted read-only: {volumes:?}",
        entrypoint[0]
    );
    let socket = flag(&entrypoint, "--socket");
    let socket_dir = Path::new(&socket).parent().unwrap().to_str().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v.ends_with(&format!(":{socket_dir}")))
    );
    let root = flag(&entrypoint, "--root");
    assert!(volumes.iter().any(|v| v.ends_with(&format!(":{root}"))));
    assert_eq!(service["network_mode"], "none");

    let fetched = &compose["services"]["workspace-fetched"];
    let entrypoint = strings(&fetched["entrypoint"]);
    assert!(
        strings(&fetched["volumes"]).contains(&format!("./agent-wrapper.sh:{}:ro", entrypoint[1]))
    );
}

#[test]
fn kubernetes_copies_the_agent_into_an_empty_dir_for_the_workspace() {
    let pod = yaml("kubernetes.yaml");
    assert_eq!(pod["kind"], "Pod");
    let spec = &pod["spec"];
    let init = &spec["initContainers"][0];
    let install_dir = flag(&strings(&init["args"]), "--install");
    let mount_of = |container: &Value, path: &str| -> String {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let bin_volume = mount_of(init, &install_dir);
    let workspace = &spec["containers"][0];
    let command = strings(&workspace["command"]);
    assert_eq!(command[0], format!("{install_dir}/berth-agent"));
    assert_eq!(mount_of(workspace, &install_dir), bin_volume);
    let socket = flag(&command, "--socket");
    let run_volume = mount_of(
        workspace,
        Path::new(&socket).parent().unwrap().to_str().unwrap(),
    );
    for volume in [bin_volume, run_volume] {
        let declared = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume.as_str())
            .unwrap();
        assert!(declared["emptyDir"].is_object(), "{volume} is an emptyDir");
    }
}

#[test]
fn the_agent_installs_itself_for_an_init_container() {
    let dir = tempfile::tempdir().unwrap();
    let agent = berth_agent_bin::install(&dir.path().join("a")).unwrap();
    let target = dir.path().join("shared/bin");
    let out = Command::new(&agent)
        .arg("--install")
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let copy = target.join("berth-agent");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        berth_agent_bin::agent_binary()
    );
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o755
    );
}

/// Serves the agent at /v1/agent/binary on loopback; reports each
/// request's first line and Authorization header.
fn serve_agent() -> (String, mpsc::Receiver<(String, Option<String>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            let mut auth = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                {
                    auth = Some(value.trim().to_string());
                }
            }
            let body = berth_agent_bin::agent_binary();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            stream.write_all(body).unwrap();
            let _ = tx.send((first.trim().to_string(), auth));
        }
    });
    (url, rx)
}

fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn the_wrapper_fetches_the_agent_with_curl_and_runs_it() {
    assert!(
        which("curl").is_file(),
        "curl is needed (scripts/prepare installs it)"
    );
    let (url, requests) = serve_agent();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg(deploy("agent-wrapper.sh"))
        .arg("--version")
        .env("BERTH_URL", &url)
        .env("BERTH_TOKEN", "s3cret")
        .env("BERTH_AGENT_PATH", dir.path().join("berth-agent"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("berth-agent "));
    let (line, auth) = requests.recv().unwrap();
    let arch = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout).unwrap();
    assert_eq!(
        line,
        format!("GET /v1/agent/binary?arch={} HTTP/1.1", arch.trim())
    );
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
}

#[test]
fn the_wrapper_works_with_busybox_alone_and_keeps_the_token_from_the_agent() {
    let busybox = which("busybox");
    assert!(
        busybox.is_file(),
        "busybox is needed (scripts/prepare installs busybox-static)"
    );
    let bin = tempfile::tempdir().unwrap();
    for applet in ["sh", "wget", "uname", "chmod", "mv", "rm", "env"] {
        std::os::unix::fs::symlink(&busybox, bin.path().join(applet)).unwrap();
    }
    let (url, requests) = serve_agent();
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("berth-agent");
    let run = |args: &[&str]| {
        Command::new(bin.path().join("sh"))
            .arg(deploy("agent-wrapper.sh"))
            .args(args)
            .env_clear()
            .env("PATH", bin.path())
            .env("BERTH_URL", &url)
            .env("BERTH_TOKEN", "s3cret")
            .env("BERTH_AGENT_PATH", &agent)
            .output()
            .unwrap()
    };
    let out = run(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("berth-agent "));
    assert_eq!(requests.recv().unwrap().1.as_deref(), Some("Bearer s3cret"));

    // What the wrapper execs gets no token: stand a program printing its
    // environment where the agent is kept, which the wrapper reuses.
    std::fs::write(&agent, "#!/bin/sh\nenv\n").unwrap();
    let out = run(&[]);
    let env = String::from_utf8(out.stdout).unwrap();
    assert!(env.contains("BERTH_URL="), "{env}");
    assert!(!env.contains("s3cret"), "{env}");
}
