//! File operations, through `berth-files`, which refuses every path that
//! would lead outside the workspace root (`..`, symlinks out, `/proc`
//! magic links). Its calls block, so they run on the blocking pool.

use crate::Agent;
use crate::server::{Control, Controls, Outbox};
use berth_files::FilesError;
use berth_proto::{
    AgentMessage, ClientMessage, ErrorBody, ErrorCode, READ_CHUNK, READ_WINDOW, WorkspacePath,
};
use std::io::Read;
use std::sync::Arc;

/// Streams a file in chunks, never more than [`READ_WINDOW`] of them
/// unacknowledged, so neither side holds more than a few chunks whatever
/// the file's size.
pub async fn read(agent: &Arc<Agent>, path: WorkspacePath, mut controls: Controls, out: Outbox) {
    let root = agent.files.clone();
    let asked = path.clone();
    let opened = tokio::task::spawn_blocking(move || root.open_file(&asked)).await;
    let mut file = match opened {
        Ok(Ok(file)) => file,
        Ok(Err(err)) => {
            out.message(AgentMessage::Error(error_body(&err))).await;
            return;
        }
        Err(join) => {
            out.error(ErrorCode::Io, format!("file operation failed: {join}"))
                .await;
            return;
        }
    };
    let mut unacknowledged = 0;
    loop {
        // Acknowledgements that came meanwhile, then wait while the window
        // is full; a cancel or a client gone ends the read.
        loop {
            let control = if unacknowledged < READ_WINDOW {
                match controls.try_recv() {
                    Ok(control) => Some(control),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                }
            } else {
                controls.recv().await
            };
            match control {
                Some(Control::Ack) => unacknowledged = unacknowledged.saturating_sub(1),
                Some(Control::Cancel) | None => return,
                Some(_) => {}
            }
        }
        let chunk = tokio::task::spawn_blocking(move || {
            let mut chunk = vec![0; READ_CHUNK];
            let read = fill(&mut file, &mut chunk);
            read.map(|n| {
                chunk.truncate(n);
                (file, chunk)
            })
        })
        .await;
        let chunk = match chunk {
            Ok(Ok((back, chunk))) => {
                file = back;
                chunk
            }
            Ok(Err(e)) => {
                let message = format!("cannot read `{path}`: {e}");
                out.message(AgentMessage::path_error(ErrorCode::Io, &path, message))
                    .await;
                return;
            }
            Err(join) => {
                out.error(ErrorCode::Io, format!("file operation failed: {join}"))
                    .await;
                return;
            }
        };
        // A short chunk is the end of the file; a full one may be followed
        // by an empty last one.
        let last = chunk.len() < READ_CHUNK;
        if !out.send(AgentMessage::Data { last }, &chunk).await || last {
            return;
        }
        unacknowledged += 1;
    }
}

/// Reads into `buf` until it is full or the file ends.
fn fill(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub async fn run(agent: &Arc<Agent>, message: ClientMessage, payload: Vec<u8>, out: Outbox) {
    let root = agent.files.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<AgentMessage, FilesError> {
        Ok(match message {
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
                AgentMessage::Done
            }
            ClientMessage::ListDir { path } => AgentMessage::Entries {
                entries: root.list(&path)?,
            },
            ClientMessage::Stat { path } => AgentMessage::Entry {
                entry: root.stat(&path)?,
            },
            ClientMessage::Remove { path } => {
                root.remove(&path)?;
                AgentMessage::Done
            }
            ClientMessage::Mkdir { path } => {
                root.mkdir(&path)?;
                AgentMessage::Done
            }
            ClientMessage::Rename { from, to } => {
                root.rename(&from, &to)?;
                AgentMessage::Done
            }
            other => AgentMessage::error(
                ErrorCode::BadRequest,
                format!("`{}` cannot start an operation", message_name(&other)),
            ),
        })
    })
    .await;
    match answer {
        Ok(Ok(message)) => {
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
