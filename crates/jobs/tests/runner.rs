//! Runs of real jobs on the sandbox and docker runtimes (each scenario
//! runs on both), over repositories served by a token-protected smart HTTP
//! server: patches, partial failure, timeouts, cancellation, logs and
//! retries.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

#[path = "../../runtime-docker/tests/support/mod.rs"]
#[expect(dead_code, reason = "the jobs need only the docker suite's images")]
mod support;

/// The engine the docker runtime's scenarios run on.
const ENGINE: support::Engine = support::Engine::Docker;

use berth_core::SystemClock;
use berth_core::job::{LogEvent, RunState, TaskState};
use berth_jobs::{JobSpec, Jobs, Runner, RunnerConfig};
use berth_provider::{Provider, ProviderConfig};
use berth_runtime_docker::DockerRuntime;
use berth_runtime_docker::plan::LABEL_HOME;
use berth_runtime_sandbox::runtime::DEFAULT_ID_MAP;
use berth_runtime_sandbox::{SandboxConfig, SandboxRuntime};
use berth_store::Store;
use berth_testkit::{GitHttpServer, git, make_repo, temp_dir, write_credentials};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tok-jobs-5d1f0a9c7e";

/// The sandbox's init, built next to this test's executable.
fn init_program() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let init = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("berth-sandbox-init");
    assert!(
        init.is_file(),
        "`{}` is missing: build it with `cargo build -p berth-runtime-sandbox`",
        init.display()
    );
    init
}

/// The runtime a scenario runs on.
#[derive(Debug, Clone, Copy)]
enum On {
    /// The sandbox, on this host's filesystem (image `host`).
    Sandbox,
    /// dockerd, in the docker suite's Debian image (which has git).
    Docker,
}

impl On {
    /// A run's timeout, in seconds, that provisioning and quick steps
    /// stay well within but a step that sleeps does not: a container
    /// takes longer to provision than a sandbox.
    fn slow_timeout(self) -> u32 {
        match self {
            On::Sandbox => 4,
            On::Docker => 20,
        }
    }
}

/// Each scenario, once per runtime: `NAME::sandbox` and `NAME::docker`.
macro_rules! on_each_runtime {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn sandbox() {
                super::$scenario(super::On::Sandbox).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn docker() {
                super::$scenario(super::On::Docker).await;
            }
        }
    )*};
}

on_each_runtime!(
    twenty_repositories_each_get_a_patch_that_applies_to_a_fresh_clone,
    edits_deletions_and_a_mode_change_of_tracked_files_committed_or_not_make_a_patch_that_applies,
    some_repositories_fail_or_time_out_and_the_run_is_partial,
    cancel_mid_run_ends_running_tasks_and_queued_ones_never_start,
    a_cancel_in_the_runners_process_ends_running_tasks_without_waiting_for_a_heartbeat,
    a_cancel_while_the_workspace_is_provisioned_leaves_no_workspace_behind,
    multi_byte_characters_split_across_writes_are_logged_whole,
    changes_are_published_as_branches_updated_by_later_runs_and_a_refused_push_is_reported_alone,
    a_symlink_swapped_in_and_a_huge_sparse_file_cannot_make_the_patch_read_host_files_or_exhaust_memory,
);

struct World {
    on: On,
    /// The docker runtime's home label, for what is left at the end.
    docker_home: Option<String>,
    dir: TempDir,
    server: GitHttpServer,
    provider: Provider,
    jobs: Jobs,
    shutdown: CancellationToken,
}

