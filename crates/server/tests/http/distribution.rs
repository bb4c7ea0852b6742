//! The agent binary route, and `deploy/agent-wrapper.sh` run for real with
//! `sh` against this server: with curl, with busybox's wget alone, with a
//! wrong token, and through a connection that corrupts the download.

use super::*;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn wrapper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agent-wrapper.sh")
}

fn arch() -> String {
    let out = std::process::Command::new("uname")
        .arg("-m")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn the_agent_binary_is_served_with_its_length_and_checksum() {
    let api = Api::start().await;
    let agent = berth_agent_bin::agent_binary();
    let sha = hex(&Sha256::digest(agent));

    let response = api
        .get(&format!("/v1/agent/binary?arch={}", arch()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        agent.len().to_string().as_str()
    );
    assert_eq!(headers["x-berth-agent-sha256"], sha.as_str());
    assert_eq!(headers[header::ETAG], format!("\"{sha}\"").as_str());
    assert_eq!(&response.bytes().await.unwrap()[..], agent);

    // `amd64` is another name for the same architecture.
    let response = api.get("/v1/agent/binary?arch=amd64").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let response = api
        .get(&format!("/v1/agent/binary?arch={}", arch()))
        .header(header::IF_NONE_MATCH, format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_architecture_not_built_is_named_with_the_ones_that_are() {
    let api = Api::start().await;
    let (status, body) = api.json(api.get("/v1/agent/binary?arch=riscv64")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "agent_not_built",
        &["riscv64", &arch()],
    );
    let (status, body) = api.json(api.get("/v1/agent/binary")).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        &["arch"],
    );

    let (status, body) = api
        .json(
            api.client
                .get(format!("{}/v1/agent/binary?arch={}", api.base, arch())),
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized", &[]);
}

/// Runs the wrapper with `sh` and these arguments and environment, the
/// agent kept at `dest`.
fn wrapper_command(
    path: &std::ffi::OsStr,
    url: &str,
    token: &str,
    dest: &Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg(wrapper())
        .env_clear()
        .env("PATH", path)
        .env("BERTH_URL", url)
        .env("BERTH_TOKEN", token)
        .env("BERTH_AGENT_PATH", dest)
        .kill_on_drop(true);
    command
}

fn system_path() -> std::ffi::OsString {
    std::env::var_os("PATH").unwrap()
}

#[tokio::test]
async fn the_wrapper_fetches_verifies_and_starts_the_agent_with_curl() {
    let curl = std::process::Command::new("sh")
        .args(["-c", "command -v curl && command -v sha256sum"])
        .output()
        .unwrap();
    assert!(
        curl.status.success(),
        "curl and sha256sum are needed (scripts/prepare installs curl)"
    );
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("bin/berth-agent");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let socket = dir.path().join("run/agent.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();

    let mut agent = wrapper_command(&system_path(), &api.base, TOKEN, &dest)
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.path().join("root"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client =
        match berth_agent_client::AgentClient::connect(&socket, std::time::Duration::from_secs(30))
            .await
        {
            Ok(client) => client,
            Err(err) => {
                agent.start_kill().unwrap();
                let out = agent.wait_with_output().await.unwrap();
                panic!(
                    "the agent did not start ({err}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
    let info = client.info(false).await.unwrap();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        berth_agent_bin::agent_binary()
    );
    // The wrapper became the agent, and the token stayed behind.
    assert_eq!(Some(info.pid), agent.id());
    let environ = std::fs::read(format!("/proc/{}/environ", info.pid)).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("BERTH_URL="), "{environ}");
    assert!(!environ.contains(TOKEN), "{environ}");
    agent.start_kill().unwrap();
    let out = agent.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("not verified"), "{stderr}");
}

/// A directory of busybox applets, as in a minimal image: no curl.
fn busybox_bin(applets: &[&str]) -> tempfile::TempDir {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| panic!("busybox is needed (scripts/prepare installs busybox-static)"));
    let bin = tempfile::tempdir().unwrap();
    for applet in applets {
        std::os::unix::fs::symlink(busybox, bin.path().join(applet)).unwrap();
    }
    bin
}

const BUSYBOX: &[&str] = &["sh", "wget", "uname", "chmod", "mv", "rm", "sha256sum"];

#[tokio::test]
async fn the_wrapper_works_with_busybox_wget_and_checks_the_checksum() {
    let api = Api::start().await;
    let bin = busybox_bin(BUSYBOX);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("berth-agent");
    let out = wrapper_command(bin.path().as_os_str(), &api.base, TOKEN, &dest)
        .arg("--version")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("berth-agent "));
    assert!(!stderr.contains("not verified"), "{stderr}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        berth_agent_bin::agent_binary()
    );
}

#[tokio::test]
async fn the_wrapper_refuses_a_wrong_token_and_keeps_nothing() {
    let api = Api::start().await;
    let busybox = busybox_bin(BUSYBOX);
    for path in [system_path(), busybox.path().as_os_str().to_owned()] {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("berth-agent");
        let out = wrapper_command(&path, &api.base, "not-the-token", &dest)
            .arg("--version")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("401"), "{stderr}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

/// Where the proxy flips a byte: inside the agent, past the response head.
const FLIP_AT: usize = 500_000;

/// A loopback proxy to `upstream` that flips one byte of each response.
async fn corrupting_proxy(upstream: std::net::SocketAddr) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            tokio::spawn(async move {
                let mut seen = 0;
                let mut buffer = vec![0u8; 64 << 10];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    if (seen..seen + n).contains(&FLIP_AT) {
                        buffer[FLIP_AT - seen] ^= 0xff;
                    }
                    seen += n;
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_wrapper_refuses_a_corrupted_download() {
    assert!(berth_agent_bin::agent_binary().len() > FLIP_AT + 1000);
    let api = Api::start().await;
    let upstream = api.base.trim_start_matches("http://").parse().unwrap();
    let proxy = corrupting_proxy(upstream).await;
    let busybox = busybox_bin(BUSYBOX);
    for path in [system_path(), busybox.path().as_os_str().to_owned()] {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("berth-agent");
        let out = wrapper_command(&path, &proxy, TOKEN, &dest)
            .arg("--version")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("corrupt"), "{stderr}");
        assert!(stderr.contains(berth_agent_bin::SHA256), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("berth-agent"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
