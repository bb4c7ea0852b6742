//! A real `nats-server` with JetStream on a free loopback port, its store in
//! a temporary directory, killed when dropped.
//!
//! The binary is `$BERTH_NATS_SERVER`, else the one `scripts/prepare`
//! installs into the target directory (`target/nats-server/bin/nats-server`),
//! else `nats-server` on the `PATH`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the server may take to start answering.
const START_LIMIT: Duration = Duration::from_secs(20);

/// The line the server logs once it listens, followed by `HOST:PORT`.
const LISTENING: &str = "Listening for client connections on ";

pub struct NatsServer {
    child: Child,
    port: u16,
    // Dropped after the child is killed (fields drop in order after `drop`).
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream and no authentication.
    pub fn start() -> NatsServer {
        NatsServer::start_with_config("")
    }

    /// Starts a server with JetStream and `config` (nats-server's
    /// configuration format, e.g. an `authorization { ... }` block) as its
    /// configuration file. Returns once it answers a client connection with
    /// its `INFO`; panics naming the binary it tried and its log otherwise.
    pub fn start_with_config(config: &str) -> NatsServer {
        let program = program();
        let dir = crate::temp_dir();
        let config_file = dir.path().join("nats.conf");
        std::fs::write(&config_file, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_file.display()));
        let mut child = Command::new(&program)
            .arg("--config")
            .arg(&config_file)
            .args(["--addr", "127.0.0.1", "--port", "-1", "--jetstream"])
            .arg("--store_dir")
            .arg(dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (set BERTH_NATS_SERVER, or run scripts/prepare, which \
                     installs nats-server into the target directory)",
                    program.display()
                )
            });
        let Some(stderr) = child.stderr.take() else {
            panic!("{} has no stderr", program.display());
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads the log for the port and "Server is ready", and keeps
        // draining it after, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut port = None;
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if ready_tx.is_none() {
                    continue;
                }
                if let Some((_, address)) = line.split_once(LISTENING) {
                    port = address
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.trim().parse().ok());
                }
                let ready = line.contains("Server is ready");
                log.push(line);
                if ready
                    && let Some(port) = port
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(Ok(port));
                }
            }
            if let Some(tx) = ready_tx {
                let _ = tx.send(Err(log.join("\n")));
            }
        });
        let port = match ready_rx.recv_timeout(START_LIMIT) {
            Ok(Ok(port)) => port,
            Ok(Err(log)) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                panic!("{} did not start ({status}):\n{log}", program.display())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} was not ready after {START_LIMIT:?}", program.display())
            }
        };
        let server = NatsServer { child, port, dir };
        server.wait_for_info(&program);
        server
    }

    /// Connects as a client would and reads the server's greeting.
    fn wait_for_info(&self, program: &Path) {
        let greeting = TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(START_LIMIT))?;
            let mut first = [0u8; 5];
            stream.read_exact(&mut first)?;
            Ok(first)
        });
        match greeting {
            Ok(first) if &first == b"INFO " => {}
            Ok(first) => panic!(
                "{} on port {} greets with {:?}, not INFO",
                program.display(),
                self.port,
                String::from_utf8_lossy(&first)
            ),
            Err(e) => panic!(
                "{} on port {} does not answer: {e}",
                program.display(),
                self.port
            ),
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Kills the server (SIGKILL) and waits for it to exit: its clients see
    /// the connection drop, as when its host dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The nats-server binary to run.
fn program() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_NATS_SERVER") {
        return PathBuf::from(path);
    }
    // Tests run as `<target>/<profile>/deps/NAME-HASH` and benches or
    // binaries as `<target>/<profile>/NAME`: the prepared one is beside the
    // profile directory.
    let prepared = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(3)
            .map(|dir| dir.join("nats-server/bin/nats-server"))
            .find(|candidate| candidate.is_file())
    });
    prepared.unwrap_or_else(|| PathBuf::from("nats-server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_server_answers_and_a_killed_one_does_not() {
        let mut server = NatsServer::start();
        let url = server.url();
        assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
        assert!(TcpStream::connect(("127.0.0.1", server.port())).is_ok());
        assert!(server.store_dir().join("jetstream").is_dir());
        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", server.port())).is_err());
    }

    #[test]
    fn a_bad_configuration_fails_loudly_with_the_servers_log() {
        let failure = std::panic::catch_unwind(|| {
            NatsServer::start_with_config("this is { not a configuration")
        });
        let message = failure
            .err()
            .and_then(|panic| panic.downcast::<String>().ok())
            .map(|message| *message)
            .unwrap_or_default();
        assert!(message.contains("did not start"), "{message}");
        assert!(message.contains("nats-server"), "{message}");
    }
}
