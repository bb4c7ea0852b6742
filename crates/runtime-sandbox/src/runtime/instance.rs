//! Instances: each start launches the stage-1 init on the workspace's
//! stack with cgroups, an overlay work directory and an init config of its
//! own, and each stop kills one and tears down what it leaves
//! ([`Teardown`]), in the background when nothing waits for it.

use super::state::{Init, State, start_time};
use super::{Inner, KILL_PATIENCE, NAME, START_TIMEOUT, io_err, other};
use crate::cgroup;
use crate::plan::{self, BERTH_DIR, Dirs, PlanInput};
use berth_core::{RuntimeError, Workspace};
use berth_layers::{LayerId, tree};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Kills an instance: killing a PID namespace's init kills everything in
/// it.
pub(super) fn kill(init: Init) {
    if init.alive()
        && let Some(pid) = rustix::process::Pid::from_raw(init.pid as i32)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Blocks until `path` exists, at most `patience`, or until the process
/// behind the pidfd `unless` ends (then `Ok(false)`): woken by inotify when
/// an entry appears in its directory rather than by polling, so that a
/// start is not rounded up to a timer's tick. Returns the inotify instance
/// too, for the caller to close when it has passed the answer on.
fn wait_for_entry(
    path: &Path,
    unless: Option<&OwnedFd>,
    patience: Duration,
) -> (Result<bool, RuntimeError>, Option<OwnedFd>) {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let dir = path.parent().unwrap_or(Path::new("/"));
    let watched = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).and_then(|fd| {
        inotify::add_watch(&fd, dir, WatchFlags::CREATE | WatchFlags::MOVED_TO)?;
        Ok(fd)
    });
    match watched {
        Ok(events) => (wait_with(&events, unless, path, patience), Some(events)),
        Err(e) => (
            Err(RuntimeError::io(
                format!("cannot watch `{}`", dir.display()),
                e.into(),
            )),
            None,
        ),
    }
}

fn wait_with(
    events: &OwnedFd,
    unless: Option<&OwnedFd>,
    path: &Path,
    patience: Duration,
) -> Result<bool, RuntimeError> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = std::time::Instant::now() + patience;
    // Checked after the watch is set, so that no creation is missed.
    while !path.exists() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(other(format!(
                "`{}` did not appear within {patience:?}",
                path.display()
            )));
        }
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut ready = vec![PollFd::new(events, PollFlags::IN)];
        ready.extend(unless.map(|fd| PollFd::new(fd, PollFlags::IN)));
        match poll(&mut ready, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(RuntimeError::io(
                    "cannot wait for the agent's socket",
                    e.into(),
                ));
            }
        }
        if ready.get(1).is_some_and(|fd| !fd.revents().is_empty()) {
            return Ok(path.exists());
        }
        // The events only say that something appeared; the loop looks.
        let mut buf = [0u8; 1024];
        while rustix::io::read(events, &mut buf).is_ok() {}
    }
    Ok(true)
}

/// The last few KiB of a log the workspace's processes also write to, so
/// the log's size does not matter.
fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 4096;
    let mut tail = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file
            .seek(SeekFrom::Start(len.saturating_sub(TAIL)))
            .and_then(|_| file.take(TAIL).read_to_end(&mut tail));
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// What is left of killed instances: their cgroups to empty and remove,
/// their inits to see reaped (an init leaves its PID namespace, and the
/// overlay with it, only then), and their work directories and configs.
pub(super) struct Teardown {
    pub(super) cgroups: Vec<cgroup::Cgroups>,
    pub(super) inits: Vec<Init>,
    pub(super) paths: Vec<PathBuf>,
}

