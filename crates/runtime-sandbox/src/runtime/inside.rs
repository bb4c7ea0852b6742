//! Workspaces without an agent (the runtime's own tests run it so): each
//! command is run by the stage-1 init joining the workspace's namespaces,
//! and files are handled by commands inside (`cat`, `find`, `rm`).

use super::{Inner, SandboxRuntime};
use berth_core::{
    ExecRequest, ExecStream, FileEntry, FileKind, ReadStream, Runtime, RuntimeError, Workspace,
    WorkspacePath,
};
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Inner {
    /// Runs a command by the stage-1 init joining the workspace's
    /// namespaces, for workspaces without an agent.
    pub(super) fn exec_by_init(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        let id = ws.id.to_string();
        let state = self.load(&id)?;
        let init = self.running(&state).ok_or_else(|| RuntimeError::Gone {
            id: id.clone(),
            detail: "it is not running".into(),
        })?;
        let cwd = inside_path(
            ws,
            &WorkspacePath::parse(request.cwd.as_deref().unwrap_or_default())?,
        );
        let mut argv = vec![self.config.init_program.display().to_string()];
        argv.extend(self.config.init_args.iter().cloned());
        argv.extend([
            "exec".into(),
            self.config_path(&id, init.instance).display().to_string(),
            init.pid.to_string(),
            cwd,
            "--".into(),
        ]);
        argv.extend(request.command.to_argv());
        let mut env = self.base_env(ws);
        for (key, value) in request.env {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        let running = berth_exec::spawn(
            berth_exec::Spawn {
                argv,
                cwd: PathBuf::from("/"),
                env,
                stdin: match request.stdin {
                    Some(bytes) => berth_exec::Stdin::Bytes(bytes),
                    None => berth_exec::Stdin::Null,
                },
                timeout: request.timeout_ms.map(Duration::from_millis),
                output_limit: request.output_limit,
                grace: berth_exec::DEFAULT_GRACE,
                cgroup: None,
                nice: None,
            },
            cancel,
        )
        .map_err(|e| RuntimeError::Spawn {
            command: request.command.display(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(running.events)
    }
}

impl SandboxRuntime {
    /// Runs a command inside and collects its output (for file operations).
    async fn run_inside(
        &self,
        ws: &Workspace,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), RuntimeError> {
        let mut request = ExecRequest::new(berth_core::Command::Argv(argv));
        request.stdin = stdin;
        let mut events = self.exec(ws, request, CancellationToken::new()).await?;
        let done = berth_core::output::collect(&mut events).await?;
        Ok((done.exit.code.unwrap_or(-1), done.stdout, done.stderr))
    }

    pub(super) async fn read_by_command(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<ReadStream, RuntimeError> {
        let inside = inside_path(ws, path);
        let (code, out, err) = self
            .run_inside(ws, vec!["cat".into(), "--".into(), inside], None)
            .await?;
        match code {
            0 => Ok(ReadStream::from(out)),
            _ => Err(file_error(path, &err)),
        }
    }

    pub(super) async fn write_by_command(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        let inside = inside_path(ws, path);
        let script = "mkdir -p -- \"$(dirname -- \"$1\")\" && cat > \"$1\"";
        let argv = vec!["sh".into(), "-c".into(), script.into(), "sh".into(), inside];
        let (code, _, err) = self.run_inside(ws, argv, Some(data)).await?;
        match code {
            0 => Ok(()),
            _ => Err(file_error(path, &err)),
        }
    }

    pub(super) async fn list_by_command(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError> {
        let inside = inside_path(ws, dir);
        let argv = vec![
            "find".into(),
            inside,
            "-mindepth".into(),
            "1".into(),
            "-maxdepth".into(),
            "1".into(),
            "-printf".into(),
            "%y %s %m %T@ %f\\0".into(),
        ];
        let (code, out, err) = self.run_inside(ws, argv, None).await?;
        if code != 0 {
            return Err(file_error(dir, &err));
        }
        let mut entries = Vec::new();
        for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            // Four fields, then the name: the rest of the record, whatever
            // its bytes.
            let mut parts = record.splitn(5, |b| *b == b' ');
            let (Some(kind), Some(size), Some(mode), Some(time), Some(name)) = (
                parts.next().map(String::from_utf8_lossy),
                parts.next().map(String::from_utf8_lossy),
                parts.next().map(String::from_utf8_lossy),
                parts.next().map(String::from_utf8_lossy),
                parts.next(),
            ) else {
                continue;
            };
            let raw = if dir.as_str().is_empty() {
                name.to_vec()
            } else {
                [dir.as_str().as_bytes(), b"/", name].concat()
            };
            let (path, path_bytes) = berth_core::proto::exact_path(&raw);
            entries.push(FileEntry {
                path,
                path_bytes,
                kind: match kind.as_ref() {
                    "f" => FileKind::File,
                    "d" => FileKind::Dir,
                    "l" => FileKind::Symlink,
                    _ => FileKind::Other,
                },
                size: size.parse().unwrap_or(0),
                mode: u32::from_str_radix(&mode, 8).unwrap_or(0),
                modified: time
                    .split('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            });
        }
        entries.sort_by(|a, b| a.raw_path().cmp(&b.raw_path()));
        Ok(entries)
    }

    pub(super) async fn remove_by_command(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        if path.as_str().is_empty() {
            return Err(RuntimeError::WrongKind {
                path: String::new(),
                problem: "the workspace root, which cannot be removed",
            });
        }
        let inside = inside_path(ws, path);
        let argv = vec![
            "sh".into(),
            "-c".into(),
            "test -e \"$1\" -o -L \"$1\" && rm -rf -- \"$1\"".into(),
            "sh".into(),
            inside,
        ];
        let (code, _, err) = self.run_inside(ws, argv, None).await?;
        match code {
            0 => Ok(()),
            _ if err.is_empty() => Err(RuntimeError::NotFound(path.as_str().to_string())),
            _ => Err(file_error(path, &err)),
        }
    }
}

/// The absolute path inside of a path of workspace `ws`.
fn inside_path(ws: &Workspace, path: &WorkspacePath) -> String {
    match (ws.spec.root(), path.as_str()) {
        (root, "") => root.to_string(),
        ("/", rel) => format!("/{rel}"),
        (root, rel) => format!("{root}/{rel}"),
    }
}

fn file_error(path: &WorkspacePath, stderr: &[u8]) -> RuntimeError {
    let text = String::from_utf8_lossy(stderr);
    if text.contains("No such file") {
        RuntimeError::NotFound(path.as_str().to_string())
    } else if text.contains("Is a directory") {
        RuntimeError::WrongKind {
            path: path.as_str().to_string(),
            problem: "a directory",
        }
    } else if text.contains("Not a directory") {
        RuntimeError::WrongKind {
            path: path.as_str().to_string(),
            problem: "not a directory",
        }
    } else {
        RuntimeError::Other(format!("`{}`: {}", path.as_str(), text.trim()))
    }
}
