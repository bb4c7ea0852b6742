//! The test servers themselves: they answer, they refuse without the token,
//! and they are gone once dropped.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_testkit::{self as kit, GitDaemon, GitHttpServer};
use std::io::{Read, Write};
use std::net::TcpStream;

/// Sends a bare HTTP/1.0 request and returns the whole response.
fn http_get(addr: std::net::SocketAddr, path: &str, authorization: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn the_http_server_demands_the_token_and_stops_on_drop() {
    let base = kit::temp_dir();
    let commit = kit::make_repo(&base.path().join("project"), &[("a", "b")]);
    let server = GitHttpServer::start(base.path(), "s3cret");
    let path = "/project/info/refs?service=git-upload-pack";

    let refused = http_get(server.addr(), path, None);
    assert!(refused.starts_with("HTTP/1.0 401"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{refused}"
    );
    let refused = http_get(server.addr(), path, Some("Bearer wrong"));
    assert!(refused.starts_with("HTTP/1.0 401"), "{refused}");
    assert_eq!((server.refused(), server.served()), (2, 0));

    let served = http_get(server.addr(), path, Some("Bearer s3cret"));
    assert!(served.starts_with("HTTP/1.0 200"), "{served}");
    assert!(
        served.contains("application/x-git-upload-pack-advertisement"),
        "{served}"
    );
    assert!(
        served.contains(&commit),
        "the advertisement lists main: {served}"
    );
    assert_eq!((server.refused(), server.served()), (2, 1));
    assert_eq!(server.requests(), 3);
    assert_eq!(
        server.authorizations(),
        ["Bearer wrong", "Bearer s3cret"],
        "the request without a header is counted, not listed"
    );

    let addr = server.addr();
    drop(server);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
}

#[test]
fn the_daemon_serves_and_stops_on_drop() {
    let base = kit::temp_dir();
    let commit = kit::make_repo(&base.path().join("project"), &[("a", "b")]);
    let daemon = GitDaemon::start(base.path());
    let listed = kit::git(
        base.path(),
        &["ls-remote", &format!("{}project", daemon.url())],
    );
    assert!(listed.contains(&commit), "{listed}");

    let port = daemon.port();
    drop(daemon);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after drop"
    );
}

#[test]
fn a_stalled_server_holds_a_clone_until_resumed() {
    let base = kit::temp_dir();
    let commit = kit::make_repo(&base.path().join("project"), &[("a", "b")]);
    let server = GitHttpServer::start(base.path(), "s3cret");
    server.stall();
    let dest = base.path().join("clone");
    let mut clone = std::process::Command::new("git")
        .args([
            "-c",
            "http.extraHeader=Authorization: Bearer s3cret",
            "clone",
            "--quiet",
        ])
        .arg(format!("{}project", server.url()))
        .arg(&dest)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .spawn()
        .unwrap();
    server.wait_for_stalled(1);
    assert!(clone.try_wait().unwrap().is_none(), "the clone goes on");
    assert!(kit::processes_holding("Bearer s3cret").contains(&clone.id()));
    server.resume();
    assert!(clone.wait().unwrap().success());
    assert_eq!(kit::head(&dest), commit);
    kit::wait_for_exit(&[clone.id()], std::time::Duration::from_secs(5));
}