impl World {
    /// `repos` repositories `r0`…, each with a `version.txt`, a binary
    /// file and a file to delete.
    async fn new(on: On, repos: usize) -> World {
        let dir = temp_dir();
        let home = dir.path().join("home");
        let upstream = dir.path().join("repos");
        for i in 0..repos {
            let repo = upstream.join(format!("r{i}"));
            make_repo(
                &repo,
                &[
                    ("version.txt", &format!("repo {i}\nversion 1\n")),
                    ("old.txt", "to be deleted\n"),
                ],
            );
        }
        let server = GitHttpServer::start(&upstream, TOKEN);
        write_credentials(&home, "forge", TOKEN, &[&server.url()]);
        let mut docker_home = None;
        let runtime: Arc<dyn berth_core::Runtime> = match on {
            On::Sandbox => Arc::new(
                SandboxRuntime::new(SandboxConfig {
                    init_program: init_program(),
                    // The agent, beside the init: it handles the workspaces' files.
                    agent_program: Some(init_program().with_file_name("berth-agent")),
                    host_binds: Vec::new(),
                    id_map: Some(DEFAULT_ID_MAP),
                    accept_weaker: false,
                    standby: true,
                    ..SandboxConfig::from_env(&home)
                })
                .unwrap(),
            ),
            On::Docker => {
                let docker =
                    DockerRuntime::with_host(home.join("docker"), support::engine().host());
                docker_home = Some(docker.names().unwrap().home().to_string());
                Arc::new(docker)
            }
        };
        if let Err(reason) = runtime.available().await {
            panic!("the {on:?} runtime cannot run here: {reason}");
        }
        let provider = Provider::open(ProviderConfig::new(&home).runtime(runtime))
            .await
            .unwrap();
        let store = Arc::new(Store::open(&home).unwrap());
        let jobs = Jobs::sqlite(store, Arc::new(SystemClock));
        World {
            on,
            docker_home,
            dir,
            server,
            provider,
            jobs,
            shutdown: CancellationToken::new(),
        }
    }

    fn start_runner(&self, slots: usize) {
        self.start_runner_beating(slots, Duration::from_millis(100));
    }

    /// A runner heartbeating every `heartbeat` (after a first beat at once).
    fn start_runner_beating(&self, slots: usize, heartbeat: Duration) {
        let mut config = RunnerConfig::new("test-runner");
        config.slots = slots;
        config.heartbeat = heartbeat;
        self.start_runner_with(config);
    }

    fn start_runner_with(&self, mut config: RunnerConfig) {
        config.poll = Duration::from_millis(20);
        let runner = Runner::new(self.provider.clone(), self.jobs.clone(), config);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { runner.serve(shutdown).await });
    }

    fn job(&self, repos: usize, steps: &str, extra: &str) -> JobSpec {
        let (runtime, image) = match self.on {
            On::Sandbox => ("sandbox", "host"),
            On::Docker => ("docker", support::image(support::TestImage::Debian)),
        };
        let mut text = format!(
            "name = \"edit\"\nruntime = \"{runtime}\"\nimage = \"{image}\"\nrepositories = [\n"
        );
        for i in 0..repos {
            text.push_str(&format!(
                "  {{ url = \"{}r{i}\", credential = \"forge\" }},\n",
                self.server.url()
            ));
        }
        text.push_str("]\n");
        text.push_str(steps);
        text.push('\n');
        text.push_str(extra);
        let file = self.dir.path().join("job.toml");
        std::fs::write(&file, text).unwrap();
        JobSpec::from_file(&file).unwrap()
    }

    /// Waits until `done` holds of the run, at most a minute.
    async fn wait_run(&self, run: &str, done: impl Fn(&berth_jobs::RunDetails) -> bool) {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let details = self.jobs.run(run).unwrap();
            if done(&details) {
                return;
            }
            assert!(
                Instant::now() < until,
                "the run did not get there: {details:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self, task: &str) -> String {
        let mut text = String::new();
        for entry in self.jobs.log(task, 0, 100_000).unwrap() {
            match entry.event {
                LogEvent::Stdout { text: t } | LogEvent::Stderr { text: t } => text.push_str(&t),
                other => text.push_str(&format!("[{other:?}]\n")),
            }
        }
        text
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(home) = &self.docker_home {
            // What the provider left of this home's containers.
            let label = format!("label={LABEL_HOME}={home}");
            let left = support::command(&["ps", "-aq", "--filter", &label])
                .output()
                .unwrap();
            for id in String::from_utf8_lossy(&left.stdout).split_whitespace() {
                let _ = support::command(&["rm", "-f", "-v", id]).output();
            }
        }
    }
}

