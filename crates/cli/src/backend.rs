//! What the commands run against: the provider in this process, or a
//! berth server through its client (`--server`): over HTTP, or over NATS
//! (`nats://`). Each command is written once, over [`Backend`], so its
//! output, progress and exit codes are the same every way; each method
//! here only forwards to one of them.

use anyhow::{Result, bail};
use berth_client::{Client, ExportCounts};
use berth_core::proto::TerminalParams;
use berth_core::{
    Change, Command, ExecEvent, ExecRequest, ExecStream, ExportTarget, FileEntry, Labels,
    ProvisionEvent, ReadStream, Snapshot, Spec, Workspace,
};
use berth_nats_api::NatsClient;
use berth_provider::{
    CacheGc, CreateOptions, FetchResult, Progress, Provider, RuntimeGc, RuntimeStatus,
    ServiceError, WorkspaceDetails,
};
use std::path::Path;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub enum Backend {
    Local(Provider),
    Remote(Client),
    Nats(NatsClient),
}

/// What `berth gc` removed.
pub struct GcReport {
    pub runtimes: Vec<RuntimeGc>,
    /// Leftovers of interrupted git processes; a server does not report
    /// them.
    pub git: Option<usize>,
}

/// The stable code of an error the service layer or a server gave.
pub fn error_code(err: &anyhow::Error) -> Option<&str> {
    if let Some(err) = err.downcast_ref::<ServiceError>() {
        return Some(err.code());
    }
    err.downcast_ref::<berth_client::ClientError>()
        .and_then(|e| e.code())
}

impl Backend {
    /// The provider in this process, for commands that only work there.
    pub fn local(&self, command: &str) -> Result<&Provider> {
        match self {
            Backend::Local(provider) => Ok(provider),
            Backend::Remote(_) | Backend::Nats(_) => {
                bail!("berth {command} runs on the server's host only, not with --server")
            }
        }
    }

    pub async fn create(
        &self,
        spec: Spec,
        options: CreateOptions,
        progress: mpsc::Sender<ProvisionEvent>,
    ) -> Result<Workspace> {
        Ok(match self {
            Backend::Local(p) => p.create(spec, options, Progress::to(progress)).await?,
            Backend::Remote(c) => c.create(&spec, &options, progress).await?,
            Backend::Nats(c) => c.create(&spec, &options, progress).await?,
        })
    }

    pub async fn list(&self, all: bool, selector: &Labels) -> Result<Vec<Workspace>> {
        Ok(match self {
            Backend::Local(p) => p.list_labelled(all, selector).await?,
            Backend::Remote(c) => c.list(all, selector).await?,
            Backend::Nats(c) => c.list(all, selector).await?,
        })
    }

    pub async fn describe(&self, id: &str) -> Result<WorkspaceDetails> {
        Ok(match self {
            Backend::Local(p) => p.describe(id).await?,
            Backend::Remote(c) => c.describe(id).await?,
            Backend::Nats(c) => c.describe(id).await?,
        })
    }

    pub async fn start(&self, id: &str) -> Result<Workspace> {
        Ok(match self {
            Backend::Local(p) => p.start(id).await?,
            Backend::Remote(c) => c.start(id).await?,
            Backend::Nats(c) => c.start(id).await?,
        })
    }

    pub async fn stop(&self, id: &str) -> Result<Workspace> {
        Ok(match self {
            Backend::Local(p) => p.stop(id).await?,
            Backend::Remote(c) => c.stop(id).await?,
            Backend::Nats(c) => c.stop(id).await?,
        })
    }

    pub async fn remove(&self, id: &str) -> Result<Workspace> {
        Ok(match self {
            Backend::Local(p) => p.remove(id).await?,
            Backend::Remote(c) => c.remove(id).await?,
            Backend::Nats(c) => c.remove(id).await?,
        })
    }

