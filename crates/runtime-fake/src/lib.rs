//! The `fake` runtime: workspaces held in memory and commands answered from
//! a script, so that the provider, the HTTP API and the CLI can be tested
//! for behaviours that real runtimes make hard to provoke (a runtime that is
//! unavailable, a command that never ends, a create that fails) — and every
//! call is recorded for assertions.

use async_trait::async_trait;
use berth_core::{
    ExecEvent, ExecRequest, ExecStream, ExitStatus, FileEntry, FileKind, Isolation, ReadStream,
    Runtime, RuntimeError, Workspace, WorkspacePath,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// How the fake answers a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Writes this output and exits with this code.
    Exit {
        stdout: String,
        stderr: String,
        code: i32,
    },
    /// Writes this output, then runs until cancelled.
    Hang { stdout: String },
}

impl Behaviour {
    pub fn ok(stdout: impl Into<String>) -> Self {
        Behaviour::Exit {
            stdout: stdout.into(),
            stderr: String::new(),
            code: 0,
        }
    }

    pub fn fail(stderr: impl Into<String>, code: i32) -> Self {
        Behaviour::Exit {
            stdout: String::new(),
            stderr: stderr.into(),
            code,
        }
    }
}

type Files = BTreeMap<WorkspacePath, Vec<u8>>;

#[derive(Default)]
struct State {
    workspaces: HashMap<String, Files>,
    cache: HashMap<String, Files>,
    behaviours: Vec<(String, Behaviour)>,
    calls: Vec<String>,
    unavailable: Option<String>,
    failing_create: Option<String>,
}

/// The fake runtime. Workspaces live as long as the value.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure already; the
        // state itself is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commands starting with `prefix` behave as given; later rules win.
    pub fn on(&self, prefix: impl Into<String>, behaviour: Behaviour) {
        self.state().behaviours.push((prefix.into(), behaviour));
    }

    /// Makes the runtime report itself unavailable for this reason.
    pub fn set_unavailable(&self, reason: Option<String>) {
        self.state().unavailable = reason;
    }

    /// Makes every create fail with this message.
    pub fn fail_creates(&self, message: Option<String>) {
        self.state().failing_create = message;
    }

    /// Every call so far, as `operation id [detail]`.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    fn record(&self, call: String) {
        self.state().calls.push(call);
    }

    fn with_files<T>(
        &self,
        ws: &Workspace,
        f: impl FnOnce(&mut Files) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let mut state = self.state();
        let files = state
            .workspaces
            .get_mut(ws.id.as_str())
            .ok_or_else(|| RuntimeError::Gone {
                id: ws.id.to_string(),
                detail: "the fake runtime holds no such workspace".into(),
            })?;
        f(files)
    }
}