const EDIT: &str = r#"
[[steps]]
name = "bump"
run = "sed -i 's/version 1/version 2/' version.txt && echo bumped"
[[steps]]
name = "more"
run = "rm old.txt && echo new > new.txt && printf '\\000\\001\\002' > blob.bin && echo done >&2"
"#;

async fn twenty_repositories_each_get_a_patch_that_applies_to_a_fresh_clone(on: On) {
    let world = World::new(on, 20).await;
    world.start_runner(4);
    let run = world
        .jobs
        .start(&world.job(20, EDIT, "[run]\nconcurrency = 4"))
        .await
        .unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    let details = world.jobs.run(&run.id).unwrap();
    assert_eq!(details.run.state, RunState::Completed, "{details:#?}");
    assert_eq!(details.tasks.len(), 20);
    for task in &details.tasks {
        assert_eq!(task.state, TaskState::Completed, "{task:#?}");
        assert_eq!(task.exit_code, Some(0));
        assert!(task.base_commit.is_some());
        let patch = world.jobs.patch(&task.id).unwrap();
        assert_eq!(patch.len() as u64, task.patch_size);
        // The patch applies to a fresh clone and reproduces the change.
        let name = berth_jobs::service::repository_name(&task.url);
        let clone = world.dir.path().join("check").join(name);
        let upstream = world.dir.path().join("repos").join(name);
        git(
            world.dir.path(),
            &[
                "clone",
                "--quiet",
                upstream.to_str().unwrap(),
                clone.to_str().unwrap(),
            ],
        );
        let patch_file = clone.with_extension("patch");
        std::fs::write(&patch_file, &patch).unwrap();
        git(&clone, &["apply", "--binary", patch_file.to_str().unwrap()]);
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(
            std::fs::read_to_string(clone.join("version.txt")).unwrap(),
            format!("repo {i}\nversion 2\n")
        );
        assert!(!clone.join("old.txt").exists());
        assert_eq!(
            std::fs::read_to_string(clone.join("new.txt")).unwrap(),
            "new\n"
        );
        assert_eq!(std::fs::read(clone.join("blob.bin")).unwrap(), [0, 1, 2]);
        // The log has both steps' boundaries and output, in order.
        let log = world.log_text(&task.id);
        let bump = log.find("name: \"bump\"").unwrap();
        let bumped = log.find("bumped").unwrap();
        let more = log.find("name: \"more\"").unwrap();
        assert!(bump < bumped && bumped < more, "{log}");
        assert!(log.contains("done"), "{log}");
    }
    // Every workspace was removed.
    let live = world.provider.list(false).unwrap();
    assert!(live.is_empty(), "{live:#?}");
}

