//! The default seccomp filter on the real kernel, inside real workspaces:
//! calls the filter refuses fail with its answer (chosen where the kernel
//! itself would answer otherwise, so the test fails if the filter does
//! not), allowed calls reach the kernel, and ordinary work (python, git,
//! shells, terminals, the agent as PID 1 with sessions, terminals, files
//! and watches) still runs. Needs root, overlayfs, user namespaces and
//! cgroups, and the agent built next to the sandbox's init (`cargo build
//! -p berth-agent`).

#![expect(clippy::unwrap_used, reason = "a failing step should fail the test")]

use berth_agent_client::AgentClient;
use berth_core::proto::{SessionParams, TerminalParams, WatchKind};
use berth_core::{ExecEvent, ExecRequest, Runtime, Spec, Workspace, WorkspacePath};
use berth_runtime_sandbox::SandboxRuntime;
use linux_raw_sys::general as nr;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod support;

async fn runtime(home: &Path, with_agent: bool) -> SandboxRuntime {
    let mut config = support::config(home);
    config.agent_program = with_agent.then(support::agent_binary);
    support::runtime(config).await
}

/// Removes a workspace (its processes, mounts and cgroups) even when the
/// test fails half-way.
struct Started<'a> {
    rt: &'a SandboxRuntime,
    ws: Workspace,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        support::end_instances(self.ws.id.as_str());
    }
}

/// A started workspace on the host's system directories.
async fn started(rt: &SandboxRuntime) -> Started<'_> {
    let started = Started {
        rt,
        ws: support::workspace("seccomp", Spec::default()),
    };
    rt.create(&started.ws, None).await.unwrap();
    rt.start(&started.ws).await.unwrap();
    started
}

impl Started<'_> {
    /// Runs argv through the runtime; stdout, stderr and exit code.
    async fn run(&self, argv: &[&str]) -> (String, String, Option<i32>) {
        let ran = support::run(self.rt, &self.ws, ExecRequest::argv(argv.iter().copied())).await;
        (ran.stdout, ran.stderr, ran.code)
    }

    async fn agent(&self) -> AgentClient {
        let socket = self.rt.agent_socket(&self.ws).unwrap();
        AgentClient::connect(&socket, Duration::from_secs(10))
            .await
            .unwrap()
    }
}