impl Teardown {
    pub(super) fn run(self) -> Result<(), RuntimeError> {
        for cgroups in &self.cgroups {
            cgroup::kill_and_remove(cgroups, KILL_PATIENCE).map_err(other)?;
        }
        let deadline = std::time::Instant::now() + KILL_PATIENCE;
        for init in &self.inits {
            while init.alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for path in &self.paths {
            let _ = match fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => tree::remove_tree(path),
                _ => fs::remove_file(path),
            };
        }
        Ok(())
    }
}

impl Inner {
    /// Finishes a teardown in the background: the processes are already
    /// killed, and the next instance uses fresh names.
    pub(super) fn finish_in_background(&self, teardown: Teardown) {
        self.in_background(move || {
            if let Err(e) = teardown.run() {
                tracing::warn!(error = %e, "cannot tear a sandbox instance down");
            }
        });
    }

    pub(super) fn check_mechanisms(&self) -> Result<(), RuntimeError> {
        if self.config.accept_weaker {
            return Ok(());
        }
        let refuse = |reason: String| RuntimeError::Unavailable {
            runtime: NAME.into(),
            reason: format!(
                "{reason}; set BERTH_SANDBOX_ACCEPT_WEAKER=1 to run with weaker isolation"
            ),
        };
        if let Err(reason) = &self.cgroups {
            return Err(refuse(reason.clone()));
        }
        if self.config.id_map.is_none() {
            return Err(refuse("no user namespace id range is configured".into()));
        }
        let max = fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
        if max.trim() == "0" {
            return Err(refuse(
                "user namespaces are disabled (user.max_user_namespaces = 0)".into(),
            ));
        }
        Ok(())
    }

    /// Starts the workspace on its stack, unless it is running. A standby
    /// left by an interrupted reset is ended first.
    pub(super) async fn start_locked(&self, ws: &Workspace) -> Result<State, RuntimeError> {
        let id = ws.id.to_string();
        let mut state = self.load(&id)?;
        if self.running(&state).is_some() {
            return Ok(state);
        }
        self.check_mechanisms()?;
        if let Some(standby) = state.standby.take() {
            self.finish_in_background(self.end_instance(&id, standby.init));
            self.discard_standby_dirs(&id)?;
        }
        let dirs = self.dirs(&id);
        if !dirs.upper.exists() {
            // A reset interrupted between dropping and remaking it.
            self.fresh_upper(&dirs, ws.spec.root())?;
        }
        state.instance += 1;
        let stack = state.stack.clone();
        let init = self
            .launch(ws, &state, &stack, state.instance, dirs)
            .await?;
        state.init = Some(init);
        self.save(&state)?;
        Ok(state)
    }

