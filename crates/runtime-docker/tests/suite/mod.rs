//! The docker runtime against a real engine (the crate root names which:
//! dockerd or a Podman service), with images made here by importing a root
//! filesystem (see `support`): workspaces in images with a shell only, with
//! no shell at all, and with real interpreters.

use crate::support::{TestImage, World, cli, image, image_exists, spec_for, workspace};
use berth_agent_client::collect;
use berth_core::proto::{SessionParams, TerminalParams};
use berth_core::spec::Format;
use berth_core::{
    ChangeKind, ExecRequest, ExitStatus, ExportTarget, FileKind, ProvisionEvent, ResourceDefaults,
    Runtime, RuntimeError, Spec, Workspace, WorkspaceId, WorkspacePath, WorkspaceState,
};
use berth_provider::{CreateOptions, Progress, Provider, ProviderConfig};
use berth_runtime_docker::DockerRuntime;
use berth_runtime_docker::plan::{LABEL_HOME, LABEL_MANAGED};
use berth_testkit::{GitHttpServer, attacks, commit_files, make_repo};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Creates and starts a workspace of `spec`.
async fn running(world: &World, spec: Spec) -> Workspace {
    let ws = workspace(spec);
    world.track(&ws);
    world.runtime.create(&ws, None).await.unwrap();
    world.runtime.start(&ws).await.unwrap();
    ws
}

/// A workspace of `spec` provisioned as the provider does it: made,
/// started, `setup` run, its container committed to the cache and remade
/// from it; from then on its `/tmp` is the bounded tmpfs. Returns it and
/// its cache key.
async fn provisioned(world: &World, spec: Spec, setup: &str) -> (Workspace, String) {
    let ws = running(world, spec).await;
    let (out, status) = sh(&world.runtime, &ws, setup).await;
    assert_eq!(status.code, Some(0), "{out}");
    let key = format!("test{}", ws.id);
    world.track_image(world.names().cache_image(&key));
    world.runtime.save_cache(&ws, &key).await.unwrap();
    (ws, key)
}

async fn run(
    runtime: &DockerRuntime,
    ws: &Workspace,
    request: ExecRequest,
) -> (String, String, ExitStatus) {
    let mut events = runtime
        .exec(ws, request, CancellationToken::new())
        .await
        .unwrap();
    let (out, err, status) = collect(&mut events).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        status,
    )
}

async fn sh(runtime: &DockerRuntime, ws: &Workspace, script: &str) -> (String, ExitStatus) {
    let (out, _, status) = run(runtime, ws, ExecRequest::shell(script)).await;
    (out, status)
}

fn path(text: &str) -> WorkspacePath {
    WorkspacePath::parse(text).unwrap()
}

/// Interpreters the agent detects, by name, with their versions.
async fn detected(runtime: &DockerRuntime, ws: &Workspace) -> BTreeMap<String, Option<String>> {
    let agent = runtime.agent(ws).await.unwrap();
    let info = agent.info(true).await.unwrap();
    info.interpreters
        .into_iter()
        .map(|i| (i.name, i.version))
        .collect()
}

/// The upstream version of a Debian package installed in the workspace,
/// read from dpkg's database (`1:5.2.15-2+b7` is `5.2.15`).
async fn dpkg_version(runtime: &DockerRuntime, ws: &Workspace, package: &str) -> String {
    let (status, _) = sh(runtime, ws, "cat /var/lib/dpkg/status").await;
    let stanza = status
        .split("\n\n")
        .find(|s| s.lines().any(|l| l == format!("Package: {package}")))
        .unwrap_or_else(|| panic!("{package} is not installed"));
    let version = stanza
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap();
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    version.split(['-', '+']).next().unwrap().to_string()
}

#[tokio::test]
async fn a_busybox_image_runs_a_workspace_and_detects_only_its_shell() {
    let world = World::new();
    let mut spec = spec_for(image(TestImage::Busybox));
    spec.env.insert("GREETING".into(), "hello".into());
    let ws = running(&world, spec).await;

    let (out, status) = sh(&world.runtime, &ws, "echo $GREETING from $(uname -s); pwd").await;
    assert_eq!(status.code, Some(0));
    assert_eq!(out, "hello from Linux\n/workspace\n");
    // The injected agent cannot be changed from inside.
    let (out, status) = sh(
        &world.runtime,
        &ws,
        "echo x > /.berth/agent || echo refused",
    )
    .await;
    assert_eq!((out.as_str(), status.code), ("refused\n", Some(0)));

    let host = std::process::Command::new(crate::support::busybox_path())
        .output()
        .unwrap();
    let banner = String::from_utf8_lossy(&host.stdout);
    let version = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .unwrap()
        .to_string();
    assert_eq!(
        detected(&world.runtime, &ws).await,
        BTreeMap::from([("sh".to_string(), Some(version))])
    );
}

#[tokio::test]
async fn an_image_without_a_shell_runs_a_workspace_served_by_the_agent_alone() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::NoShell))).await;
    let runtime = &world.runtime;

    assert_eq!(detected(runtime, &ws).await, BTreeMap::new());
    runtime
        .write_file(
            &ws,
            &path("notes/a.txt"),
            b"written without a shell".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        runtime
            .read_file(&ws, &path("notes/a.txt"))
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"written without a shell"
    );
    let listed = runtime.list_files(&ws, &path("notes")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, "notes/a.txt");
    // Nothing to run is a clear error naming the program, not a hang.
    let err = runtime
        .exec(
            &ws,
            ExecRequest::argv(["sh", "-c", "true"]),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Refused {
                reason: berth_core::Refusal::NotStarted,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`sh`"), "{err}");
}

#[tokio::test]
async fn a_debian_image_runs_python_and_perl_and_detects_their_versions() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Debian))).await;
    let runtime = &world.runtime;

    let (out, _, status) = run(
        runtime,
        &ws,
        ExecRequest::argv(["python3", "-c", "print(6 * 7)"]),
    )
    .await;
    assert_eq!((out.as_str(), status.code), ("42\n", Some(0)));
    let (out, _, _) = run(
        runtime,
        &ws,
        ExecRequest::argv(["perl", "-e", "print 6 * 7"]),
    )
    .await;
    assert_eq!(out, "42");

    let python = dpkg_version(runtime, &ws, "python3-minimal").await;
    let perl = dpkg_version(runtime, &ws, "perl-base").await;
    let bash = dpkg_version(runtime, &ws, "bash").await;
    assert_eq!(
        detected(runtime, &ws).await,
        BTreeMap::from([
            ("bash".to_string(), Some(bash)),
            ("perl".to_string(), Some(perl)),
            ("python".to_string(), Some(python)),
            // dash has no version to tell.
            ("sh".to_string(), None),
        ])
    );
}

#[tokio::test]
async fn a_session_keeps_the_directory_variables_and_functions() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let agent = world.runtime.agent(&ws).await.unwrap();
    let session = agent
        .session(SessionParams {
            shell: None,
            cwd: None,
            env: BTreeMap::new(),
        })
        .await
        .unwrap();

    let (_, _, status) = session
        .run("mkdir -p deep/er && cd deep/er && export GREETING=hi && greet() { echo \"$GREETING $1\"; }")
        .await
        .unwrap();
    assert_eq!(status.code, Some(0));
    let (out, _, _) = session.run("pwd; greet there").await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "/workspace/deep/er\nhi there\n"
    );
}

#[tokio::test]
async fn exit_codes_survive_output_without_a_newline_or_looking_like_a_prompt() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let runtime = &world.runtime;

    let (out, status) = sh(runtime, &ws, "printf 'no newline'; exit 3").await;
    assert_eq!((out.as_str(), status.code), ("no newline", Some(3)));

    let agent = runtime.agent(&ws).await.unwrap();
    let session = agent
        .session(SessionParams {
            shell: None,
            cwd: None,
            env: BTreeMap::new(),
        })
        .await
        .unwrap();
    let (out, _, status) = session.run("printf 'partial'; false").await.unwrap();
    assert_eq!((out.as_slice(), status.code), (&b"partial"[..], Some(1)));
    let prompt_like = "printf '$ \\n# \\nroot@ws:/workspace# exit 0\\n'; (exit 7)";
    let (out, _, status) = session.run(prompt_like).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "$ \n# \nroot@ws:/workspace# exit 0\n"
    );
    assert_eq!(status.code, Some(7));
    let (out, _, status) = session.run("echo still here").await.unwrap();
    assert_eq!(
        (out.as_slice(), status.code),
        (&b"still here\n"[..], Some(0))
    );
}

