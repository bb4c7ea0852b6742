//! A real `git daemon` on 127.0.0.1, serving every repository under a
//! directory over `git://`, stopped when dropped.

use rustix::process::{Pid, Signal, kill_process_group};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the daemon may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(20);

/// Ports tried before giving up (another process may take a free port first).
const ATTEMPTS: usize = 5;

pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    /// Starts `git daemon` serving the repositories under `base_path`, so
    /// that `base_path/NAME` is `{url}NAME`. Returns once it accepts
    /// connections.
    pub fn start(base_path: &Path) -> GitDaemon {
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            match GitDaemon::try_start(base_path, crate::free_port()) {
                Ok(daemon) => return daemon,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("cannot start git daemon: {}", failures.join("; "))
    }

    fn try_start(base_path: &Path, port: u16) -> Result<GitDaemon, String> {
        let mut child = Command::new("git")
            .arg("daemon")
            .args([
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                // Its log says when it is listening.
                "--verbose",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base_path.display()))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that drop stops the per-connection
            // children too.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run git daemon: {e}"))?;
        let Some(stderr) = child.stderr.take() else {
            return Err("git daemon has no stderr".into());
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads the log for "Ready to rumble" and keeps draining it after, so
        // the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Ready to rumble") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                } else if ready_tx.is_some() {
                    log.push(line);
                }
            }
            if let Some(tx) = ready_tx {
                let _ = tx.send(Err(log.join("\n")));
            }
        });
        let daemon = GitDaemon { child, port };
        match ready_rx.recv_timeout(START_LIMIT) {
            Ok(Ok(())) => Ok(daemon),
            Ok(Err(log)) => Err(format!("port {port}: {log}")),
            Err(_) => Err(format!("port {port}: not ready after {START_LIMIT:?}")),
        }
    }

    /// `git://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let group = Pid::from_child(&self.child);
        let _ = kill_process_group(group, Signal::KILL);
        let _ = self.child.wait();
        // The daemon's per-connection children share its listening socket;
        // the port is free only once the whole group has exited.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rustix::process::test_kill_process_group(group).is_ok()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