    /// Starts instance `instance` of the workspace on `stack`, over the
    /// upper and run directories of `dirs`: its cgroups, its init config
    /// and the stage-1 init. Returns once the init has reported and, with
    /// an agent, the agent's socket is there.
    pub(super) async fn launch(
        &self,
        ws: &Workspace,
        state: &State,
        stack: &[LayerId],
        instance: u64,
        dirs: Dirs,
    ) -> Result<Init, RuntimeError> {
        let id = ws.id.to_string();
        let dirs = Dirs {
            work: self.work_dir(&id, instance),
            ..dirs
        };
        let cgroups = match &self.cgroups {
            Ok(layout) => Some(
                layout
                    .create(&self.cgroup_name(&id, instance), state.limits)
                    .map_err(other)?,
            ),
            Err(_) => None,
        };
        let delegate_cgroup = match (&self.cgroups, &cgroups) {
            (Ok(layout), Some(made)) if self.commands_have_cgroups() => {
                if let Some(map) = self.config.id_map {
                    layout.delegate(made, map.host, map.host).map_err(other)?;
                }
                Some("--cgroup-fd".to_string())
            }
            _ => None,
        };
        let mut programs = vec![self.config.init_program.clone()];
        let command = match &self.config.agent_program {
            Some(agent) => {
                programs.push(agent.clone());
                vec![
                    plan::program_inside(agent),
                    "--socket".into(),
                    format!("/{BERTH_DIR}/run/agent.sock"),
                    "--root".into(),
                    ws.spec.root().into(),
                ]
            }
            None => {
                let mut reap = vec![plan::program_inside(&self.config.init_program)];
                reap.extend(self.config.init_args.iter().cloned());
                reap.push("reap".into());
                reap
            }
        };
        let lowers = self.store.trees_top_first(stack);
        let config = plan::plan(&PlanInput {
            dirs: &dirs,
            lowers,
            host_base: state.host_base.then_some(&self.host),
            id_map: self.config.id_map,
            private_network: state.private_network,
            hostname: format!("ws-{}", &id[id.len().saturating_sub(8)..]),
            cgroups: cgroups.as_ref(),
            shm_size: self.shm_size(state),
            tmp_size: self.tmp_tmpfs(state),
            seccomp: true,
            delegate_cgroup,
            home: Some(&self.config.home),
            programs,
            command,
            env: self.base_env(ws),
            root: ws.spec.root().into(),
        });
        let config_path = self.config_path(&id, instance);
        fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).map_err(other)?,
        )
        .map_err(io_err(format!("cannot write `{}`", config_path.display())))?;
        tree::remove_tree(&dirs.work).map_err(io_err("cannot clear the overlay work directory"))?;
        fs::create_dir_all(&dirs.work)
            .map_err(io_err("cannot create the overlay work directory"))?;

        let log = fs::File::create(self.ws_dir(&id).join("init.log"))
            .map_err(io_err("cannot create the init log"))?;
        let mut child = tokio::process::Command::new(&self.config.init_program)
            .args(&self.config.init_args)
            .arg("start")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                command: self.config.init_program.display().to_string(),
                source,
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| other("the init has no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| {
                other(format!(
                    "workspace {id}: the init did not report within {START_TIMEOUT:?}"
                ))
            })?
            .map_err(io_err("cannot read the init's report"))?
            .unwrap_or_default();
        let started = line
            .strip_prefix("started ")
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        let Some(pid) = started else {
            self.remove_cgroups(cgroups);
            let reason = line.strip_prefix("failed: ").unwrap_or(&line).to_string();
            return Err(RuntimeError::Unavailable {
                runtime: NAME.into(),
                reason: format!("workspace {id} did not start: {reason}"),
            });
        };
        let Some(start_time) = start_time(pid) else {
            // Its stage-1 process ends right after it.
            let _ = child.wait().await;
            let error = self.ended_as_started(&id, cgroups.as_ref(), state.limits);
            self.remove_cgroups(cgroups);
            return Err(error);
        };
        let init = Init {
            pid,
            start_time,
            instance,
        };
        if self.config.agent_program.is_some() {
            // The stage-1 process ends when the workspace's init does: a
            // workspace that dies while its agent starts says so at once,
            // and why.
            let stage1 = child
                .id()
                .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
                .and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
                });
            let failed = match self
                .wait_for_socket(&dirs.run.join("agent.sock"), stage1)
                .await
            {
                Ok(true) => None,
                Ok(false) => {
                    // Already ended: this only reaps it.
                    let _ = child.wait().await;
                    Some(self.ended_as_started(&id, cgroups.as_ref(), state.limits))
                }
                Err(e) => Some(e),
            };
            if let Some(error) = failed {
                self.finish_in_background(self.end_instance(&id, init));
                return Err(error);
            }
        }
        // The init stays as the workspace's parent; tokio reaps it when it
        // ends, whoever ends it.
        drop(child);
        Ok(init)
    }

    /// Waits until the agent has made its socket (`Ok(true)`), or until the
    /// process behind the pidfd `unless` ends (`Ok(false)`).
    async fn wait_for_socket(
        &self,
        socket: &Path,
        unless: Option<OwnedFd>,
    ) -> Result<bool, RuntimeError> {
        let socket = socket.to_path_buf();
        let (reply, answer) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let (waited, watch) = wait_for_entry(&socket, unless.as_ref(), START_TIMEOUT);
            let _ = reply.send(waited);
            // Closing an inotify instance waits for an SRCU grace period,
            // which takes milliseconds: the start does not wait for it.
            drop(watch);
        });
        answer.await.map_err(other)?
    }

    /// The error of an instance that ended as it started, with why: the
    /// memory limit when the kernel's OOM killer ended some of it, else
    /// what its init wrote last.
    fn ended_as_started(
        &self,
        id: &str,
        cgroups: Option<&cgroup::Cgroups>,
        limits: cgroup::Limits,
    ) -> RuntimeError {
        let why = match (&self.cgroups, cgroups, limits.memory) {
            (Ok(layout), Some(cgroups), Some(memory)) if layout.oom_kills(cgroups) > 0 => format!(
                "it ran out of memory under its limit of {} (limits.memory)",
                berth_core::spec::format_bytes(memory)
            ),
            _ => {
                let log = log_tail(&self.ws_dir(id).join("init.log"));
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                match lines.len() {
                    0 => "it ended, saying nothing".into(),
                    n => format!("it ended: {}", lines[n.saturating_sub(5)..].join("; ")),
                }
            }
        };
        RuntimeError::Unavailable {
            runtime: NAME.into(),
            reason: format!("workspace {id} did not start: {why}"),
        }
    }

    /// Empties and removes the cgroups of an instance that did not start,
    /// in the background.
    fn remove_cgroups(&self, cgroups: Option<cgroup::Cgroups>) {
        self.finish_in_background(Teardown {
            cgroups: cgroups.into_iter().collect(),
            inits: Vec::new(),
            paths: Vec::new(),
        });
    }

    /// Kills one instance and returns the rest of its teardown: its
    /// cgroups, overlay work directory and init config.
    pub(super) fn end_instance(&self, id: &str, init: Init) -> Teardown {
        kill(init);
        Teardown {
            cgroups: match &self.cgroups {
                Ok(layout) => vec![layout.cgroups(&self.cgroup_name(id, init.instance))],
                Err(_) => Vec::new(),
            },
            inits: vec![init],
            paths: vec![
                self.work_dir(id, init.instance),
                self.config_path(id, init.instance),
            ],
        }
    }

    /// Ends every process of the workspace, its standby's included, and
    /// removes the cgroups, overlay work directories and init configs of
    /// all its instances. With `wait`, returns once all is gone;
    /// otherwise the teardown finishes in the background (the processes
    /// are already killed, and the next instance uses fresh names).
    pub(super) fn stop_locked(&self, id: &str, wait: bool) -> Result<State, RuntimeError> {
        self.agents.forget(id);
        let mut state = self.load(id)?;
        // `kill` and the teardown pass over inits that have already ended.
        let inits: Vec<Init> = [state.init, state.standby.as_ref().map(|s| s.init)]
            .into_iter()
            .flatten()
            .collect();
        inits.iter().copied().for_each(kill);
        state.standby = None;
        self.discard_standby_dirs(id)?;
        // Every instance, also those a berth killed mid-start left behind.
        let paths: Vec<PathBuf> = fs::read_dir(self.ws_dir(id))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.starts_with("work")
                            || (name.starts_with("init.") && name.ends_with(".json"))
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        let teardown = Teardown {
            cgroups: match &self.cgroups {
                Ok(layout) => layout.instances(&self.cgroup_prefix(id)),
                Err(_) => Vec::new(),
            },
            inits,
            paths,
        };
        if wait {
            teardown.run()?;
        } else {
            self.finish_in_background(teardown);
        }
        state.init = None;
        self.save(&state)?;
        Ok(state)
    }

    pub(super) fn base_env(&self, ws: &Workspace) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ("HOME".to_string(), "/root".to_string()),
            ("USER".to_string(), "root".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        for (key, value) in &ws.spec.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        env
    }
}