#[tokio::test]
async fn a_timeout_ends_a_tree_that_ignores_sigterm() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let runtime = &world.runtime;

    let mut request = ExecRequest::shell(
        "trap '' TERM; (trap '' TERM; sleep 1000; echo child-survived) & \
         echo started; sleep 1000; echo parent-survived",
    );
    request.timeout_ms = Some(300);
    let began = Instant::now();
    let (out, _, status) = run(runtime, &ws, request).await;
    assert!(status.timed_out, "{status:?}");
    assert_eq!(out, "started\n");
    assert!(began.elapsed() < Duration::from_secs(20));
    let (ps, _) = sh(runtime, &ws, "ps -o pid,args").await;
    assert!(!ps.contains("sleep 1000"), "a process survived:\n{ps}");
}

#[tokio::test]
async fn a_workspace_cannot_ptrace_its_agent() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Debian))).await;
    let runtime = &world.runtime;
    let name = world.names().container(&ws.id);
    let agent: u32 = cli(&["inspect", "-f", "{{.State.Pid}}", &name])
        .trim()
        .parse()
        .unwrap();
    let limit = Duration::from_secs(20);

    let attacked = tokio::time::timeout(limit, sh(runtime, &ws, attacks::ON_THE_AGENT)).await;
    let state = attacks::process_state(agent).unwrap();
    if !matches!(state, 'S' | 'R') {
        // Let the container go rather than leave its agent stopped.
        cli(&["kill", &name]);
    }
    let (out, status) = attacked.expect("the agent answers the attack itself");
    assert_eq!(out, attacks::ON_THE_AGENT_REFUSED, "{status:?}");
    assert!(matches!(state, 'S' | 'R'), "the agent is in state {state}");
    let (out, _) = tokio::time::timeout(limit, sh(runtime, &ws, "echo still here"))
        .await
        .expect("the agent still answers");
    assert_eq!(out, "still here\n");
}

/// The workspace's root raises the nice value of its agent and of each of
/// its threads to 19 (the kernel lets it: they are its own user's), then
/// keeps the CPUs busy: the next call from the host puts every thread of
/// the agent back at berth's nice value at most, as the agent reports.
#[tokio::test]
async fn renice_of_the_agent_and_its_threads_from_inside_does_not_hold() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Debian))).await;
    let runtime = &world.runtime;
    let ours = rustix::process::getpriority_process(None).unwrap();
    assert!(ours < 19, "this test runs at nice {ours}");

    let busy = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let attack = format!(
        "lowered=0; for t in /proc/1/task/*; do \
           renice -n 19 -p ${{t##*/}} >/dev/null 2>&1 && lowered=$((lowered + 1)); done; \
         for i in $(seq {busy}); do (while :; do :; done) >/dev/null 2>&1 & done; \
         echo $lowered"
    );
    let (out, status) = sh(runtime, &ws, &attack).await;
    let lowered: usize = out.trim().parse().unwrap();
    assert!(lowered >= 1, "the kernel refused the renice: {status:?}");

    let (out, _) = sh(runtime, &ws, "echo answered").await;
    assert_eq!(out, "answered\n");
    let info = runtime.agent(&ws).await.unwrap().info(false).await.unwrap();
    assert!(
        info.nice <= ours,
        "the agent stays at nice {} (berth runs at {ours})",
        info.nice
    );
}

#[tokio::test]
async fn kill_term_int_or_stop_of_its_agent_from_inside_leaves_it_serving() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let runtime = &world.runtime;
    let name = world.names().container(&ws.id);
    let agent: u32 = cli(&["inspect", "-f", "{{.State.Pid}}", &name])
        .trim()
        .parse()
        .unwrap();
    let limit = Duration::from_secs(20);

    for round in 0..3 {
        let (out, status) =
            tokio::time::timeout(limit, sh(runtime, &ws, attacks::SIGNALS_TO_THE_AGENT))
                .await
                .expect("the agent answers the command that signals it");
        assert_eq!(out, "sent\n", "round {round}: {status:?}");
        let state = attacks::process_state(agent);
        assert!(
            matches!(state, Some('S' | 'R')),
            "round {round}: the agent is in state {state:?}"
        );
        let (out, _) = tokio::time::timeout(limit, sh(runtime, &ws, "echo still here > f; cat f"))
            .await
            .expect("the agent still answers");
        assert_eq!(out, "still here\n", "round {round}");
        let read = tokio::time::timeout(limit, runtime.read_file(&ws, &path("f")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.read_all(u64::MAX).await.unwrap(), b"still here\n");
    }
}

#[tokio::test]
async fn timeout_ends_a_setsid_double_forked_child() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let marker = attacks::marker();

    let mut request = ExecRequest::shell(attacks::detaching(&marker));
    request.timeout_ms = Some(1000);
    let (out, _, status) = run(&world.runtime, &ws, request).await;
    assert!(status.timed_out, "{status:?}");
    assert_eq!(out, "started\n");
    let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
    assert!(left.is_empty(), "survived the timeout: {left:?}");
    let (out, _) = sh(&world.runtime, &ws, "echo next").await;
    assert_eq!(out, "next\n");
}

/// Starts `script` and returns its events once it has printed `started`.
async fn started(
    runtime: &DockerRuntime,
    ws: &Workspace,
    script: &str,
    cancel: CancellationToken,
) -> tokio::sync::mpsc::Receiver<berth_core::ExecEvent> {
    let mut events = runtime
        .exec(ws, ExecRequest::shell(script), cancel)
        .await
        .unwrap();
    match events.recv().await {
        Some(berth_core::ExecEvent::Stdout { data }) => assert_eq!(data.0, b"started\n"),
        other => panic!("expected `started`, got {other:?}"),
    }
    events
}

/// The pids of processes running `sleep MARKER` itself (not a shell whose
/// script names it), once there are `count` of them.
fn sleeping(marker: &str, count: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut found: Vec<u32> = attacks::processes_with(&format!("sleep {marker}"))
            .into_iter()
            .filter(|(_, line)| line.starts_with("sleep "))
            .map(|(pid, _)| pid)
            .collect();
        found.sort_unstable();
        if found.len() >= count || Instant::now() >= deadline {
            assert_eq!(found.len(), count, "processes sleeping {marker}");
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two commands run at once, each with a detached child that ignores
/// SIGTERM, the second started after the first: cancelling the first ends
/// its child only, and the second's lives until its own command ends. A
/// container has no cgroups for commands, and says how it holds them.
#[tokio::test]
async fn a_cancel_of_one_command_never_ends_another_commands_children() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let runtime = &world.runtime;
    let shown = runtime.isolation(&ws);
    assert!(
        shown
            .notes
            .iter()
            .any(|n| n.contains("runs under a shepherd")),
        "`berth show` says how commands are held: {shown:?}"
    );
    let (first, second) = (attacks::marker(), format!("{}1", attacks::marker()));
    let detach = |marker: &str| {
        format!(
            "(setsid sh -c 'trap \"\" TERM; sleep {marker}' &); \
             echo started; sleep {marker}"
        )
    };

    let cancel_first = CancellationToken::new();
    let mut events_first = started(runtime, &ws, &detach(&first), cancel_first.clone()).await;
    let cancel_second = CancellationToken::new();
    let mut events_second = started(runtime, &ws, &detach(&second), cancel_second.clone()).await;
    sleeping(&first, 2);
    let before = sleeping(&second, 2);

    cancel_first.cancel();
    let (_, _, status) = collect(&mut events_first).await;
    assert!(status.cancelled, "{status:?}");
    let left = attacks::survivors(&format!("sleep {first}"), Duration::from_secs(10));
    assert!(left.is_empty(), "survived the cancel: {left:?}");
    assert_eq!(
        sleeping(&second, 2),
        before,
        "the other command and its child live on"
    );

    cancel_second.cancel();
    let (_, _, status) = collect(&mut events_second).await;
    assert!(status.cancelled, "{status:?}");
    let left = attacks::survivors(&format!("sleep {second}"), Duration::from_secs(10));
    assert!(left.is_empty(), "survived the cancel: {left:?}");
}

/// A detached process that ignores SIGTERM forks children that ignore it
/// too, as fast as it can, up to the workspace's pids limit: a timeout
/// still ends every one of them.
#[tokio::test]
async fn a_timeout_ends_a_fork_loop_of_detached_children_that_ignore_sigterm() {
    let world = World::new();
    let mut spec = spec_for(image(TestImage::Busybox));
    // Few enough that the loop spends most of its time at the limit,
    // which spares the machine's other tests.
    spec.limits.pids = Some(256);
    let ws = running(&world, spec).await;
    let marker = attacks::marker();

    let mut request = ExecRequest::shell(format!(
        "(setsid sh -c 'trap \"\" TERM; while :; do (trap \"\" TERM; sleep {marker}) & done' \
           >/dev/null 2>&1 &); \
         echo started; sleep {marker}"
    ));
    request.timeout_ms = Some(1000);
    let (out, _, status) = run(&world.runtime, &ws, request).await;
    assert!(status.timed_out, "{status:?}");
    assert_eq!(out, "started\n");
    let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
    assert!(left.is_empty(), "{} survived the timeout", left.len());
    let (out, _) = sh(&world.runtime, &ws, "echo next").await;
    assert_eq!(out, "next\n");
}

/// The command stops the process that watches over it, then detaches a
/// child that ignores SIGTERM: a timeout still ends both, and the next
/// command runs.
#[tokio::test]
async fn a_timeout_ends_a_command_that_stopped_its_parent() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let marker = attacks::marker();

    let mut request = ExecRequest::shell(format!(
        "kill -STOP $PPID; (setsid sh -c 'trap \"\" TERM; sleep {marker}' &); \
         echo started; sleep {marker}"
    ));
    request.timeout_ms = Some(500);
    let (out, _, status) = run(&world.runtime, &ws, request).await;
    assert!(status.timed_out, "{status:?}");
    assert_eq!(out, "started\n");
    let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
    assert!(left.is_empty(), "survived the timeout: {left:?}");
    let (out, _) = sh(&world.runtime, &ws, "echo next").await;
    assert_eq!(out, "next\n");
}

