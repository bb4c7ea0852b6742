//! The `watch` operation: changes under a directory, streamed from inotify
//! until the client cancels.

use crate::Agent;
use crate::server::{Control, Controls, Outbox};
use berth_proto::{AgentMessage, ErrorCode, WatchEvent, WatchKind, WorkspacePath};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;

const FLAGS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ONLYDIR);

struct Watcher {
    fd: AsyncFd<OwnedFd>,
    /// Watch descriptor to the directory it watches.
    dirs: HashMap<i32, WorkspacePath>,
    root: std::path::PathBuf,
    recursive: bool,
}

impl Watcher {
    /// Watches `dir` and, when recursive, every directory below it.
    fn add(&mut self, dir: &WorkspacePath) -> std::io::Result<()> {
        let wd = inotify::add_watch(self.fd.get_ref(), dir.under(&self.root), FLAGS)?;
        self.dirs.insert(wd, dir.clone());
        if self.recursive {
            for entry in std::fs::read_dir(dir.under(&self.root))?.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(child) = entry
                        .file_name()
                        .to_str()
                        .and_then(|n| WorkspacePath::parse(n).ok())
                {
                    // A directory that vanished meanwhile is no error.
                    let _ = self.add(&dir.join(&child));
                }
            }
        }
        Ok(())
    }
}

pub async fn run(
    agent: &Arc<Agent>,
    path: WorkspacePath,
    recursive: bool,
    mut controls: Controls,
    out: Outbox,
) {
    if let Err((code, message)) = agent.workdir(Some(path.as_str())) {
        out.error(code, message).await;
        return;
    }
    let fd = match inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
        .map_err(std::io::Error::from)
        .and_then(crate::fdio::register)
    {
        Ok(fd) => fd,
        Err(e) => {
            out.error(
                ErrorCode::Unsupported,
                format!("cannot watch `{path}`: {e}"),
            )
            .await;
            return;
        }
    };
    let mut watcher = Watcher {
        fd,
        dirs: HashMap::new(),
        root: agent.root.clone(),
        recursive,
    };
    if let Err(e) = watcher.add(&path) {
        out.error(ErrorCode::Io, format!("cannot watch `{path}`: {e}"))
            .await;
        return;
    }
    out.message(AgentMessage::Ready).await;
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
    loop {
        tokio::select! {
            events = read_events(&watcher, &mut buf) => match events {
                Ok(events) => {
                    for event in events {
                        if event.dir && event.kind == WatchKind::Created && watcher.recursive {
                            let _ = watcher.add(&event.path);
                        }
                        if !out.message(AgentMessage::Changed { event }).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    out.error(ErrorCode::Io, format!("watching `{path}`: {e}")).await;
                    return;
                }
            },
            control = controls.recv() => match control {
                Some(Control::Cancel) | None => break,
                Some(_) => {}
            },
            () = agent.shutdown.cancelled() => break,
        }
    }
    out.message(AgentMessage::Done).await;
}

/// Waits for and decodes the next batch of events.
async fn read_events(
    watcher: &Watcher,
    buf: &mut [MaybeUninit<u8>],
) -> std::io::Result<Vec<WatchEvent>> {
    loop {
        let mut guard = watcher.fd.readable().await?;
        let result = guard.try_io(|fd| {
            let mut reader = inotify::Reader::new(fd.get_ref(), buf);
            let mut events = Vec::new();
            loop {
                match reader.next() {
                    Ok(event) => {
                        if let Some(event) = translate(watcher, &event) {
                            events.push(event);
                        }
                        if reader.is_buffer_empty() {
                            return Ok(events);
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) if !events.is_empty() => return Ok(events),
                    Err(e) => return Err(e.into()),
                }
            }
        });
        match result {
            Ok(Ok(events)) if events.is_empty() => continue,
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

fn translate(watcher: &Watcher, event: &inotify::Event<'_>) -> Option<WatchEvent> {
    let flags = event.events();
    let dir_path = watcher.dirs.get(&event.wd());
    if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
        return Some(WatchEvent {
            path: dir_path.cloned().unwrap_or_else(WorkspacePath::root),
            kind: WatchKind::Overflow,
            dir: true,
        });
    }
    let dir_path = dir_path?;
    let name = event.file_name()?.to_str().ok()?;
    let path = dir_path.join(&WorkspacePath::parse(name).ok()?);
    let kind = if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
        WatchKind::Created
    } else if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
        WatchKind::Removed
    } else if flags.intersects(ReadFlags::MODIFY | ReadFlags::ATTRIB | ReadFlags::CLOSE_WRITE) {
        WatchKind::Modified
    } else {
        return None;
    };
    Some(WatchEvent {
        path,
        kind,
        dir: flags.contains(ReadFlags::ISDIR),
    })
}
