//! File operations, through `berth-files`, which refuses every path that
//! would lead outside the workspace root (`..`, symlinks out, `/proc`
//! magic links). Its calls block, so they run on the blocking pool.

use crate::Agent;
use crate::server::Outbox;
use berth_files::FilesError;
use berth_proto::frame::MAX_PAYLOAD;
use berth_proto::{AgentMessage, ClientMessage, ErrorBody, ErrorCode, WorkspacePath};
use std::sync::Arc;

pub async fn run(agent: &Arc<Agent>, message: ClientMessage, payload: Vec<u8>, out: Outbox) {
    let root = agent.files.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Answer, FilesError> {
        Ok(match message {
            ClientMessage::ReadFile { path } => Answer::Data(root.read(&path)?),
            ClientMessage::WriteFile { path, append, mode } => {
                let data = if append {
                    // Appending is how clients send a file larger than one
                    // frame; the earlier parts are read back and rewritten
                    // because the confined file API writes whole files.
                    let mut data = match root.read(&path) {
                        Ok(data) => data,
                        Err(FilesError::NotFound(_)) => Vec::new(),
                        Err(e) => return Err(e),
                    };
                    data.extend_from_slice(&payload);
                    data
                } else {
                    payload
                };
                match mode {
                    Some(mode) => root.write_with_mode(&path, &data, mode)?,
                    None => root.write(&path, &data)?,
                }
                Answer::Message(AgentMessage::Done)
            }
            ClientMessage::ListDir { path } => Answer::Message(AgentMessage::Entries {
                entries: root.list(&path)?,
            }),
            ClientMessage::Stat { path } => Answer::Message(AgentMessage::Entry {
                entry: root.stat(&path)?,
            }),
            ClientMessage::Remove { path } => {
                root.remove(&path)?;
                Answer::Message(AgentMessage::Done)
            }
            ClientMessage::Mkdir { path } => {
                root.mkdir(&path)?;
                Answer::Message(AgentMessage::Done)
            }
            ClientMessage::Rename { from, to } => {
                root.rename(&from, &to)?;
                Answer::Message(AgentMessage::Done)
            }
            other => Answer::Message(AgentMessage::error(
                ErrorCode::BadRequest,
                format!("`{}` cannot start an operation", message_name(&other)),
            )),
        })
    })
    .await;
    match answer {
        Ok(Ok(Answer::Data(data))) => {
            let mut chunks = data.chunks(MAX_PAYLOAD).peekable();
            if chunks.peek().is_none() {
                out.send(AgentMessage::Data { last: true }, &[]).await;
            }
            while let Some(chunk) = chunks.next() {
                let last = chunks.peek().is_none();
                if !out.send(AgentMessage::Data { last }, chunk).await {
                    return;
                }
            }
        }
        Ok(Ok(Answer::Message(message))) => {
            out.message(message).await;
        }
        Ok(Err(err)) => {
            out.message(AgentMessage::Error(error_body(&err))).await;
        }
        Err(join) => {
            out.error(ErrorCode::Io, format!("file operation failed: {join}"))
                .await;
        }
    }
}

enum Answer {
    Data(Vec<u8>),
    Message(AgentMessage),
}

fn message_name(message: &ClientMessage) -> String {
    serde_json::to_value(message)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(String::from))
        .unwrap_or_default()
}

/// The wire form of a file error: a stable code and the path it is about.
pub fn error_body(err: &FilesError) -> ErrorBody {
    let (code, path) = match err {
        FilesError::NotFound(p) => (ErrorCode::NotFound, Some(p)),
        FilesError::Escapes(p) | FilesError::SymlinkLoop(p) => (ErrorCode::Escapes, Some(p)),
        FilesError::NotADirectory(p) | FilesError::IsADirectory(p) | FilesError::NotAFile(p) => {
            (ErrorCode::WrongKind, Some(p))
        }
        FilesError::AlreadyExists(p) => (ErrorCode::AlreadyExists, Some(p)),
        FilesError::Root(_) => (ErrorCode::BadRequest, None),
        FilesError::Changed(p) => (ErrorCode::Io, Some(p)),
        FilesError::Rename { from, source, .. } => (io_code(source), Some(from)),
        FilesError::Io { path, source, .. } => (io_code(source), Some(path)),
        FilesError::OpenRoot { source, .. } => (io_code(source), None),
    };
    ErrorBody {
        code,
        message: err.to_string(),
        path: path.cloned(),
    }
}

fn io_code(err: &std::io::Error) -> ErrorCode {
    match err.kind() {
        // A read-only mount forbids a write as surely as a file's mode.
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            ErrorCode::PermissionDenied
        }
        std::io::ErrorKind::NotFound => ErrorCode::NotFound,
        _ => ErrorCode::Io,
    }
}

/// A working directory through the confined resolution.
pub fn workdir(agent: &Agent, cwd: Option<&str>) -> Result<std::path::PathBuf, ErrorBody> {
    let rel = WorkspacePath::parse(cwd.unwrap_or("")).map_err(|e| ErrorBody {
        code: ErrorCode::Escapes,
        message: format!("cwd: {e}"),
        path: cwd.map(String::from),
    })?;
    agent.files.resolve_dir(&rel).map_err(|e| error_body(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn writes_a_mount_or_a_mode_forbids_are_refusals_not_failures() {
        for kind in [ErrorKind::PermissionDenied, ErrorKind::ReadOnlyFilesystem] {
            assert_eq!(
                io_code(&kind.into()),
                ErrorCode::PermissionDenied,
                "{kind:?}"
            );
        }
        assert_eq!(io_code(&ErrorKind::NotFound.into()), ErrorCode::NotFound);
        assert_eq!(io_code(&ErrorKind::StorageFull.into()), ErrorCode::Io);
    }
}