/// The command detaches a child that ignores SIGTERM, then SIGKILLs the
/// shepherd it runs under (its parent, which runs as its user): what it
/// started is ended all the same, long before its timeout would have, and
/// the next command runs. What a finished command left running, and a
/// command still running, are not touched.
#[tokio::test]
async fn a_command_that_kills_its_shepherd_leaves_nothing_behind_its_timeout() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let runtime = &world.runtime;
    let (marker, left_running, running_on) = (
        attacks::marker(),
        format!("{}1", attacks::marker()),
        format!("{}2", attacks::marker()),
    );
    let (out, _) = sh(
        runtime,
        &ws,
        &format!("(setsid sleep {left_running} >/dev/null 2>&1 &); echo started"),
    )
    .await;
    assert_eq!(out, "started\n");
    let left_before = sleeping(&left_running, 1);
    let cancel_other = CancellationToken::new();
    let mut other = started(
        runtime,
        &ws,
        &format!("(setsid sleep {running_on} &); echo started; sleep {running_on}"),
        cancel_other.clone(),
    )
    .await;
    let other_before = sleeping(&running_on, 2);

    let mut request = ExecRequest::shell(format!(
        "(setsid sh -c 'trap \"\" TERM; sleep {marker}' &); \
         echo started; kill -9 $PPID; sleep {marker}"
    ));
    request.timeout_ms = Some(1000);
    let (out, err, status) = run(runtime, &ws, request).await;
    assert_eq!(out, "started\n");
    assert_eq!(status.signal, Some(9), "{status:?}");
    assert!(
        err.contains("the command killed the process that held it"),
        "says why it was killed: {err:?}"
    );
    let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
    assert!(left.is_empty(), "survived the timeout: {left:?}");
    let (out, _) = sh(runtime, &ws, "echo next").await;
    assert_eq!(out, "next\n");

    assert_eq!(
        sleeping(&left_running, 1),
        left_before,
        "a finished command's"
    );
    assert_eq!(
        sleeping(&running_on, 2),
        other_before,
        "a running command's"
    );
    cancel_other.cancel();
    let (_, _, status) = collect(&mut other).await;
    assert!(status.cancelled, "{status:?}");
}

/// A session's command detaches a child that ignores SIGTERM and leaves a
/// background job: closing the session ends both with the shell, not when
/// the workspace stops, and the workspace runs the next command.
#[tokio::test]
async fn closing_a_session_ends_what_it_detached() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let session = open_session(&world, &ws).await;
    let marker = attacks::marker();
    let (out, _, status) = session
        .run(&format!(
            "(setsid sh -c 'trap \"\" TERM; sleep {marker}' >/dev/null 2>&1 &); \
             sleep {marker} >/dev/null 2>&1 & echo started"
        ))
        .await
        .unwrap();
    assert_eq!((out.as_slice(), status.code), (&b"started\n"[..], Some(0)));
    sleeping(&marker, 2);

    session.close().await.unwrap();
    let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
    assert!(left.is_empty(), "survived the session: {left:?}");
    let (out, _) = sh(&world.runtime, &ws, "echo next").await;
    assert_eq!(out, "next\n");
}

/// The session's shell exits on its own after its command detached a
/// child, or is SIGKILLed with its shepherd by its command: what it
/// started ends with the session either way.
#[tokio::test]
async fn a_session_whose_shell_exits_ends_what_it_detached() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    for (ending, code) in [("exit 3", Some(3)), ("kill -9 $PPID $$", None)] {
        let session = open_session(&world, &ws).await;
        let marker = attacks::marker();
        let (_, _, status) = session
            .run(&format!(
                "(setsid sh -c 'trap \"\" TERM; sleep {marker}' >/dev/null 2>&1 &); {ending}"
            ))
            .await
            .unwrap();
        assert_eq!(status.code, code, "{ending}: {status:?}");
        let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
        assert!(left.is_empty(), "{ending}: survived the session: {left:?}");
        let _ = session.close().await;
    }
    let (out, _) = sh(&world.runtime, &ws, "echo next").await;
    assert_eq!(out, "next\n");
}

/// A session's command leaves the command every way a shell can (a
/// double fork, `setsid`, children that ignore SIGTERM): its timeout, or
/// its cancel, ends every one of them, not only what stayed in the
/// shell's process group, while the shell and what an earlier command
/// left running live on.
#[tokio::test]
async fn a_session_commands_timeout_ends_what_it_detached() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let session = open_session(&world, &ws).await;
    let earlier = attacks::marker();
    let (out, _, _) = session
        .run(&format!("sleep {earlier} >/dev/null 2>&1 & echo started"))
        .await
        .unwrap();
    assert_eq!(out, b"started\n");
    let earlier_job = sleeping(&earlier, 1);
    for cancel in [false, true] {
        let marker = format!("{}{}", attacks::marker(), u8::from(cancel));
        let timeout = (!cancel).then_some(1000);
        let mut process = session
            .start(&attacks::detaching(&marker), timeout, None)
            .await
            .unwrap();
        match process.events.recv().await {
            Some(berth_core::ExecEvent::Stdout { data }) => assert_eq!(data.0, b"started\n"),
            other => panic!("expected `started`, got {other:?}"),
        }
        if cancel {
            sleeping(&marker, 4);
            process.cancel();
        }
        let (_, _, status) = process.output().await;
        assert_eq!(
            (status.timed_out, status.cancelled),
            (!cancel, cancel),
            "{status:?}"
        );
        let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
        assert!(left.is_empty(), "cancelled: {cancel}: survived: {left:?}");
        assert_eq!(
            sleeping(&earlier, 1),
            earlier_job,
            "an earlier command's job"
        );
        let (out, _, status) = session.run("echo next").await.unwrap();
        assert_eq!((out.as_slice(), status.code), (&b"next\n"[..], Some(0)));
    }
    session.close().await.unwrap();
    let left = attacks::survivors(&format!("sleep {earlier}"), Duration::from_secs(10));
    assert!(left.is_empty(), "survived the session: {left:?}");
}