fn read_tree(dir: &Path, prefix: &WorkspacePath, files: &mut Files) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = prefix.join(
            &WorkspacePath::parse(&name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        );
        if entry.file_type()?.is_dir() {
            read_tree(&entry.path(), &path, files)?;
        } else {
            files.insert(path, std::fs::read(entry.path())?);
        }
    }
    Ok(())
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn description(&self) -> &'static str {
        "in memory with scripted commands, for tests"
    }

    async fn available(&self) -> Result<(), String> {
        match &self.state().unavailable {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    async fn create(
        &self,
        ws: &Workspace,
        from_cache: Option<&str>,
    ) -> Result<serde_json::Value, RuntimeError> {
        self.record(format!("create {} {}", ws.id, from_cache.unwrap_or("-")));
        let mut state = self.state();
        if let Some(message) = &state.failing_create {
            return Err(RuntimeError::Other(message.clone()));
        }
        let files = match from_cache {
            Some(key) => state
                .cache
                .get(key)
                .cloned()
                .ok_or_else(|| RuntimeError::Other(format!("no cache entry {key}")))?,
            None => Files::new(),
        };
        state.workspaces.insert(ws.id.to_string(), files);
        Ok(serde_json::json!({ "fake": true }))
    }

    fn host_path(&self, _ws: &Workspace) -> Option<PathBuf> {
        None
    }

    async fn import(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        self.record(format!("import {} {dest}", ws.id));
        let mut imported = Files::new();
        read_tree(host_dir, dest, &mut imported)
            .map_err(|e| RuntimeError::io(format!("read {}", host_dir.display()), e))?;
        self.with_files(ws, |files| {
            files.extend(imported);
            Ok(())
        })
    }

    async fn start(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError> {
        self.record(format!("start {}", ws.id));
        self.with_files(ws, |_| Ok(()))?;
        Ok(ws.runtime_info.clone())
    }

    async fn stop(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        self.record(format!("stop {}", ws.id));
        Ok(())
    }

    async fn remove(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        self.record(format!("remove {}", ws.id));
        self.state().workspaces.remove(ws.id.as_str());
        Ok(())
    }

    async fn exists(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        Ok(self.state().workspaces.contains_key(ws.id.as_str()))
    }

    fn isolation(&self, _ws: &Workspace) -> Isolation {
        Isolation {
            isolated: false,
            network: "none".into(),
            notes: vec!["fake runtime: nothing runs".into()],
            ..Isolation::default()
        }
    }

    async fn exec(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        let command = request.command.display();
        self.record(format!("exec {} {command}", ws.id));
        self.with_files(ws, |_| Ok(()))?;
        let behaviour = self
            .state()
            .behaviours
            .iter()
            .rev()
            .find(|(prefix, _)| command.starts_with(prefix.as_str()))
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| {
                Behaviour::fail(format!("fake: no behaviour for `{command}`\n"), 127)
            });
        let (events, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let exit = match behaviour {
                Behaviour::Exit {
                    stdout,
                    stderr,
                    code,
                } => {
                    if !stdout.is_empty() {
                        let _ = events
                            .send(ExecEvent::output(
                                berth_core::Stream::Stdout,
                                stdout.into_bytes(),
                            ))
                            .await;
                    }
                    if !stderr.is_empty() {
                        let _ = events
                            .send(ExecEvent::output(
                                berth_core::Stream::Stderr,
                                stderr.into_bytes(),
                            ))
                            .await;
                    }
                    ExitStatus {
                        code: Some(code),
                        ..ExitStatus::default()
                    }
                }
                Behaviour::Hang { stdout } => {
                    let _ = events
                        .send(ExecEvent::output(
                            berth_core::Stream::Stdout,
                            stdout.into_bytes(),
                        ))
                        .await;
                    let timeout = async {
                        match request.timeout_ms {
                            Some(ms) => {
                                tokio::time::sleep(std::time::Duration::from_millis(ms)).await
                            }
                            None => std::future::pending().await,
                        }
                    };
                    let timed_out = tokio::select! {
                        () = cancel.cancelled() => false,
                        () = events.closed() => false,
                        () = timeout => true,
                    };
                    ExitStatus {
                        signal: Some(15),
                        timed_out,
                        cancelled: !timed_out,
                        ..ExitStatus::default()
                    }
                }
            };
            let _ = events.send(ExecEvent::Exit(exit)).await;
        });
        Ok(receiver)
    }

    async fn read_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<ReadStream, RuntimeError> {
        self.with_files(ws, |files| {
            files
                .get(path)
                .cloned()
                .map(ReadStream::from)
                .ok_or_else(|| RuntimeError::NotFound(path.to_string()))
        })
    }

    async fn write_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        self.with_files(ws, |files| {
            files.insert(path.clone(), data);
            Ok(())
        })
    }

    async fn list_files(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError> {
        self.with_files(ws, |files| {
            let mut entries: BTreeMap<String, FileEntry> = BTreeMap::new();
            for (path, data) in files.iter() {
                if !path.starts_with(dir) || path == dir {
                    continue;
                }
                let rest: Vec<&str> = path.components().skip(dir.components().count()).collect();
                let child = dir.join(&WorkspacePath::parse(rest[0]).map_err(RuntimeError::Path)?);
                let (kind, size) = if rest.len() == 1 {
                    (FileKind::File, data.len() as u64)
                } else {
                    (FileKind::Dir, 0)
                };
                entries.entry(child.to_string()).or_insert(FileEntry {
                    path: child.to_string(),
                    path_bytes: None,
                    kind,
                    size,
                    mode: if kind == FileKind::Dir { 0o755 } else { 0o644 },
                    modified: 0,
                });
            }
            if entries.is_empty() && !dir.is_root() {
                return Err(RuntimeError::NotFound(dir.to_string()));
            }
            Ok(entries.into_values().collect())
        })
    }

    async fn remove_file(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError> {
        self.with_files(ws, |files| {
            let before = files.len();
            files.retain(|p, _| !p.starts_with(path));
            if files.len() == before {
                return Err(RuntimeError::NotFound(path.to_string()));
            }
            Ok(())
        })
    }

    async fn save_cache(&self, ws: &Workspace, key: &str) -> Result<(), RuntimeError> {
        self.record(format!("save_cache {} {key}", ws.id));
        let files = self.with_files(ws, |files| Ok(files.clone()))?;
        self.state().cache.insert(key.into(), files);
        Ok(())
    }

    async fn has_cache(&self, key: &str) -> bool {
        self.state().cache.contains_key(key)
    }

    async fn remove_cache(&self, key: &str) -> Result<(), RuntimeError> {
        self.record(format!("remove_cache {key}"));
        self.state().cache.remove(key);
        Ok(())
    }

    /// The bytes of the entry's files.
    async fn cache_size(&self, key: &str) -> Result<Option<u64>, RuntimeError> {
        Ok(self
            .state()
            .cache
            .get(key)
            .map(|files| files.values().map(|data| data.len() as u64).sum()))
    }
}