/// A step that only edits, deletes and makes executable files the
/// repository tracks, committing part of it: the patch against the
/// provisioned commit applies to a fresh clone and reproduces all of it,
/// a last line without its newline and the mode included.
async fn edits_deletions_and_a_mode_change_of_tracked_files_committed_or_not_make_a_patch_that_applies(
    on: On,
) {
    let world = World::new(on, 2).await;
    world.start_runner(2);
    let steps = r#"
[[steps]]
name = "edit"
run = '''
printf '%s\nversion 2' "$(head -1 version.txt)" > version.txt && rm old.txt
git -c user.name=step -c user.email=step@berth.invalid commit -qam step
chmod +x version.txt
'''
"#;
    let run = world
        .jobs
        .start(&world.job(2, steps, "[run]\nconcurrency = 2"))
        .await
        .unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    let details = world.jobs.run(&run.id).unwrap();
    assert_eq!(details.run.state, RunState::Completed, "{details:#?}");
    for task in &details.tasks {
        let patch = String::from_utf8(world.jobs.patch(&task.id).unwrap()).unwrap();
        assert!(
            patch.contains("old mode 100644\nnew mode 100755\n"),
            "{patch}"
        );
        assert!(patch.contains("deleted file mode 100644"), "{patch}");
        let name = berth_jobs::service::repository_name(&task.url);
        let clone = world.dir.path().join("check").join(name);
        let upstream = world.dir.path().join("repos").join(name);
        git(
            world.dir.path(),
            &[
                "clone",
                "--quiet",
                upstream.to_str().unwrap(),
                clone.to_str().unwrap(),
            ],
        );
        let patch_file = clone.with_extension("patch");
        std::fs::write(&patch_file, &patch).unwrap();
        git(&clone, &["apply", "--binary", patch_file.to_str().unwrap()]);
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(
            std::fs::read_to_string(clone.join("version.txt")).unwrap(),
            format!("repo {i}\nversion 2")
        );
        let mode = std::fs::metadata(clone.join("version.txt")).unwrap();
        assert_ne!(mode.permissions().mode() & 0o100, 0, "not executable");
        assert!(!clone.join("old.txt").exists());
    }
}