/// A shell on a terminal detaches a child that ignores SIGTERM and leaves
/// a background job, then the terminal is closed, or the shell exits:
/// both end with it, not when the workspace stops.
#[tokio::test]
async fn closing_a_terminal_ends_what_it_detached() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let agent = world.runtime.agent(&ws).await.unwrap();
    for close in [true, false] {
        let mut terminal = agent.terminal(TerminalParams::default()).await.unwrap();
        let marker = attacks::marker();
        terminal
            .write(
                format!(
                    "(setsid sh -c 'trap \"\" TERM; sleep {marker}' >/dev/null 2>&1 &); \
                     sleep {marker} >/dev/null 2>&1 & echo \"started $((40 + 2))\"\n"
                )
                .as_bytes(),
            )
            .unwrap();
        let mut screen = Vec::new();
        while !String::from_utf8_lossy(&screen).contains("started 42") {
            match terminal.events.recv().await {
                Some(berth_core::ExecEvent::Stdout { data }) => screen.extend_from_slice(&data.0),
                other => panic!("{other:?}: {}", String::from_utf8_lossy(&screen)),
            }
        }
        sleeping(&marker, 2);
        if close {
            terminal.cancel();
        } else {
            terminal.write(b"exit\n").unwrap();
        }
        let (_, _, status) = collect(&mut terminal.events).await;
        assert_eq!(status.cancelled, close, "{status:?}");
        let left = attacks::survivors(&format!("sleep {marker}"), Duration::from_secs(10));
        assert!(
            left.is_empty(),
            "closed: {close}: survived the terminal: {left:?}"
        );
    }
    let (out, _) = sh(&world.runtime, &ws, "echo next").await;
    assert_eq!(out, "next\n");
}

/// An interactive shell on a terminal leads a process group of its own,
/// away from the one its shepherd leads, and what it runs orphans
/// processes that come and go: the terminal stays open all the same, for
/// longer than twice the agent's grace period, while a command that
/// ignores SIGTERM runs, and exits with its shell's code.
#[tokio::test]
async fn a_terminal_stays_open_while_its_orphans_come_and_go() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let agent = world.runtime.agent(&ws).await.unwrap();
    let mut terminal = agent.terminal(TerminalParams::default()).await.unwrap();
    terminal
        .write(
            b"(true &); (true &); sh -c 'trap \"\" TERM; sleep 6'; (true &); \
              echo \"alive $((40 + 2))\"\n",
        )
        .unwrap();
    let mut screen = Vec::new();
    while !String::from_utf8_lossy(&screen).contains("alive 42") {
        match terminal.events.recv().await {
            Some(berth_core::ExecEvent::Stdout { data }) => screen.extend_from_slice(&data.0),
            other => panic!("{other:?}: {}", String::from_utf8_lossy(&screen)),
        }
    }
    terminal.write(b"exit 5\n").unwrap();
    let (_, _, status) = collect(&mut terminal.events).await;
    assert_eq!(
        (status.code, status.cancelled),
        (Some(5), false),
        "{status:?}"
    );
}

async fn open_session(world: &World, ws: &Workspace) -> berth_agent_client::Session {
    let agent = world.runtime.agent(ws).await.unwrap();
    agent
        .session(SessionParams {
            shell: None,
            cwd: None,
            env: BTreeMap::new(),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn docker_stop_is_answered_gracefully() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let mut events = world
        .runtime
        .exec(
            &ws,
            ExecRequest::shell("sleep 1000"),
            CancellationToken::new(),
        )
        .await
        .unwrap();

    let name = world.names().container(&ws.id);
    cli(&["stop", &name]);
    let (_, _, status) = collect(&mut events).await;
    assert_ne!(status.code, Some(0), "the running command was ended");
    let exit = cli(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}} {{.State.OOMKilled}}",
        &name,
    ]);
    assert_eq!(exit.trim(), "0 false", "the agent exits 0 on SIGTERM");

    // The workspace starts again where it was.
    world.runtime.start(&ws).await.unwrap();
    let (out, _) = sh(&world.runtime, &ws, "echo back").await;
    assert_eq!(out, "back\n");
}

