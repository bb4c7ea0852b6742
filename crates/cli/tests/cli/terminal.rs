//! `berth terminal` as a user at a terminal runs it: in a pseudo-terminal,
//! on a running sandbox workspace, here and through `--server` over TCP
//! and a unix socket. What is typed reaches the workspace's shell, its
//! output comes back, a window size change is passed on, and the shell's
//! exit code is berth's.

use super::server::{Server, Target};
use super::{Env, stderr, workspace_id};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a step may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A `berth` process whose standard input, output and error are a
/// pseudo-terminal the test types into and reads.
pub(crate) struct Pty {
    pub(crate) child: Child,
    pub(crate) master: File,
    output: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Pty {
    pub(crate) fn spawn(mut command: std::process::Command) -> Pty {
        let master: OwnedFd =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        size(&master, 24, 80);
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        command
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        let child = command.spawn().unwrap();
        // The child holds the only copies of the slave now: once it ends,
        // reading the master ends too.
        drop(command);
        let master = File::from(master);
        let mut reader = master.try_clone().unwrap();
        let (sender, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if sender.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Pty {
            master,
            child,
            output,
            seen: Vec::new(),
        }
    }

    pub(crate) fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Reads until the output since the last call holds `wanted`, and
    /// returns that output.
    pub(crate) fn wait_for(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        while !String::from_utf8_lossy(&self.seen).contains(wanted) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!(
                    "`{wanted}` never came; the terminal showed {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
        String::from_utf8_lossy(&std::mem::take(&mut self.seen)).into_owned()
    }

    /// Asks the shell for its terminal's size until it is `rows` by
    /// `cols`: a resize reaches the workspace by its own way, not in line
    /// with what is typed. (The shell's echo of each line never holds
    /// what is waited for: `do''ne` prints `done`.)
    pub(crate) fn wait_for_size(&mut self, rows: u16, cols: u16) {
        let deadline = Instant::now() + PATIENCE;
        let wanted = format!("{rows}x{cols}\r\n");
        loop {
            self.type_text("stty size | tr ' ' x; echo do''ne\r");
            let shown = self.wait_for("done\r\n");
            if shown.contains(&wanted) {
                return;
            }
            assert!(Instant::now() < deadline, "never {rows}x{cols}: {shown:?}");
        }
    }

    /// The exit code of `berth`, once it ended.
    pub(crate) fn exit_code(mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "berth terminal never ended");
            // Output keeps the test waiting on the process, not on a clock.
            let _ = self.output.recv_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn size(fd: &impl std::os::fd::AsFd, rows: u16, cols: u16) {
    tcsetwinsize(
        fd,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
}

/// Opens a terminal on a running sandbox workspace of `target`, types
/// commands (one printing the server's exit frame as text), resizes the
/// window, and leaves with `exit 3`.
fn terminal_session(target: &Target, env: &Env) {
    let spec = env.file("terminal.toml", "runtime = \"sandbox\"\nimage = \"host\"\n");
    let out = target.run(&["up", spec.to_str().unwrap()], None);
    assert!(out.status.success(), "berth up: {}", stderr(&out));
    let id = workspace_id(&String::from_utf8(out.stdout).unwrap());

    let mut command = target.berth();
    command.args(["terminal", &id]);
    let mut pty = Pty::spawn(command);
    pty.type_text("echo h''i\r");
    // The shell's echo of the line shows `h''i`: `hi` is its output.
    pty.wait_for("hi\r\n");
    // A program printing what the server's exit frame holds is output, not
    // the end: the terminal goes on (the size is asked next).
    pty.type_text("printf '{\"type\":\"exit\",\"code\":9}\\n'\r");
    pty.wait_for("9}\r\n");
    pty.wait_for_size(24, 80);
    size(&pty.master, 40, 120);
    let pid = rustix::process::Pid::from_raw(pty.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::WINCH).unwrap();
    pty.wait_for_size(40, 120);
    pty.type_text("exit 3\r");
    assert_eq!(pty.exit_code(), Some(3), "the shell's exit code is berth's");
    let rm = target.run(&["rm", &id], None);
    assert!(rm.status.success(), "berth rm: {}", stderr(&rm));
}

#[test]
fn terminal_here_and_over_tcp_and_a_unix_socket_runs_what_is_typed_and_exits_with_the_shell() {
    let env = Env::new();
    terminal_session(&Target::Local(&env), &env);
    for server in [Server::tcp(), Server::unix()] {
        let client = Env::new();
        let target = Target::Server {
            server: &server,
            client: &client,
        };
        terminal_session(&target, &client);
    }
}

/// The errors a terminal meets before it starts are the server's, as they
/// are here: an unknown workspace, and a wrong token (refused before the
/// WebSocket upgrade, not a broken handshake).
#[test]
fn a_terminal_on_no_such_workspace_or_with_a_wrong_token_gets_the_errors_it_gets_here() {
    let env = Env::new();
    let local = env.run(&["terminal", "nosuchworkspace"]);
    assert_eq!(local.status.code(), Some(1));
    let said = stderr(&local);
    assert!(said.contains("nosuchworkspace"), "{said}");
    for server in [Server::tcp(), Server::unix()] {
        let client = Env::new();
        let target = Target::Server {
            server: &server,
            client: &client,
        };
        let remote = target.run(&["terminal", "nosuchworkspace"], None);
        assert_eq!(remote.status.code(), Some(1), "over {}", server.url);
        assert_eq!(stderr(&remote), said, "over {}", server.url);
    }
    let server = Server::tcp();
    let out = Env::new()
        .berth()
        .args(["--server", &server.url, "terminal", "nosuchworkspace"])
        .env("BERTH_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "berth: cannot open a terminal: wrong bearer token\n"
    );
}