/// Raw calls and what each must answer inside a workspace: an errno
/// name, or `ok`. Arguments are chosen so that the kernel, were the call
/// let through, would answer something else (noted beside each).
fn probes() -> Vec<(&'static str, u32, Vec<u64>, &'static str)> {
    const SIGCHLD: u64 = 17;
    let newuser = u64::from(nr::CLONE_NEWUSER);
    vec![
        // Refused with EPERM.
        ("mount", nr::__NR_mount, vec![0, 0, 0, 0, 0], "EPERM"), // EFAULT
        ("unshare", nr::__NR_unshare, vec![newuser], "EPERM"),   // a nested user namespace
        (
            "clone",
            nr::__NR_clone,
            vec![newuser | SIGCHLD, 0, 0, 0, 0],
            "EPERM",
        ), // a child
        ("setns", nr::__NR_setns, vec![u64::MAX, 0], "EPERM"),   // EBADF
        ("add_key", nr::__NR_add_key, vec![0, 0, 0, 0, 0], "EPERM"), // EFAULT
        ("keyctl", nr::__NR_keyctl, vec![0xdead, 0, 0, 0, 0], "EPERM"), // EOPNOTSUPP
        ("kexec_load", nr::__NR_kexec_load, vec![0, 0, 0, 0], "EPERM"),
        ("bpf", nr::__NR_bpf, vec![0, 0, 0], "EPERM"),
        (
            "perf_event_open",
            nr::__NR_perf_event_open,
            vec![0, 0, u64::MAX, u64::MAX, 0],
            "EPERM",
        ), // EFAULT
        (
            "io_uring_setup",
            nr::__NR_io_uring_setup,
            vec![1, 0],
            "EPERM",
        ), // EFAULT
        ("userfaultfd", nr::__NR_userfaultfd, vec![1], "EPERM"), // a descriptor (user mode only)
        (
            "pidfd_getfd",
            nr::__NR_pidfd_getfd,
            vec![u64::MAX, 0, 0],
            "EPERM",
        ), // EBADF
        ("socket_vsock", nr::__NR_socket, vec![40, 1, 0], "EPERM"), // EAFNOSUPPORT or a socket
        (
            "personality_no_aslr",
            nr::__NR_personality,
            vec![0x0004_0000],
            "EPERM",
        ), // ok
        // Answered ENOSYS, as if the kernel lacked them.
        ("clone3", nr::__NR_clone3, vec![0, 0], "ENOSYS"), // EINVAL
        (
            "file_getattr",
            nr::__NR_file_getattr,
            vec![u64::MAX, 0, 0, 0, 0],
            "ENOSYS",
        ), // EBADF from Linux 6.17
        // Allowed: the kernel answers.
        (
            "ptrace",
            nr::__NR_ptrace,
            vec![2, 999_999_999, 0, 0],
            "ESRCH",
        ),
        ("socket_unix", nr::__NR_socket, vec![1, 1, 0], "ok"),
        (
            "personality_query",
            nr::__NR_personality,
            vec![0xffff_ffff],
            "ok",
        ),
        ("getcpu", nr::__NR_getcpu, vec![0, 0, 0], "ok"),
        ("getrandom", nr::__NR_getrandom, vec![0, 0, 0], "ok"),
        (
            "close_range",
            nr::__NR_close_range,
            vec![1000, 2000, 0],
            "ok",
        ),
        ("pidfd_open", nr::__NR_pidfd_open, vec![1, 0], "ok"),
    ]
}

/// A python program making the probes' raw calls, one line each.
fn probe_script() -> String {
    let mut script = String::from(
        "import ctypes, errno\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         def probe(name, nr, *args):\n\
         \x20   ctypes.set_errno(0)\n\
         \x20   r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])\n\
         \x20   print(name, 'ok' if r != -1 else errno.errorcode[ctypes.get_errno()], flush=True)\n",
    );
    for (name, nr, args, _) in probes() {
        let args: Vec<String> = args.iter().map(u64::to_string).collect();
        script += &format!("probe({name:?}, {nr}, {})\n", args.join(", "));
    }
    script
}