#[tokio::test]
async fn a_container_removed_behind_berths_back_is_reported_as_such() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    assert!(world.runtime.exists(&ws).await.unwrap());
    cli(&["rm", "-f", &world.names().container(&ws.id)]);

    assert!(!world.runtime.exists(&ws).await.unwrap());
    let err = world.runtime.start(&ws).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Gone { .. }), "{err:?}");
    assert!(err.to_string().contains("removed outside berth"), "{err}");
    // Removing what is gone succeeds.
    world.runtime.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn a_missing_image_is_named_and_an_unreachable_engine_is_explained() {
    let world = World::new();
    let ws = workspace(spec_for("berth-test/never-built:0"));
    let err = world.runtime.create(&ws, None).await.unwrap_err();
    assert!(
        err.to_string().contains("`berth-test/never-built:0`"),
        "{err}"
    );

    let nowhere = DockerRuntime::with_host(world.home.path(), "unix:///nonexistent/docker.sock");
    let reason = nowhere.available().await.unwrap_err();
    assert!(
        reason.starts_with("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{reason}"
    );
    assert!(world.runtime.available().await.is_ok());
}

#[tokio::test]
async fn limits_and_the_empty_network_are_in_force() {
    let world = World::new();
    let mut spec = spec_for(image(TestImage::Busybox));
    spec.limits.pids = Some(16);
    spec.limits.memory = Some(64 << 20);
    let ws = running(&world, spec).await;
    let runtime = &world.runtime;

    let (out, _) = sh(
        runtime,
        &ws,
        "ok=0; for i in $(seq 40); do sleep 30 & [ $? = 0 ] && ok=$((ok+1)); done 2>/dev/null; \
         echo $ok; kill $(jobs -p) 2>/dev/null",
    )
    .await;
    let started: u32 = out.trim().parse().unwrap_or(0);
    assert!(
        started < 16,
        "{started} processes started under a limit of 16"
    );

    let (links, _) = sh(runtime, &ws, "ls /sys/class/net").await;
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let isolation = runtime.isolation(&ws);
    assert_eq!(isolation.network, "none");
    assert!(isolation.limits.contains(&"pids=16".to_string()));

    let name = world.names().container(&ws.id);
    let memory = cli(&["inspect", "-f", "{{.HostConfig.Memory}}", &name]);
    assert_eq!(memory.trim(), (64u64 << 20).to_string());
}

#[tokio::test]
async fn a_workspace_without_limits_gets_the_default_memory_limit_and_a_bounded_shm() {
    let world = World::with_defaults(ResourceDefaults {
        memory: 256 << 20,
        shm: 8 << 20,
        tmp: 32 << 20,
    });
    let (ws, _) = provisioned(&world, spec_for(image(TestImage::Busybox)), "true").await;
    let runtime = &world.runtime;
    let name = world.names().container(&ws.id);
    let memory = cli(&["inspect", "-f", "{{.HostConfig.Memory}}", &name]);
    assert_eq!(memory.trim(), (256u64 << 20).to_string());
    let (out, err, _) = run(
        runtime,
        &ws,
        ExecRequest::shell(
            "df -k /dev/shm | tail -1 | awk '{print $2}';
             head -c 6000000 /dev/zero > /dev/shm/fits && echo fits;
             dd if=/dev/zero of=/dev/shm/more bs=1000 count=3000 || echo refused",
        ),
    )
    .await;
    assert_eq!(out, "8192\nfits\nrefused\n", "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let isolation = runtime.isolation(&ws);
    for limit in [format!("memory={}", 256 << 20), format!("shm={}", 8 << 20)] {
        assert!(isolation.limits.contains(&limit), "{limit}: {isolation:?}");
    }
    // Shown as the container was made, whatever the defaults are now.
    let mut recorded = ws.clone();
    recorded.runtime_info = runtime.start(&ws).await.unwrap();
    let now = World::with_defaults(ResourceDefaults {
        memory: 512 << 20,
        shm: 16 << 20,
        tmp: 64 << 20,
    });
    let isolation = now.runtime.isolation(&recorded);
    for limit in [
        format!("memory={}", 256 << 20),
        format!("shm={}", 8 << 20),
        format!("tmp={}", 32 << 20),
    ] {
        assert!(isolation.limits.contains(&limit), "{limit}: {isolation:?}");
    }
    // Recorded before /tmp was a tmpfs: it is on the container's disk.
    let mut before = recorded.clone();
    before
        .runtime_info
        .as_object_mut()
        .unwrap()
        .remove("tmp_size");
    let isolation = now.runtime.isolation(&before);
    assert!(
        isolation
            .notes
            .iter()
            .any(|n| n.starts_with("/tmp is on disk")),
        "{isolation:?}"
    );
}

/// A workspace writes more into `/tmp` than its bound, as a build or an
/// agent's scratch files can: the write fails with ENOSPC inside, nothing
/// lands on the container's writable layer (the host's disk), and the
/// workspace keeps working. `/tmp` was on that layer, without a bound.
#[tokio::test]
async fn tmp_is_bounded_and_a_workspace_cannot_fill_the_host_through_it() {
    let world = World::with_defaults(ResourceDefaults {
        memory: 256 << 20,
        shm: 8 << 20,
        tmp: 16 << 20,
    });
    let (ws, _) = provisioned(
        &world,
        Spec {
            root: Some("/".into()),
            ..spec_for(image(TestImage::Busybox))
        },
        "echo kept > /tmp/left",
    )
    .await;
    let runtime = &world.runtime;
    let (out, err, _) = run(
        runtime,
        &ws,
        ExecRequest::shell(
            "df -k /tmp | tail -1 | awk '{print $2}';
             dd if=/dev/zero of=/tmp/fill bs=1000 count=100000 || echo refused;
             wc -c < /tmp/fill",
        ),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["16384", "refused"], "{out}{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let kept: u64 = lines[2].trim().parse().unwrap();
    assert!(kept <= 16 << 20 && kept > 15 << 20, "/tmp holds {kept}");
    // The writable layer (what the Engine keeps on the host's disk) did
    // not take it.
    let name = world.names().container(&ws.id);
    let layer: u64 = cli(&["inspect", "--size", "-f", "{{.SizeRw}}", &name])
        .trim()
        .parse()
        .unwrap();
    assert!(layer < 1 << 20, "the writable layer holds {layer} bytes");
    let changes = runtime.changes(&ws).await.unwrap();
    assert!(
        !changes.iter().any(|c| c.path.starts_with("tmp")),
        "/tmp's files are not the workspace's changes: {changes:?}"
    );

    let (out, err, _) = run(
        runtime,
        &ws,
        ExecRequest::shell("rm /tmp/fill && echo scratch > /tmp/note && cat /tmp/note"),
    )
    .await;
    assert_eq!(out, "scratch\n", "the workspace keeps working: {err}");
    runtime.reset(&ws, None).await.unwrap();
    let (out, err, _) = run(runtime, &ws, ExecRequest::shell("ls -A /tmp; echo listed")).await;
    assert_eq!(
        out, "left\nlisted\n",
        "a reset brings back the provisioned /tmp: {err}"
    );
}

/// What a setup script leaves in `/tmp` (a file, a directory, a link,
/// modes and owners) is in the first workspace, in one made from the
/// cache, after a reset and in a fork; what a workspace writes there later
/// is scratch, in none of them. The Engine cannot copy an image's `/tmp`
/// into a tmpfs (dockerd refuses `tmpcopyup`), so berth does it.
#[tokio::test]
async fn a_setup_scripts_tmp_files_are_in_every_workspace_of_its_provisioned_state() {
    let world = World::new();
    let runtime = &world.runtime;
    let spec = spec_for(image(TestImage::Busybox));
    let setup = "echo 'Hello World' > /tmp/hello.txt && mkdir -p /tmp/dir/sub \
                 && echo deep > /tmp/dir/sub/file && chmod 640 /tmp/dir/sub/file \
                 && chown 1000:1000 /tmp/dir && ln -s hello.txt /tmp/link";
    let seen = "cat /tmp/hello.txt /tmp/dir/sub/file /tmp/link; \
                stat -c '%a %u' /tmp/dir/sub/file /tmp/dir; readlink /tmp/link; \
                ls -A /tmp; df -k /tmp | tail -1 | awk '{print $1}'";
    let expected = "Hello World\ndeep\nHello World\n640 0\n755 1000\nhello.txt\n\
                    dir\nhello.txt\nlink\ntmpfs\n";
    let (first, key) = provisioned(&world, spec.clone(), setup).await;
    let (out, status) = sh(runtime, &first, seen).await;
    assert_eq!(out, expected, "the first workspace: {status:?}");
    assert_eq!(runtime.changes(&first).await.unwrap(), []);

    let hit = workspace(spec.clone());
    world.track(&hit);
    runtime.create(&hit, Some(&key)).await.unwrap();
    runtime.start(&hit).await.unwrap();
    let (out, status) = sh(runtime, &hit, seen).await;
    assert_eq!(out, expected, "a cache hit: {status:?}");

    let (_, status) = sh(
        runtime,
        &hit,
        "echo scratch > /tmp/later && rm /tmp/hello.txt",
    )
    .await;
    assert_eq!(status.code, Some(0));
    let fork = workspace(spec);
    world.track(&fork);
    runtime.fork(&hit, &fork).await.unwrap();
    runtime.start(&fork).await.unwrap();
    let (out, status) = sh(runtime, &fork, seen).await;
    assert_eq!(out, expected, "a fork: {status:?}");
    runtime.reset(&hit, None).await.unwrap();
    let (out, status) = sh(runtime, &hit, seen).await;
    assert_eq!(out, expected, "a reset: {status:?}");
}

#[tokio::test]
async fn import_replaces_a_directory_and_copy_out_brings_it_back() {
    let world = World::new();
    let ws = workspace(spec_for(image(TestImage::Busybox)));
    world.track(&ws);
    let runtime = &world.runtime;
    runtime.create(&ws, None).await.unwrap();

    let host = berth_testkit::temp_dir();
    let first = host.path().join("first");
    std::fs::create_dir_all(first.join("src")).unwrap();
    std::fs::write(first.join("src/old.txt"), "old").unwrap();
    std::fs::write(first.join("README"), "v1").unwrap();
    // Imported into a container that was never started.
    runtime.import(&ws, &first, &path("repo")).await.unwrap();
    runtime.start(&ws).await.unwrap();
    assert_eq!(
        runtime
            .read_file(&ws, &path("repo/README"))
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"v1"
    );

    let second = host.path().join("second");
    std::fs::create_dir_all(second.join("src")).unwrap();
    std::fs::write(second.join("src/new.txt"), "new").unwrap();
    std::fs::write(second.join("README"), "v2").unwrap();
    runtime.import(&ws, &second, &path("repo")).await.unwrap();
    let (tree, _) = sh(runtime, &ws, "cd repo && find . | sort").await;
    assert_eq!(tree, ".\n./README\n./src\n./src/new.txt\n");

    let out = host.path().join("out");
    runtime.copy_out(&ws, &path("repo"), &out).await.unwrap();
    assert_eq!(std::fs::read_to_string(out.join("README")).unwrap(), "v2");
    assert_eq!(
        std::fs::read_to_string(out.join("src/new.txt")).unwrap(),
        "new"
    );
    assert!(!out.join("src/old.txt").exists());

    let err = runtime
        .copy_out(&ws, &path("missing"), &host.path().join("none"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::NotFound(ref p) if p == "missing"),
        "{err:?}"
    );
}

#[tokio::test]
async fn changes_snapshots_resets_and_exports_follow_the_workspace() {
    let world = World::new();
    let ws = workspace(spec_for(image(TestImage::Busybox)));
    world.track(&ws);
    let runtime = &world.runtime;
    runtime.create(&ws, None).await.unwrap();
    let host = berth_testkit::temp_dir();
    let repo = host.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    std::fs::write(repo.join("src/keep.txt"), "keep").unwrap();
    std::fs::write(repo.join("src/edit.txt"), "before").unwrap();
    std::fs::create_dir_all(repo.join("gone/inner")).unwrap();
    std::fs::write(repo.join("gone/inner/x"), "x").unwrap();
    runtime.import(&ws, &repo, &path("repo")).await.unwrap();
    runtime.start(&ws).await.unwrap();
    // The provisioned state: what the changes are counted from.
    let key = format!("test{}", ws.id);
    world.track_image(world.names().cache_image(&key));
    runtime.save_cache(&ws, &key).await.unwrap();
    assert!(runtime.has_cache(&key).await);
    assert_eq!(runtime.changes(&ws).await.unwrap(), []);

    sh(
        runtime,
        &ws,
        "cd repo && echo after > src/edit.txt && mkdir -p new/dir && echo n > new/dir/n.txt \
         && ln -s src/keep.txt link && rm -r gone && echo outside > /tmp/outside",
    )
    .await;
    let changes: Vec<(String, ChangeKind, FileKind)> = runtime
        .changes(&ws)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.path, c.kind, c.file_kind))
        .collect();
    let expected = [
        ("repo/gone", ChangeKind::Deleted, FileKind::Dir),
        ("repo/gone/inner", ChangeKind::Deleted, FileKind::Dir),
        ("repo/gone/inner/x", ChangeKind::Deleted, FileKind::File),
        ("repo/link", ChangeKind::Added, FileKind::Symlink),
        ("repo/new", ChangeKind::Added, FileKind::Dir),
        ("repo/new/dir", ChangeKind::Added, FileKind::Dir),
        ("repo/new/dir/n.txt", ChangeKind::Added, FileKind::File),
        ("repo/src/edit.txt", ChangeKind::Modified, FileKind::File),
    ]
    .map(|(p, k, f)| (p.to_string(), k, f));
    assert_eq!(changes, expected);

    let out = host.path().join("export");
    let summary = runtime
        .export_changes(&ws, &ExportTarget::Directory { path: out.clone() })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("repo/src/edit.txt")).unwrap(),
        "after\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("repo/new/dir/n.txt")).unwrap(),
        "n\n"
    );
    assert_eq!(
        std::fs::read_link(out.join("repo/link")).unwrap(),
        std::path::Path::new("src/keep.txt")
    );
    assert!(
        !out.join("repo/src/keep.txt").exists(),
        "only changes are exported"
    );
    assert_eq!(
        summary.deleted,
        ["repo/gone", "repo/gone/inner", "repo/gone/inner/x"]
    );
    let archive = host.path().join("changes.tar.zst");
    runtime
        .export_changes(
            &ws,
            &ExportTarget::Archive {
                path: archive.clone(),
            },
        )
        .await
        .unwrap();
    let unpacked = host.path().join("unpacked");
    berth_layers::extract_archive(&archive, &unpacked).unwrap();
    assert_eq!(
        std::fs::read_to_string(unpacked.join("repo/src/edit.txt")).unwrap(),
        "after\n"
    );

    let snapshot = runtime.snapshot(&ws).await.unwrap();
    world.track_image(world.names().snapshot_image(&snapshot.id));
    sh(runtime, &ws, "echo later > repo/later.txt").await;

    runtime.reset(&ws, None).await.unwrap();
    let (tree, _) = sh(runtime, &ws, "cd repo && find . | sort && cat src/edit.txt").await;
    assert_eq!(
        tree,
        ".\n./gone\n./gone/inner\n./gone/inner/x\n./src\n./src/edit.txt\n./src/keep.txt\nbefore"
    );
    assert_eq!(runtime.changes(&ws).await.unwrap(), []);

    runtime.reset(&ws, Some(&snapshot.id)).await.unwrap();
    let (edit, _) = sh(runtime, &ws, "cat repo/src/edit.txt; ls repo").await;
    assert_eq!(edit, "after\nlink\nnew\nsrc\n");
    runtime.remove_snapshot(&snapshot.id).await.unwrap();
    for unknown in [snapshot.id.as_str(), "0", "not a tag"] {
        let err = runtime.remove_snapshot(unknown).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::SnapshotNotFound(_)),
            "{unknown}: {err}"
        );
    }
    let err = runtime.reset(&ws, Some(&snapshot.id)).await.unwrap_err();
    assert!(err.to_string().contains(&snapshot.id), "{err}");

    runtime.remove_cache(&key).await.unwrap();
    assert!(!runtime.has_cache(&key).await);
    // The workspace still resets: its provisioned state outlives the entry.
    runtime.reset(&ws, None).await.unwrap();
    runtime.remove(&ws).await.unwrap();
    assert!(!runtime.exists(&ws).await.unwrap());
}

