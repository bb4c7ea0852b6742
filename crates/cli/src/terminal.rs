//! `berth terminal`: an interactive shell in a workspace through its
//! agent's PTY, here or through a server (`--server`). The local terminal
//! is put in raw mode for the session and restored afterwards, window size
//! changes are passed on, and the program's exit code is berth's.

use crate::backend::Backend;
use anyhow::{Context, Result};
use berth_core::ExecEvent;
use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};
use std::io::{Read, Write};
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Puts a terminal in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("standard input is not a terminal")?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).context("cannot enter raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

fn window_size() -> (u16, u16) {
    tcgetwinsize(std::io::stdout())
        .map(|size| (size.ws_row, size.ws_col))
        .unwrap_or((24, 80))
}

/// Standard input, read on a thread of its own, chunk by chunk; the
/// channel closes when it ends. A read blocked on a terminal cannot be
/// cancelled, and left in the async runtime's blocking pool it would keep
/// berth from exiting once the program ended.
fn input() -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if sender.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    receiver
}

pub async fn run(backend: &Backend, id: &str, command: Vec<String>) -> Result<ExitCode> {
    let (rows, cols) = window_size();
    let command = (!command.is_empty()).then_some(berth_core::Command::Argv(command));
    let mut terminal = backend
        .terminal(id, command, rows, cols)
        .await
        .context("cannot open a terminal")?;
    let raw = RawMode::enter()?;
    let mut resized = signal(SignalKind::window_change()).context("cannot watch window size")?;
    let mut input = input();
    let mut stdout = std::io::stdout();
    let mut input_open = true;
    let code = loop {
        tokio::select! {
            event = terminal.next() => match event {
                Some(ExecEvent::Stdout { data }) | Some(ExecEvent::Stderr { data }) => {
                    stdout.write_all(&data.0)?;
                    stdout.flush()?;
                }
                Some(ExecEvent::Exit(status)) => break status.shell_code(),
                None => break 1,
            },
            // Input ends once: the program may still write after it.
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => terminal.write(&bytes).await?,
                None => {
                    input_open = false;
                    terminal.close_stdin().await?;
                }
            },
            _ = resized.recv() => {
                let (rows, cols) = window_size();
                terminal.resize(rows, cols).await?;
            }
        }
    };
    drop(raw);
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