fn check_probes(stdout: &str) {
    let seen: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    for (name, _, _, expected) in probes() {
        assert_eq!(
            seen.get(name).copied(),
            Some(expected),
            "{name}: all answers were\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().count(), probes().len(), "{stdout}");
}

#[tokio::test]
async fn refused_calls_answer_eperm_unknown_ones_enosys_and_allowed_ones_reach_the_kernel() {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path(), false).await;
    let ws = started(&rt).await;
    let (out, err, code) = ws.run(&["/usr/bin/python3", "-c", &probe_script()]).await;
    assert_eq!(code, Some(0), "{err}");
    check_probes(&out);
    rt.remove(&ws.ws).await.unwrap();
}

#[tokio::test]
async fn the_agent_as_pid_1_runs_under_the_filter_and_serves_everything() {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path(), true).await;
    let ws = started(&rt).await;
    let agent = ws.agent().await;

    // What the agent runs inherits the filter from stage 1.
    let mut events = agent
        .exec(
            ExecRequest::argv(["/usr/bin/python3", "-c", &probe_script()]),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let (out, err, status) = berth_agent_client::collect(&mut events).await;
    assert_eq!(status.code, Some(0), "{}", String::from_utf8_lossy(&err));
    check_probes(&String::from_utf8_lossy(&out));

    // Sessions.
    let session = agent.session(SessionParams::default()).await.unwrap();
    session.run("cd /tmp && export A=b").await.unwrap();
    let (out, _, status) = session.run("echo $PWD $A").await.unwrap();
    assert_eq!((out, status.code), (b"/tmp b\n".to_vec(), Some(0)));
    session.close().await.unwrap();

    // Terminals: a pty, the controlling terminal, a resize.
    let mut terminal = agent
        .terminal(TerminalParams {
            command: Some(berth_core::proto::Command::Shell(
                "read go; tty; stty size".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    terminal.resize(33, 77).unwrap();
    terminal.write(b"go\n").unwrap();
    let mut screen = Vec::new();
    let status = loop {
        match terminal.events.recv().await.unwrap() {
            ExecEvent::Stdout { data } => screen.extend_from_slice(&data.0),
            ExecEvent::Stderr { .. } => panic!("a terminal has one stream"),
            ExecEvent::Exit(status) => break status,
        }
    };
    let screen = String::from_utf8_lossy(&screen);
    assert_eq!(status.code, Some(0), "{screen}");
    assert!(
        screen.contains("/dev/pts/") && screen.contains("33 77"),
        "{screen}"
    );

    // Files (openat2 beneath the root) and watches (inotify).
    let dir = WorkspacePath::parse("watched").unwrap();
    agent.mkdir(&dir).await.unwrap();
    let mut watch = agent.watch(&dir, true).await.unwrap();
    let file = WorkspacePath::parse("watched/new.txt").unwrap();
    agent.write_file(&file, b"hello", None).await.unwrap();
    // The write goes through a temporary file renamed into place; a
    // guard keeps a lost event from hanging the test.
    let created = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = watch.events.recv().await.unwrap();
            if event.path == file {
                break event.kind;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(created, WatchKind::Created);
    assert_eq!(
        agent
            .read_file(&file)
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"hello"
    );
    let moved = WorkspacePath::parse("watched/moved.txt").unwrap();
    agent.rename(&file, &moved).await.unwrap();
    let names: Vec<String> = agent
        .list_dir(&dir)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.path)
        .collect();
    assert_eq!(names, ["watched/moved.txt"]);
    agent.remove(&moved).await.unwrap();

    // Interpreter detection runs each interpreter it finds.
    let info = agent.info(true).await.unwrap();
    assert!(
        info.interpreters.iter().any(|i| i.name == "python"),
        "{:?}",
        info.interpreters
    );
    drop(agent);
    rt.remove(&ws.ws).await.unwrap();
}

#[tokio::test]
async fn ordinary_work_runs_and_new_namespaces_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path(), false).await;
    let ws = started(&rt).await;
    let script = r#"
set -e
cd /tmp
# Python with threads, subprocesses (glibc's posix_spawn tries clone3
# first) and a pseudo-terminal with a controlling tty.
python3 - <<'EOF'
import os, pty, subprocess, threading
results = []
threads = [threading.Thread(target=lambda: results.append(sum(range(1000)))) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("threads", len(results))
print("subprocess", subprocess.run(["echo", "child"], capture_output=True, text=True).stdout.strip())
pid, fd = pty.fork()
if pid == 0:
    os.execvp("tty", ["tty"])
out = b""
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
print("pty", out.decode().strip().startswith("/dev/pts/"))
EOF
# Git, end to end.
git init -q repo && cd repo
git -c user.name=t -c user.email=t@e commit -q --allow-empty -m first
echo hi > f && git add f && git -c user.name=t -c user.email=t@e commit -q -m second
git log --format=%s | tr '\n' ' '; echo
# Shell pipelines, background jobs, a subshell.
seq 1 100 | sort -rn | head -1
(sleep 0.01 & wait) && echo waited
unshare -U true 2>/dev/null && echo UNSHARED || echo "unshare refused"
unshare -m true 2>/dev/null && echo UNSHARED-MOUNT || echo "unshare -m refused"
"#;
    let (out, err, code) = ws.run(&["/bin/bash", "-c", script]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "threads 4\nsubprocess child\npty True\nsecond first \n100\nwaited\n\
         unshare refused\nunshare -m refused\n",
        "{err}"
    );
    rt.remove(&ws.ws).await.unwrap();
}