/// Podman removes the containers of an image removed by force, where
/// Docker only drops the name: removing a snapshot must remove its name
/// and nothing else on both.
#[tokio::test]
async fn a_workspace_reset_to_a_snapshot_outlives_the_snapshot_with_its_files() {
    let world = World::new();
    let runtime = &world.runtime;
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    sh(runtime, &ws, "echo saved > saved.txt").await;
    let snapshot = runtime.snapshot(&ws).await.unwrap();
    let snapshot_image = world.names().snapshot_image(&snapshot.id);
    world.track_image(snapshot_image.clone());
    let image_id = cli(&["image", "inspect", "-f", "{{.Id}}", &snapshot_image]);
    runtime.reset(&ws, Some(&snapshot.id)).await.unwrap();
    sh(runtime, &ws, "echo unsaved > unsaved.txt").await;

    runtime.remove_snapshot(&snapshot.id).await.unwrap();
    assert!(runtime.exists(&ws).await.unwrap());
    let (out, _) = sh(runtime, &ws, "cat saved.txt unsaved.txt").await;
    assert_eq!(out, "saved\nunsaved\n");
    runtime.stop(&ws).await.unwrap();
    runtime.start(&ws).await.unwrap();
    let (out, _) = sh(runtime, &ws, "cat saved.txt unsaved.txt").await;
    assert_eq!(out, "saved\nunsaved\n");
    let err = runtime.reset(&ws, Some(&snapshot.id)).await.unwrap_err();
    assert!(err.to_string().contains(&snapshot.id), "{err}");

    // Once the workspace is gone, nothing names the snapshot's image: it
    // is freed.
    runtime.remove(&ws).await.unwrap();
    runtime.gc(&[]).await.unwrap();
    assert!(!image_exists(image_id.trim()));
}

/// An image berth committed is freed once nothing names or uses it: its
/// cache entry, the workspace and a snapshot made from it all removed.
#[tokio::test]
async fn a_committed_image_is_freed_once_nothing_names_or_uses_it() {
    let world = World::new();
    let runtime = &world.runtime;
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let key = format!("gc-{}", ws.id);
    runtime.save_cache(&ws, &key).await.unwrap();
    world.track_image(world.names().cache_image(&key));
    let cache_id = cli(&[
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        &world.names().cache_image(&key),
    ]);
    sh(runtime, &ws, "echo later > later.txt").await;
    let snapshot = runtime.snapshot(&ws).await.unwrap();
    world.track_image(world.names().snapshot_image(&snapshot.id));

    runtime.remove_cache(&key).await.unwrap();
    runtime.remove(&ws).await.unwrap();
    runtime.remove_snapshot(&snapshot.id).await.unwrap();
    let report = runtime.gc(&[]).await.unwrap();
    assert!(!image_exists(cache_id.trim()), "{report:?}");
}

/// Imports a one-file image labelled `labels` as `tag`; returns its id.
fn labelled_image(tag: &str, labels: &[(&str, &str)], content: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), content).unwrap();
    let tarball = dir.path().join("image.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cf")
        .arg(&tarball)
        .arg("file")
        .status()
        .unwrap();
    assert!(status.success());
    let mut args = vec!["import".to_string()];
    for (key, value) in labels {
        args.extend(["--change".into(), format!("LABEL {key}={value}")]);
    }
    args.extend([tarball.display().to_string(), tag.to_string()]);
    cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The API names images `sha256:<hex>`; Podman's client prints the hex.
    let id = cli(&["image", "inspect", "-f", "{{.Id}}", tag]);
    format!("sha256:{}", id.trim().trim_start_matches("sha256:"))
}

/// Images of this home left without a name (a tag moved to another) are
/// freed by gc; another home's are not. Podman 4.3 lists nothing for an
/// image list filtered by two labels, which left every one of them.
#[tokio::test]
async fn gc_frees_this_homes_images_left_without_a_name_and_no_other_homes() {
    let (ours, theirs) = (World::new(), World::new());
    let mut ids = Vec::new();
    for world in [&ours, &theirs] {
        let names = world.names();
        let labels = [(LABEL_MANAGED, "true"), (LABEL_HOME, names.home())];
        let tag = names.provisioned_image(&WorkspaceId::generate());
        world.track_image(tag.clone());
        let left = labelled_image(&tag, &labels, "first");
        // The tag moves on: the first image has no name any more.
        labelled_image(&tag, &labels, "second");
        world.track_image(left.clone());
        ids.push(left);
    }
    let report = ours.runtime.gc(&[]).await.unwrap();
    assert!(report.removed.contains(&ids[0]), "{report:?}");
    assert!(!image_exists(&ids[0]));
    assert!(!report.removed.contains(&ids[1]), "{report:?}");
    assert!(image_exists(&ids[1]));
}