    pub async fn fetch(&self, id: &str) -> Result<Vec<FetchResult>> {
        Ok(match self {
            Backend::Local(p) => p.fetch(id, Progress::none()).await?,
            Backend::Remote(c) => c.fetch(id).await?,
            Backend::Nats(c) => {
                // Progress is not shown: no one listens.
                let (progress, _) = mpsc::channel(1);
                c.fetch(id, progress).await?
            }
        })
    }

    pub async fn runtimes(&self) -> Result<Vec<RuntimeStatus>> {
        Ok(match self {
            Backend::Local(p) => p.runtimes().await,
            Backend::Remote(c) => c.runtimes().await?,
            Backend::Nats(c) => c.runtimes().await?,
        })
    }

    pub async fn exec(
        &self,
        id: &str,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream> {
        Ok(match self {
            Backend::Local(p) => p.exec(id, request, cancel).await?.1,
            Backend::Remote(c) => c.exec(id, &request, cancel).await?,
            Backend::Nats(c) => c.exec(id, &request, cancel).await?,
        })
    }

    pub async fn read_file(&self, id: &str, path: &str) -> Result<ReadStream> {
        Ok(match self {
            Backend::Local(p) => p.read_file(id, path).await?,
            Backend::Remote(c) => c.read_file(id, path).await?,
            Backend::Nats(c) => c.read_file(id, path).await?,
        })
    }

    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        match self {
            Backend::Local(p) => p.write_file(id, path, data).await?,
            Backend::Remote(c) => c.write_file(id, path, data).await?,
            Backend::Nats(c) => c.write_file(id, path, data).await?,
        }
        Ok(())
    }

    pub async fn list_files(&self, id: &str, dir: &str) -> Result<Vec<FileEntry>> {
        Ok(match self {
            Backend::Local(p) => p.list_files(id, dir).await?,
            Backend::Remote(c) => c.list_files(id, dir).await?,
            Backend::Nats(c) => c.list_files(id, dir).await?,
        })
    }

    pub async fn snapshot(&self, id: &str) -> Result<Snapshot> {
        Ok(match self {
            Backend::Local(p) => p.snapshot(id).await?,
            Backend::Remote(c) => c.snapshot(id).await?,
            Backend::Nats(c) => c.snapshot(id).await?,
        })
    }

    pub async fn fork(&self, id: &str, count: usize) -> Result<Vec<Workspace>> {
        Ok(match self {
            Backend::Local(p) => p.fork(id, count).await?,
            Backend::Remote(c) => c.fork(id, count).await?,
            Backend::Nats(c) => c.fork(id, count).await?,
        })
    }

    pub async fn reset(&self, id: &str, to: Option<&str>) -> Result<Workspace> {
        Ok(match self {
            Backend::Local(p) => p.reset(id, to).await?,
            Backend::Remote(c) => c.reset(id, to).await?,
            Backend::Nats(c) => c.reset(id, to).await?,
        })
    }

    pub async fn changes(&self, id: &str) -> Result<Vec<Change>> {
        Ok(match self {
            Backend::Local(p) => p.changes(id).await?,
            Backend::Remote(c) => c.changes(id).await?,
            Backend::Nats(c) => c.changes(id).await?,
        })
    }

    pub async fn diff(&self, id: &str) -> Result<ReadStream> {
        Ok(match self {
            Backend::Local(p) => p.diff(id).await?,
            Backend::Remote(c) => c.diff(id).await?,
            Backend::Nats(c) => c.diff(id).await?,
        })
    }

    /// Writes the changed files to `output`: a `.tar.zst` archive, or a
    /// directory.
    pub async fn export(&self, id: &str, output: &Path) -> Result<ExportCounts> {
        let is_archive = output.to_string_lossy().ends_with(".tar.zst");
        Ok(match self {
            Backend::Local(p) => {
                let path = output.to_path_buf();
                let target = if is_archive {
                    ExportTarget::Archive { path }
                } else {
                    ExportTarget::Directory { path }
                };
                let summary = p.export(id, &target).await?;
                ExportCounts {
                    entries: summary.entries,
                    bytes: summary.bytes,
                    deleted: summary.deleted.len() as u64,
                }
            }
            Backend::Remote(c) => c.export(id, output, is_archive).await?,
            Backend::Nats(c) => c.export(id, output, is_archive).await?,
        })
    }

