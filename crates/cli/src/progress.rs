//! Provisioning progress on the terminal: progress bars when stderr is a
//! terminal, plain lines otherwise (logs, CI, pipes).

use crate::quote::quoted;
use berth_core::ProvisionEvent;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tokio::sync::mpsc;

/// Renders events until the sender is dropped.
pub async fn render(mut events: mpsc::Receiver<ProvisionEvent>) {
    if std::io::stderr().is_terminal() {
        render_bars(&mut events).await;
    } else {
        while let Some(event) = events.recv().await {
            render_line(&event);
        }
    }
}

fn render_line(event: &ProvisionEvent) {
    let mut err = std::io::stderr().lock();
    let _ = match event {
        ProvisionEvent::SetupOutput { data, .. } => err.write_all(&data.0),
        other => match describe(other) {
            Some(line) => writeln!(err, "{line}"),
            None => Ok(()),
        },
    };
}

/// One line for an event, or nothing for events shown otherwise.
fn describe(event: &ProvisionEvent) -> Option<String> {
    Some(match event {
        ProvisionEvent::Created { id, name } => {
            format!("creating workspace {} ({id})", quoted(name))
        }
        ProvisionEvent::CacheHit { key } => format!("provisioned state cached ({key})"),
        ProvisionEvent::CacheMiss { key } => format!("provisioning from scratch (cache key {key})"),
        ProvisionEvent::Cloning {
            repository,
            path,
            index,
            total,
        } => format!(
            "[{}/{total}] cloning {} into {}",
            index + 1,
            quoted(repository),
            quoted(path)
        ),
        ProvisionEvent::Cloned { path, commit, .. } => {
            format!(
                "cloned {} at {}",
                quoted(path),
                &commit[..commit.len().min(12)]
            )
        }
        ProvisionEvent::Fetching { path } => format!("fetching upstream into {}", quoted(path)),
        ProvisionEvent::Fetched {
            path,
            commit,
            updated,
        } => {
            let short = &commit[..commit.len().min(12)];
            let path = quoted(path);
            if *updated {
                format!("{path} moved to {short}")
            } else {
                format!("{path} up to date at {short}")
            }
        }
        ProvisionEvent::SetupStarted => "running the setup script".into(),
        ProvisionEvent::SetupOutput { .. } => return None,
        ProvisionEvent::SetupFinished { exit_code } => {
            format!("setup script exited with code {exit_code}")
        }
        ProvisionEvent::Cached { key } => format!("cached the provisioned state ({key})"),
        ProvisionEvent::Ready { id } => format!("workspace {id} is running"),
        ProvisionEvent::Failed {
            message,
            output_tail,
            ..
        } => {
            if output_tail.is_empty() {
                format!("failed: {message}")
            } else {
                format!("failed: {message}\n--- output tail ---\n{output_tail}")
            }
        }
    })
}

async fn render_bars(events: &mut mpsc::Receiver<ProvisionEvent>) {
    let style = ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bar: Option<ProgressBar> = None;
    let start = |message: String| {
        let bar = ProgressBar::new_spinner().with_style(style.clone());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar.set_message(message);
        bar
    };
    while let Some(event) = events.recv().await {
        match &event {
            ProvisionEvent::Cloning { .. }
            | ProvisionEvent::Fetching { .. }
            | ProvisionEvent::SetupStarted => {
                if let Some(done) = bar.take() {
                    done.finish();
                }
                bar = describe(&event).map(start);
            }
            ProvisionEvent::SetupOutput { data, .. } => {
                if let Some(bar) = &bar {
                    let text = String::from_utf8_lossy(&data.0);
                    if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                        bar.set_message(format!("setup: {}", line.trim()));
                    }
                }
            }
            ProvisionEvent::Cloned { .. }
            | ProvisionEvent::Fetched { .. }
            | ProvisionEvent::SetupFinished { .. } => {
                if let Some(done) = bar.take() {
                    done.finish_with_message(describe(&event).unwrap_or_default());
                }
            }
            _ => {
                if let Some(done) = bar.take() {
                    done.finish();
                }
                render_line(&event);
            }
        }
    }
    if let Some(done) = bar.take() {
        done.finish();
    }
}

/// A timestamp as a short age: `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(ms: i64) -> String {
    format!("{} ago", span(berth_core::now_ms().saturating_sub(ms)))
}

/// A timestamp to come as a short wait: `in 5s`, `in 3m`; `now` once due.
pub fn until(ms: i64) -> String {
    let wait = ms.saturating_sub(berth_core::now_ms());
    if wait <= 0 {
        return "now".into();
    }
    format!("in {}", span(wait))
}

/// Milliseconds in the largest whole unit: `5s`, `3m`, `2h`, `4d`.
fn span(ms: i64) -> String {
    match ms.max(0) / 1000 {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