/// A workspace whose root is `/`, as Derrick's configs make them: the
/// clone at its absolute path, commands at `/`, and changes, export,
/// copies and reset covering the whole filesystem but berth's own
/// directory and `/tmp`, a tmpfs that starts with the provisioned `/tmp`
/// and whose later files are scratch that a reset drops.
#[tokio::test]
async fn a_workspace_rooted_at_slash_keeps_repositories_at_their_absolute_paths() {
    let world = World::new();
    let ws = workspace(Spec {
        root: Some("/".into()),
        ..spec_for(image(TestImage::Busybox))
    });
    world.track(&ws);
    let runtime = &world.runtime;
    runtime.create(&ws, None).await.unwrap();
    let host = berth_testkit::temp_dir();
    let repo = host.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README"), "readme\n").unwrap();
    runtime.import(&ws, &repo, &path("code/app")).await.unwrap();
    runtime.start(&ws).await.unwrap();
    sh(
        runtime,
        &ws,
        "mkdir -p /var/tmp && echo 'Hello World' > /var/tmp/hello.txt \
         && echo 'Hello World' > /tmp/hello.txt",
    )
    .await;
    let key = format!("test{}", ws.id);
    world.track_image(world.names().cache_image(&key));
    runtime.save_cache(&ws, &key).await.unwrap();
    assert_eq!(runtime.changes(&ws).await.unwrap(), []);

    let (seen, status) = sh(
        runtime,
        &ws,
        "pwd; cat /var/tmp/hello.txt /tmp/hello.txt; ls code/app",
    )
    .await;
    assert_eq!(seen, "/\nHello World\nHello World\nREADME\n", "{status:?}");
    runtime
        .write_file(&ws, &path("tmp/test.patch"), b"patch\n".to_vec())
        .await
        .unwrap();
    let (seen, _) = sh(
        runtime,
        &ws,
        "cat /tmp/test.patch; echo changed > /code/app/README",
    )
    .await;
    assert_eq!(seen, "patch\n");
    assert_eq!(
        changed(runtime, &ws).await,
        [("code/app/README".to_string(), ChangeKind::Modified)],
        "everything but berth's own directory and /tmp"
    );
    let out = host.path().join("export");
    runtime
        .export_changes(&ws, &ExportTarget::Directory { path: out.clone() })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("code/app/README")).unwrap(),
        "changed\n"
    );
    let copy = host.path().join("copy");
    runtime
        .copy_out(&ws, &path("code/app"), &copy)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(copy.join("README")).unwrap(),
        "changed\n"
    );
    runtime.reset(&ws, None).await.unwrap();
    assert_eq!(runtime.changes(&ws).await.unwrap(), []);
    let (seen, _) = sh(
        runtime,
        &ws,
        "cat /code/app/README /var/tmp/hello.txt /tmp/hello.txt; ls -A /tmp",
    )
    .await;
    assert_eq!(
        seen, "readme\nHello World\nHello World\nhello.txt\n",
        "a reset brings back the provisioned /tmp"
    );
    runtime.remove(&ws).await.unwrap();
}

/// Sleeps to just past the start of the next wall-clock second. It waits
/// for nothing to happen: it places what follows at the start of a second,
/// so that all of it that fits in one second shares that second.
async fn at_the_start_of_a_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let left = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
    // The timer and the wall clock may disagree by a little.
    tokio::time::sleep(left + Duration::from_millis(10)).await;
}

/// A host directory `repo` holding `edit.txt` ("before"), and that file
/// opened to set its mtime.
fn repo_to_import(host: &std::path::Path) -> (std::path::PathBuf, std::fs::File) {
    let repo = host.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("edit.txt"), "before").unwrap();
    let file = std::fs::File::options()
        .write(true)
        .open(repo.join("edit.txt"))
        .unwrap();
    (repo, file)
}

async fn changed(runtime: &DockerRuntime, ws: &Workspace) -> Vec<(String, ChangeKind)> {
    runtime
        .changes(ws)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.path, c.kind))
        .collect()
}

/// `docker commit` truncates every mtime to whole seconds, and the Engine's
/// diff takes a whole-second mtime as equal to any other in that second: an
/// edit keeping a file's size, made in the second of the save, must still
/// be a change.
#[tokio::test]
async fn a_same_size_edit_in_the_second_of_the_save_is_a_change() {
    let world = World::new();
    let ws = workspace(spec_for(image(TestImage::NoShell)));
    world.track(&ws);
    let runtime = &world.runtime;
    runtime.create(&ws, None).await.unwrap();
    let key = format!("test{}", ws.id);
    world.track_image(world.names().cache_image(&key));
    let host = berth_testkit::temp_dir();
    let (repo, file) = repo_to_import(host.path());

    // Stamped, imported, saved and edited within one second (the sequence
    // takes about half of one): the saved mtime, cut to the whole second,
    // is the edit's second unless the save waits for the next one.
    at_the_start_of_a_second().await;
    file.set_modified(SystemTime::now()).unwrap();
    runtime.import(&ws, &repo, &path("repo")).await.unwrap();
    runtime.save_cache(&ws, &key).await.unwrap();
    runtime.start(&ws).await.unwrap();
    runtime
        .write_file(&ws, &path("repo/edit.txt"), b"after!".to_vec())
        .await
        .unwrap();

    assert_eq!(
        changed(runtime, &ws).await,
        [("repo/edit.txt".to_string(), ChangeKind::Modified)]
    );
}

/// As above, for a fork: its container is made from a commit of its
/// origin.
#[tokio::test]
async fn a_same_size_edit_in_the_second_of_the_fork_is_a_change() {
    let world = World::new();
    let origin = running(&world, spec_for(image(TestImage::NoShell))).await;
    let runtime = &world.runtime;
    let fork = workspace(origin.spec.clone());
    world.track(&fork);
    let host = berth_testkit::temp_dir();
    let (repo, file) = repo_to_import(host.path());

    at_the_start_of_a_second().await;
    file.set_modified(SystemTime::now()).unwrap();
    runtime.import(&origin, &repo, &path("repo")).await.unwrap();
    runtime.fork(&origin, &fork).await.unwrap();
    runtime.start(&fork).await.unwrap();
    runtime
        .write_file(&fork, &path("repo/edit.txt"), b"after!".to_vec())
        .await
        .unwrap();

    assert_eq!(
        changed(runtime, &fork).await,
        [("repo/edit.txt".to_string(), ChangeKind::Modified)]
    );
}

#[tokio::test]
async fn a_fork_is_independent_of_its_origin() {
    let world = World::new();
    let origin = running(&world, spec_for(image(TestImage::Busybox))).await;
    let runtime = &world.runtime;
    runtime
        .write_file(&origin, &path("shared.txt"), b"from origin".to_vec())
        .await
        .unwrap();
    let fork = workspace(origin.spec.clone());
    world.track(&fork);
    runtime.fork(&origin, &fork).await.unwrap();
    runtime.start(&fork).await.unwrap();

    assert_eq!(
        runtime
            .read_file(&fork, &path("shared.txt"))
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"from origin"
    );
    runtime
        .write_file(&fork, &path("shared.txt"), b"from fork".to_vec())
        .await
        .unwrap();
    assert_eq!(
        runtime
            .read_file(&origin, &path("shared.txt"))
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"from origin"
    );

    let report = runtime.gc(std::slice::from_ref(&origin)).await.unwrap();
    assert!(report.orphans.contains(&fork.id.to_string()), "{report:?}");
    assert!(!runtime.exists(&fork).await.unwrap());
    assert!(runtime.exists(&origin).await.unwrap());
}

/// A provider over the docker runtime of `world`, as `berth` runs one.
async fn provider(world: &World) -> Provider {
    let config = ProviderConfig::new(world.home.path()).runtime(world.runtime.clone());
    Provider::open(config).await.unwrap()
}

async fn provision(
    world: &World,
    provider: &Provider,
    spec: Spec,
) -> (Workspace, Vec<ProvisionEvent>) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(4096);
    let result = provider
        .create(spec, CreateOptions::default(), Progress::to(sender))
        .await;
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    let ws = result.unwrap_or_else(|e| panic!("provisioning failed: {e}\n{events:#?}"));
    world.track(&ws);
    if let Some(key) = &ws.cache_key {
        world.track_image(world.names().cache_image(key));
    }
    (ws, events)
}

fn private_repo_spec(server: &GitHttpServer, image: &str, setup: &str) -> Spec {
    let text = format!(
        "runtime = \"docker\"\nimage = \"{image}\"\nsetup_script = \"{setup}\"\n\
         [[repositories]]\nurl = \"{}private\"\npath = \"private\"\ncredential = \"forge\"\n",
        server.url()
    );
    Spec::parse(&text, Format::Toml).unwrap()
}