/// A step swaps a symlink to a host file in for a changed file, edits
/// another keeping its size and putting its times back, and names files
/// with git's pathspec magic and a newline; in a second repository it
/// leaves a huge sparse file and more than a patch may hold. The first
/// patch has the link itself and every edit, no host file's content; the
/// second task fails for its patch's size, read no further than the bound.
/// In a third it only makes a tracked file huge and sparse: the host,
/// which diffs tracked files itself, does not read it either, and the
/// task fails for its patch's size too.
async fn a_symlink_swapped_in_and_a_huge_sparse_file_cannot_make_the_patch_read_host_files_or_exhaust_memory(
    on: On,
) {
    let world = World::new(on, 3).await;
    let mut config = RunnerConfig::new("test-runner");
    config.slots = 2;
    config.patch_limit = 256 << 10;
    world.start_runner_with(config);
    let steps = r#"
[[steps]]
name = "hostile"
run = '''
repo=$(head -1 version.txt)
if [ "$repo" = "repo 2" ]; then
  truncate -s 256M old.txt
  exit 0
fi
rm version.txt && ln -s /etc/passwd version.txt
cp -p old.txt ../old.ref && printf 'TO BE DELETED\n' > old.txt && touch -r ../old.ref old.txt
printf magic > ':(exclude)*' && printf newline > 'new
line'
if [ "$repo" = "repo 1" ]; then
  truncate -s 256M huge.bin && head -c 1048576 /dev/urandom > noise.bin
fi
'''
"#;
    let run = world
        .jobs
        .start(&world.job(3, steps, "[run]\nconcurrency = 2"))
        .await
        .unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    let details = world.jobs.run(&run.id).unwrap();
    let [linked, huge, sparse] = &details.tasks[..] else {
        panic!("{details:#?}")
    };
    assert_eq!(linked.state, TaskState::Completed, "{linked:#?}");
    let patch = String::from_utf8(world.jobs.patch(&linked.id).unwrap()).unwrap();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first = passwd.lines().next().unwrap();
    assert!(!patch.contains(first), "a host file's content: {patch}");
    assert!(patch.contains("new file mode 120000"), "{patch}");
    assert!(patch.contains("+/etc/passwd"), "{patch}");
    assert!(
        patch.contains("-to be deleted\n+TO BE DELETED\n"),
        "{patch}"
    );
    assert!(patch.contains("+magic"), "{patch}");
    assert!(patch.contains("+newline"), "{patch}");
    // It applies to a fresh clone.
    let clone = world.dir.path().join("check");
    let upstream = world.dir.path().join("repos").join("r0");
    git(
        world.dir.path(),
        &[
            "clone",
            "--quiet",
            upstream.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    std::fs::write(world.dir.path().join("r0.patch"), &patch).unwrap();
    git(&clone, &["apply", "--binary", "../r0.patch"]);
    assert_eq!(
        std::fs::read_link(clone.join("version.txt")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("old.txt")).unwrap(),
        "TO BE DELETED\n"
    );
    assert_eq!(
        std::fs::read_to_string(clone.join(":(exclude)*")).unwrap(),
        "magic"
    );

    for huge in [huge, sparse] {
        assert_eq!(huge.state, TaskState::Failed, "{huge:#?}");
        assert!(
            huge.error
                .as_deref()
                .unwrap()
                .contains("cannot collect the patch"),
            "{huge:#?}"
        );
    }
}

async fn some_repositories_fail_or_time_out_and_the_run_is_partial(on: On) {
    let world = World::new(on, 3).await;
    world.start_runner(3);
    let steps = r#"
[[steps]]
name = "edit"
run = "echo edited >> version.txt"
[[steps]]
name = "check"
run = '''
case "$(head -1 version.txt)" in
  "repo 1") echo "tests failed" >&2; exit 3 ;;
  "repo 2") exec sleep 600 ;;
esac
'''
"#;
    let run = world
        .jobs
        .start(&world.job(
            3,
            steps,
            &format!("[run]\ntimeout = {}\nkeep = \"failed\"", on.slow_timeout()),
        ))
        .await
        .unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    let details = world.jobs.run(&run.id).unwrap();
    assert_eq!(details.run.state, RunState::Partial, "{details:#?}");
    let [ok, failed, slow] = &details.tasks[..] else {
        panic!("{details:#?}")
    };
    assert_eq!(ok.state, TaskState::Completed);
    assert!(
        String::from_utf8(world.jobs.patch(&ok.id).unwrap())
            .unwrap()
            .contains("+edited")
    );
    assert!(
        ok.workspace.is_none(),
        "a completed task's workspace is removed"
    );

    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.failed_step.as_deref(), Some("check"));
    assert!(world.log_text(&failed.id).contains("tests failed"));
    // keep = "failed": the failed task names its workspace, still there.
    let kept = failed.workspace.as_deref().unwrap();
    assert!(world.provider.get(kept).is_ok());

    assert_eq!(slow.state, TaskState::TimedOut, "{slow:#?}");
    assert_eq!(slow.failed_step.as_deref(), Some("check"));
    for task in [failed, slow] {
        if let Some(ws) = &task.workspace {
            world.provider.remove(ws).await.unwrap();
        }
    }
}

async fn cancel_mid_run_ends_running_tasks_and_queued_ones_never_start(on: On) {
    let world = World::new(on, 4).await;
    world.start_runner(2);
    let marker = berth_testkit::attacks::marker();
    let steps = format!("[[steps]]\nrun = \"echo started; exec sleep {marker}\"\n");
    let run = world
        .jobs
        .start(&world.job(4, &steps, "[run]\nconcurrency = 2"))
        .await
        .unwrap();
    world
        .wait_run(&run.id, |d| {
            d.tasks
                .iter()
                .filter(|t| world.log_text(&t.id).contains("started"))
                .count()
                == 2
        })
        .await;
    let cancelled_at = Instant::now();
    world.jobs.cancel(&run.id, None).await.unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    // Within a heartbeat and the workspace's grace period.
    assert!(cancelled_at.elapsed() < Duration::from_secs(15));
    let details = world.jobs.run(&run.id).unwrap();
    assert_eq!(details.run.state, RunState::Cancelled);
    for task in &details.tasks {
        assert_eq!(task.state, TaskState::Cancelled, "{task:#?}");
    }
    let never = details.tasks.iter().filter(|t| t.attempts == 0).count();
    assert_eq!(never, 2, "the queued tasks never started: {details:#?}");
    let survivors = berth_testkit::attacks::survivors(&marker, Duration::from_secs(5));
    assert!(survivors.is_empty(), "{survivors:?}");
}

async fn a_cancel_while_the_workspace_is_provisioned_leaves_no_workspace_behind(on: On) {
    let world = World::new(on, 1).await;
    // The task's clone waits mid-fetch: its workspace is being provisioned.
    world.server.stall();
    world.start_runner(1);
    let run = world
        .jobs
        .start(&world.job(1, "[[steps]]\nrun = \"true\"\n", ""))
        .await
        .unwrap();
    tokio::task::block_in_place(|| world.server.wait_for_stalled(1));
    world.jobs.cancel(&run.id, None).await.unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    let details = world.jobs.run(&run.id).unwrap();
    assert_eq!(details.tasks[0].state, TaskState::Cancelled, "{details:#?}");

    // What the provisioning made goes once it is done.
    world.server.resume();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let left = world.provider.list(false).unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "the cancelled task's workspace was left: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_cancel_in_the_runners_process_ends_running_tasks_without_waiting_for_a_heartbeat(
    on: On,
) {
    let world = World::new(on, 4).await;
    // After its first beat at the claim, no heartbeat comes within the test:
    // only the direct path can carry the cancellation.
    world.start_runner_beating(2, Duration::from_secs(3600));
    let marker = berth_testkit::attacks::marker();
    let steps = format!("[[steps]]\nrun = \"echo started; exec sleep {marker}\"\n");
    let run = world
        .jobs
        .start(&world.job(4, &steps, "[run]\nconcurrency = 2"))
        .await
        .unwrap();
    let started = |d: &berth_jobs::RunDetails| {
        d.tasks
            .iter()
            .filter(|t| world.log_text(&t.id).contains("started"))
            .map(|t| t.id.clone())
            .collect::<Vec<_>>()
    };
    world.wait_run(&run.id, |d| started(d).len() == 2).await;
    let running = started(&world.jobs.run(&run.id).unwrap());

    // One task first: it ends cancelled, its neighbour goes on.
    world.jobs.cancel(&run.id, Some(&running[0])).await.unwrap();
    world
        .wait_run(&run.id, |d| {
            d.tasks
                .iter()
                .any(|t| t.id == running[0] && t.state == TaskState::Cancelled)
        })
        .await;
    let details = world.jobs.run(&run.id).unwrap();
    let other = details.tasks.iter().find(|t| t.id == running[1]).unwrap();
    assert_eq!(other.state, TaskState::Running, "{details:#?}");

    // Then the run: the task it freed a slot for, and the other, end too.
    world.wait_run(&run.id, |d| started(d).len() == 3).await;
    world.jobs.cancel(&run.id, None).await.unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    let details = world.jobs.run(&run.id).unwrap();
    assert_eq!(details.run.state, RunState::Cancelled);
    for task in &details.tasks {
        assert_eq!(task.state, TaskState::Cancelled, "{task:#?}");
    }
    assert_eq!(
        details.tasks.iter().filter(|t| t.attempts == 0).count(),
        1,
        "the queued task never started: {details:#?}"
    );
    let survivors = berth_testkit::attacks::survivors(&marker, Duration::from_secs(5));
    assert!(survivors.is_empty(), "{survivors:?}");
}

async fn multi_byte_characters_split_across_writes_are_logged_whole(on: On) {
    let world = World::new(on, 1).await;
    world.start_runner(1);
    // Each character's bytes leave in two writes, the second after a pause,
    // so the runner reads them in separate chunks, on both streams.
    let steps = r#"
[[steps]]
run = '''
for c in '\342\202' '\254 \346\227' '\245 \360\237\246' '\200 ok'; do
  printf "$c"; printf "$c" >&2; sleep 0.2
done
'''
"#;
    let run = world.jobs.start(&world.job(1, steps, "")).await.unwrap();
    world
        .wait_run(&run.id, |d| d.run.state != RunState::Running)
        .await;
    let task = &world.jobs.run(&run.id).unwrap().tasks[0];
    assert_eq!(task.state, TaskState::Completed, "{task:#?}");
    let (mut out, mut err, mut chunks) = (String::new(), String::new(), 0);
    for entry in world.jobs.log(&task.id, 0, 1000).unwrap() {
        match entry.event {
            LogEvent::Stdout { text } => {
                chunks += 1;
                out.push_str(&text);
            }
            LogEvent::Stderr { text } => err.push_str(&text),
            _ => {}
        }
    }
    assert_eq!(out, "€ 日 🦀 ok");
    assert_eq!(err, "€ 日 🦀 ok");
    assert!(
        chunks > 1,
        "the output came in one chunk: the test proves nothing"
    );
}

async fn changes_are_published_as_branches_updated_by_later_runs_and_a_refused_push_is_reported_alone(
    on: On,
) {
    let world = World::new(on, 2).await;
    let upstream = |i: usize| world.dir.path().join("repos").join(format!("r{i}"));
    for i in 0..2 {
        git(&upstream(i), &["config", "http.receivepack", "true"]);
    }
    world.start_runner(2);
    let publish = "[publish]\nbranch = \"berth/edit\"\nmessage = \"Bump the version\"\n";
    let first = world
        .jobs
        .start(&world.job(2, EDIT, publish))
        .await
        .unwrap();
    world
        .wait_run(&first.id, |d| {
            d.tasks.iter().all(|t| t.published_commit.is_some())
        })
        .await;
    let details = world.jobs.run(&first.id).unwrap();
    for (i, task) in details.tasks.iter().enumerate() {
        let commit = task.published_commit.as_deref().unwrap();
        // The branch holds the commit, on the provisioned commit, with the change.
        assert_eq!(git(&upstream(i), &["rev-parse", "berth/edit"]), commit);
        assert_eq!(
            git(&upstream(i), &["rev-parse", &format!("{commit}^")]),
            task.base_commit.as_deref().unwrap()
        );
        assert_eq!(
            git(&upstream(i), &["log", "-1", "--format=%s", "berth/edit"]),
            "Bump the version"
        );
        assert_eq!(
            git(&upstream(i), &["show", "berth/edit:version.txt"]),
            format!("repo {i}\nversion 2")
        );
        assert_eq!(git(&upstream(i), &["show", "berth/edit:blob.bin"]).len(), 3);
    }

    // A later run with another change updates the branch.
    let steps = EDIT.replace("version 2", "version 3");
    let second = world
        .jobs
        .start(&world.job(2, &steps, publish))
        .await
        .unwrap();
    world
        .wait_run(&second.id, |d| {
            d.tasks.iter().all(|t| t.published_commit.is_some())
        })
        .await;
    assert_eq!(
        git(&upstream(0), &["show", "berth/edit:version.txt"]),
        "repo 0\nversion 3"
    );

    // Someone else moves r1's branch: berth's next push there is refused,
    // and only there.
    git(&upstream(1), &["branch", "--force", "berth/edit", "main"]);
    let moved = git(&upstream(1), &["rev-parse", "berth/edit"]);
    let published = world
        .jobs
        .publish(&world.provider, &second.id, "berth/edit", Some("Again"))
        .await
        .unwrap();
    assert_eq!(published.len(), 2);
    assert!(published[0].commit.is_some(), "{published:#?}");
    assert_eq!(
        git(&upstream(0), &["log", "-1", "--format=%s", "berth/edit"]),
        "Again"
    );
    assert!(published[1].commit.is_none());
    assert!(
        published[1].error.as_deref().unwrap().contains("stale"),
        "{published:#?}"
    );
    assert_eq!(git(&upstream(1), &["rev-parse", "berth/edit"]), moved);
    // The token never reached the workspace's side: it is in no log.
    for task in &world.jobs.run(&second.id).unwrap().tasks {
        assert!(!world.log_text(&task.id).contains(TOKEN));
    }
}