    pub async fn gc(&self) -> Result<GcReport> {
        Ok(match self {
            Backend::Local(p) => {
                let gc = p.gc().await?;
                GcReport {
                    runtimes: gc.runtimes,
                    git: Some(gc.git.len()),
                }
            }
            Backend::Remote(c) => GcReport {
                runtimes: c.gc().await?,
                git: None,
            },
            Backend::Nats(c) => GcReport {
                runtimes: c.gc().await?,
                git: None,
            },
        })
    }

    pub async fn gc_cache(&self, budget: Option<u64>) -> Result<CacheGc> {
        Ok(match self {
            Backend::Local(p) => p.gc_cache(budget).await?,
            Backend::Remote(c) => c.gc_cache(budget).await?,
            Backend::Nats(c) => c.gc_cache(budget).await?,
        })
    }

    pub async fn agent_info(&self, id: &str, detect: bool) -> Result<berth_core::proto::AgentInfo> {
        Ok(match self {
            Backend::Local(p) => p.agent_info(id, detect).await?,
            Backend::Remote(c) => c.agent_info(id, detect).await?,
            Backend::Nats(c) => c.agent_info(id, detect).await?,
        })
    }

    /// Opens a terminal of `rows` by `cols` in workspace `id`, running
    /// `command` (a shell when `None`).
    pub async fn terminal(
        &self,
        id: &str,
        command: Option<Command>,
        rows: u16,
        cols: u16,
    ) -> Result<Terminal> {
        Ok(match self {
            Backend::Local(p) => {
                let params = TerminalParams {
                    command,
                    rows,
                    cols,
                    ..TerminalParams::default()
                };
                Terminal::Local(p.terminal(id, params).await?)
            }
            Backend::Remote(c) => Terminal::Remote(Box::new(
                c.terminal(id, command.as_ref(), rows, cols).await?,
            )),
            Backend::Nats(c) => {
                let params = TerminalParams {
                    command,
                    rows,
                    cols,
                    ..TerminalParams::default()
                };
                Terminal::Nats(c.terminal(id, &params).await?)
            }
        })
    }

    /// Waits for what the local runtimes go on with after answering.
    pub async fn settle(&self) {
        if let Backend::Local(provider) = self {
            provider.settle().await;
        }
    }
}

/// A program in a workspace's terminal, here or on a server.
pub enum Terminal {
    Local(berth_provider::Terminal),
    Remote(Box<berth_client::Terminal>),
    Nats(berth_nats_api::NatsTerminal),
}

impl Terminal {
    /// The program's next output, then its `Exit`; `None` once its events
    /// ended without one.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        match self {
            Terminal::Local(t) => t.next().await,
            Terminal::Remote(t) => t.next().await,
            Terminal::Nats(t) => t.next().await,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Terminal::Local(t) => t.write(bytes)?,
            Terminal::Remote(t) => t.write(bytes).await?,
            Terminal::Nats(t) => t.write(bytes).await?,
        }
        Ok(())
    }

    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        match self {
            Terminal::Local(t) => t.resize(rows, cols)?,
            Terminal::Remote(t) => t.resize(rows, cols).await?,
            Terminal::Nats(t) => t.resize(rows, cols).await?,
        }
        Ok(())
    }

    pub async fn close_stdin(&mut self) -> Result<()> {
        match self {
            Terminal::Local(t) => t.close_stdin()?,
            Terminal::Remote(t) => t.close_stdin().await?,
            Terminal::Nats(t) => t.close_stdin().await?,
        }
        Ok(())
    }
}
