//! `berth terminal`: an interactive shell in a workspace through its
//! agent's PTY. The local terminal is put in raw mode for the session and
//! restored afterwards, window size changes are passed on.

use anyhow::{Context, Result};
use berth_core::ExecEvent;
use berth_core::proto::TerminalParams;
use berth_provider::Provider;
use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};
use std::io::Write;
use std::process::ExitCode;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};

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

pub async fn run(provider: &Provider, id: &str, command: Vec<String>) -> Result<ExitCode> {
    let (rows, cols) = window_size();
    let params = TerminalParams {
        command: (!command.is_empty()).then_some(berth_core::Command::Argv(command)),
        rows,
        cols,
        ..TerminalParams::default()
    };
    let mut terminal = provider
        .terminal(id, params)
        .await
        .context("cannot open a terminal")?;
    let raw = RawMode::enter()?;
    let mut resized = signal(SignalKind::window_change()).context("cannot watch window size")?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 8192];
    let mut stdout = std::io::stdout();
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
            read = stdin.read(&mut buf) => match read {
                Ok(0) | Err(_) => terminal.close_stdin()?,
                Ok(n) => terminal.write(&buf[..n])?,
            },
            _ = resized.recv() => {
                let (rows, cols) = window_size();
                terminal.resize(rows, cols)?;
            }
        }
    };
    drop(raw);
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