#[tokio::test]
async fn the_clone_token_is_nowhere_in_the_container() {
    let world = World::new();
    let repos = berth_testkit::temp_dir();
    let token = "tok-d0cker-5ecret-77aa";
    make_repo(
        &repos.path().join("private"),
        &[("src/lib.rs", "pub fn f() {}\n")],
    );
    let server = GitHttpServer::start(repos.path(), token);
    berth_testkit::write_credentials(world.home.path(), "forge", token, &[&server.url()]);
    let provider = provider(&world).await;

    let (ws, events) = provision(
        &world,
        &provider,
        private_repo_spec(
            &server,
            image(TestImage::Busybox),
            "env > setup-env.txt; ls -a private",
        ),
    )
    .await;
    assert!(server.served() > 0);
    assert_eq!(
        provider
            .read_file(ws.id.as_str(), "private/src/lib.rs")
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"pub fn f() {}\n"
    );
    assert!(!format!("{events:?}").contains(token));

    // Every byte of the container's filesystem, names and contents.
    let name = world.names().container(&ws.id);
    let export = crate::support::command(&["export", &name])
        .output()
        .unwrap();
    assert!(export.status.success());
    assert!(
        export.stdout.len() > 1000,
        "the export holds the filesystem"
    );
    let haystack = export.stdout;
    assert!(
        !haystack.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is in the container's filesystem"
    );
    assert!(!cli(&["inspect", &name]).contains(token));
    // The environment and argv of every process in the container: the
    // agent's environment (which the workspace may not read) from the
    // host, every other one from inside but the shepherd's (which no
    // process of the command may read or trace), which is the command's
    // own, printed by `env`.
    let agent: u32 = cli(&["inspect", "-f", "{{.State.Pid}}", &name])
        .trim()
        .parse()
        .unwrap();
    let agent_env = std::fs::read(format!("/proc/{agent}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&agent_env).contains(token));
    let scan = "env; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do \
                cat $f 2>/dev/null || [ $f = /proc/1/environ ] || [ $f = /proc/$PPID/environ ] \
                || echo NOT-$((1 + 1))-READ $f; done";
    let (_, mut events) = provider
        .exec(
            ws.id.as_str(),
            ExecRequest::shell(scan),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let (out, _, status) = collect(&mut events).await;
    assert_eq!(status.code, Some(0));
    let seen = String::from_utf8_lossy(&out);
    // (The count is worked out by the shell, so the script's own argv
    // does not match.)
    assert!(!seen.contains("NOT-2-READ"), "{seen}");
    assert!(seen.contains("PATH="), "the scan read environments: {seen}");
    assert!(
        !seen.contains(token),
        "the token is in a process's environment or argv"
    );
}

#[tokio::test]
async fn a_second_workspace_starts_from_the_cache_and_fetches_what_moved() {
    let world = World::new();
    let repos = berth_testkit::temp_dir();
    let token = "tok-cache-0f0f";
    let origin = repos.path().join("private");
    make_repo(&origin, &[("README", "one\n")]);
    let server = GitHttpServer::start(repos.path(), token);
    berth_testkit::write_credentials(world.home.path(), "forge", token, &[&server.url()]);
    let provider = provider(&world).await;
    // Fetching into a workspace needs git in it.
    let spec = private_repo_spec(
        &server,
        image(TestImage::Debian),
        "echo ran | tee -a setup.log",
    );

    let (first, events) = provision(&world, &provider, spec.clone()).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheMiss { .. }))
    );
    // The setup script's output is streamed as it runs.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::SetupOutput { data, .. } if data.0 == b"ran\n")),
        "{events:#?}"
    );
    commit_files(&origin, &[("NEWS", "moved upstream\n")], "news");

    let (second, events) = provision(&world, &provider, spec).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheHit { .. })),
        "{events:#?}"
    );
    assert_eq!(first.cache_key, second.cache_key);
    let id = second.id.as_str();
    // The setup ran once, for the first workspace; the cache carried it.
    assert_eq!(
        provider
            .read_file(id, "setup.log")
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"ran\n"
    );
    assert_eq!(
        provider
            .read_file(id, "private/NEWS")
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"moved upstream\n"
    );
    assert_eq!(
        provider
            .read_file(first.id.as_str(), "private/README")
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"one\n"
    );
}

#[tokio::test]
async fn a_container_deleted_behind_berths_back_is_reported_failed() {
    let world = World::new();
    let provider = provider(&world).await;
    let (ws, _) = provision(&world, &provider, spec_for(image(TestImage::Busybox))).await;
    assert_eq!(ws.state, WorkspaceState::Running);
    cli(&["rm", "-f", &world.names().container(&ws.id)]);
    drop(provider);

    let provider = self::provider(&world).await;
    let found = provider.describe(ws.id.as_str()).await.unwrap().workspace;
    assert_eq!(found.state, WorkspaceState::Failed);
    let error = found.error.unwrap_or_default();
    assert!(error.contains("removed outside berth"), "{error}");
}

#[tokio::test]
async fn concurrent_resets_of_a_workspace_take_turns() {
    let world = World::new();
    let ws = running(&world, spec_for(image(TestImage::Busybox))).await;
    let runtime = &world.runtime;
    runtime
        .write_file(&ws, &path("scratch.txt"), b"x".to_vec())
        .await
        .unwrap();

    let (a, b) = tokio::join!(runtime.reset(&ws, None), runtime.reset(&ws, None));
    a.unwrap();
    b.unwrap();
    let (out, status) = sh(runtime, &ws, "ls; echo fine").await;
    assert_eq!((out.as_str(), status.code), ("fine\n", Some(0)));
    assert_eq!(runtime.changes(&ws).await.unwrap(), []);
}

/// What a file of a workspace holds, read through the provider.
async fn read(provider: &Provider, ws: &Workspace, path: &str) -> String {
    let bytes = provider
        .read_file(ws.id.as_str(), path)
        .await
        .unwrap()
        .read_all(u64::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn cache_miss(events: &[ProvisionEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ProvisionEvent::CacheMiss { .. }))
}

#[tokio::test]
async fn a_home_never_comes_up_from_another_homes_cache_nor_collects_its_containers_and_images() {
    let (ours, theirs) = (World::new(), World::new());
    let (we, they) = (provider(&ours).await, provider(&theirs).await);
    // Each run of the setup script leaves a mark of its own.
    let spec = Spec {
        setup_script: Some("cat /proc/sys/kernel/random/uuid > run.txt".into()),
        ..spec_for(image(TestImage::Busybox))
    };

    let (first, events) = provision(&ours, &we, spec.clone()).await;
    assert!(cache_miss(&events), "{events:#?}");
    let our_run = read(&we, &first, "run.txt").await;
    // The other home provisions the same spec from scratch: its setup runs.
    let (their_first, events) = provision(&theirs, &they, spec.clone()).await;
    assert!(cache_miss(&events), "{events:#?}");
    let their_run = read(&they, &their_first, "run.txt").await;
    assert_ne!(our_run, their_run);
    // Each home's next workspace comes from its own provisioned state.
    let (second, events) = provision(&ours, &we, spec.clone()).await;
    assert!(!cache_miss(&events), "{events:#?}");
    assert_eq!(read(&we, &second, "run.txt").await, our_run);
    let (their_second, _) = provision(&theirs, &they, spec).await;
    assert_eq!(read(&they, &their_second, "run.txt").await, their_run);

    // Dropping our cache entry and collecting with nothing live leaves
    // theirs whole.
    let key = first.cache_key.clone().unwrap();
    ours.runtime.remove_cache(&key).await.unwrap();
    let report = ours.runtime.gc(&[]).await.unwrap();
    assert!(report.orphans.contains(&first.id.to_string()), "{report:?}");
    assert!(!ours.runtime.exists(&second).await.unwrap());
    for ws in [&their_first, &their_second] {
        assert!(theirs.runtime.exists(ws).await.unwrap(), "{}", ws.id);
    }
    assert!(theirs.runtime.has_cache(&key).await);
    cli(&[
        "image",
        "inspect",
        &theirs.names().provisioned_image(&their_first.id),
    ]);
    assert_eq!(read(&they, &their_second, "run.txt").await, their_run);
}
