//! Test support for berth's crates: scratch directories, free loopback
//! ports, git repositories made on the spot, real git servers on loopback
//! (`git daemon`, and `git http-backend` behind an HTTP server that demands
//! a token and can stall a clone), a real `nats-server` with JetStream, and
//! the processes holding a secret.
//!
//! Everything here panics with a clear message when the machine cannot do
//! what a test needs: a failed setup is a failed test.

pub mod attacks;
mod daemon;
mod http;
mod nats;
mod procs;
mod repo;

pub use daemon::GitDaemon;
pub use http::GitHttpServer;
pub use nats::NatsServer;
pub use procs::{command_of, processes_holding, wait_for_exit};
pub use repo::{checkout, commit_files, create_branch, git, head, make_repo, tag};

use std::path::{Path, PathBuf};

/// A scratch directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process can
/// take it before it is used; servers that can bind port 0 themselves
/// should, and the ones here that cannot retry on a clash.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// Writes `home/credentials.toml` (mode 0600, as berth demands) holding one
/// bearer credential, `name`, that may be sent to the URLs under `urls`.
pub fn write_credentials(home: &Path, name: &str, token: &str, urls: &[&str]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let file = home.join("credentials.toml");
    let urls: Vec<String> = urls.iter().map(|url| format!("{url:?}")).collect();
    let text = format!(
        "[{name}]\ntoken = {token:?}\nurls = [{}]\n",
        urls.join(", ")
    );
    std::fs::create_dir_all(home)
        .and_then(|()| std::fs::write(&file, text))
        .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    file
}

/// Every file under `root` (not following symlinks, `.git` included) whose
/// contents, or symlink target, contain `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            let path = entry.path();
            let kind = entry
                .file_type()
                .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
            let bytes = if kind.is_dir() {
                pending.push(path);
                continue;
            } else if kind.is_symlink() {
                std::fs::read_link(&path)
                    .map(|t| t.into_os_string().into_encoded_bytes())
                    .unwrap_or_else(|e| panic!("cannot read link {}: {e}", path.display()))
            } else {
                std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            };
            if contains(&bytes, needle) {
                found.push(path);
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_containing_finds_bytes_anywhere_below() {
        let dir = temp_dir();
        std::fs::create_dir_all(dir.path().join("a/.git")).unwrap();
        std::fs::write(dir.path().join("a/.git/config"), "x=SECRET\n").unwrap();
        std::fs::write(dir.path().join("clean"), "nothing").unwrap();
        std::os::unix::fs::symlink("/SECRET", dir.path().join("link")).unwrap();
        let mut found = files_containing(dir.path(), b"SECRET");
        found.sort();
        assert_eq!(
            found,
            [dir.path().join("a/.git/config"), dir.path().join("link")]
        );
        assert!(files_containing(dir.path(), b"absent").is_empty());
    }
}
