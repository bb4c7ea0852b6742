//! The `berth` binary as a user drives it: real processes, a real registry
//! in a scratch BERTH_HOME, real git repositories.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_testkit::{
    GitHttpServer, command_of, commit_files, make_repo, processes_holding, temp_dir, wait_for_exit,
    write_credentials,
};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use tempfile::TempDir;

struct Env {
    dir: TempDir,
    home: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = temp_dir();
        let home = dir.path().join("home");
        Env { dir, home }
    }

    fn berth(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .env("BERTH_HOME", &self.home)
            .env_remove("BERTH_RUNTIME")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.berth().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The last line of `berth up`'s output: the workspace id.
fn workspace_id(out: &str) -> String {
    out.lines().last().unwrap().to_owned()
}

/// A token-guarded forge serving `app`, a credential for it, and a spec
/// cloning `app` with that credential on the `local` runtime.
struct Forge {
    server: GitHttpServer,
    spec: PathBuf,
    /// Unique to the test, so that a scan for it finds no other test's git.
    token: String,
}

impl Forge {
    fn new(env: &Env, token: &str) -> Forge {
        let repos = env.dir.path().join("repos");
        make_repo(&repos.join("app"), &[("README", "one\n")]);
        let server = GitHttpServer::start(&repos, token);
        write_credentials(&env.home, "forge", token, &[&server.url()]);
        let spec = env.file(
            "spec.toml",
            &format!(
                "runtime = \"local\"\n[[repositories]]\nurl = \"{}app\"\npath = \"app\"\n\
                 credential = \"forge\"\n",
                server.url()
            ),
        );
        Forge {
            server,
            spec,
            token: token.to_owned(),
        }
    }

    /// Starts `berth up` of the spec and waits until its clone is held by
    /// the stalled server; returns it with the processes holding the token
    /// (git and its helpers).
    fn up_stalled(&self, env: &Env) -> (std::process::Child, Vec<u32>) {
        self.server.stall();
        let up = env
            .berth()
            .args(["up", self.spec.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server.wait_for_stalled(1);
        let holding = processes_holding(&self.token);
        let commands: Vec<String> = holding.iter().map(|pid| command_of(*pid)).collect();
        assert!(
            commands.iter().any(|c| c.contains("remote-http")),
            "git and its helper hold the token mid-clone: {commands:?}"
        );
        (up, holding)
    }

    /// The next `berth up` of the spec succeeds and has the repository.
    fn next_up_works(&self, env: &Env) {
        self.server.resume();
        let id = workspace_id(&env.ok(&["up", self.spec.to_str().unwrap()]));
        assert_eq!(env.ok(&["read", &id, "app/README"]), "one\n");
        let all = env.ok(&["ls", "--all"]);
        assert!(all.contains("failed"), "the killed one is failed: {all}");
    }
}

/// What is in a directory of BERTH_HOME, sorted.
fn entries(env: &Env, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.home.join(dir))
        .into_iter()
        .flatten()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What is left in the mirrors' directory.
fn mirror_files(env: &Env) -> Vec<String> {
    entries(env, "git/mirrors")
}

/// Asserts that nothing of the killed provision is left on disk.
fn nothing_left_of_the_killed_provision(env: &Env) {
    assert_eq!(
        mirror_files(env),
        Vec::<String>::new(),
        "no lock or partial clone is left of a mirror never made"
    );
    assert_eq!(entries(env, "staging"), Vec::<String>::new());
    assert_eq!(entries(env, "local/workspaces"), Vec::<String>::new());
}

#[test]
fn killing_up_mid_clone_ends_every_git_holding_the_token() {
    let env = Env::new();
    let forge = Forge::new(&env, "tok-killed-up-4c1d9e0b77");
    let (mut up, holding) = forge.up_stalled(&env);

    up.kill().unwrap();
    up.wait().unwrap();
    wait_for_exit(&holding, std::time::Duration::from_secs(10));
    assert_eq!(
        processes_holding(&forge.token),
        Vec::<u32>::new(),
        "a git process outlived berth with the token"
    );

    let gc = env.ok(&["gc"]);
    assert!(gc.contains("git: "), "{gc}");
    nothing_left_of_the_killed_provision(&env);
    forge.next_up_works(&env);
}

#[test]
fn an_up_killed_together_with_its_git_leaves_nothing_gc_does_not_clear() {
    let env = Env::new();
    let forge = Forge::new(&env, "tok-killed-together-6a0f3e");
    let (mut up, holding) = forge.up_stalled(&env);

    // Everything at once (the OOM killer, a cgroup's kill): git cannot
    // clean up after itself. Its tree is one process group.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", holding[0])).unwrap();
    let group: i32 = stat
        .rsplit_once(')')
        .and_then(|(_, fields)| fields.split_whitespace().nth(2))
        .unwrap()
        .parse()
        .unwrap();
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(group).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    up.kill().unwrap();
    up.wait().unwrap();
    wait_for_exit(&holding, std::time::Duration::from_secs(10));
    let left = mirror_files(&env);
    assert!(
        left.iter().any(|name| name.ends_with(".partial")),
        "a partial clone is left: {left:?}"
    );

    let gc = env.ok(&["gc"]);
    assert!(gc.contains("git: "), "{gc}");
    nothing_left_of_the_killed_provision(&env);
    forge.next_up_works(&env);
}

#[test]
fn up_then_exec_read_write_files_and_remove() {
    let env = Env::new();
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);
    let spec = env.file(
        "spec.yaml",
        &format!(
            "runtime: local\nrepositories:\n  - url: {}\n    path: code\nsetup_script: echo prepared > ready\n",
            repo.display()
        ),
    );
    let out = env.run(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let progress = stderr(&out);
    assert!(
        progress.contains("cloning"),
        "plain progress lines: {progress}"
    );
    assert!(progress.contains("running the setup script"), "{progress}");
    let id = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 26, "the last line is the id: {id}");

    let out = env.run(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "cat ready code/hello.txt; echo oops >&2; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "prepared\nhi\n");
    assert_eq!(stderr(&out), "oops\n");

    let out = env.run(&[
        "exec",
        &id,
        "--cwd",
        "code",
        "-e",
        "X=1",
        "--",
        "sh",
        "-c",
        "echo $X; ls",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\nhello.txt\n");

    let out = env.run(&[
        "exec",
        &id,
        "--timeout",
        "0.5",
        "--",
        "sh",
        "-c",
        "echo started; sleep 30",
    ]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    assert!(stderr(&out).contains("timed out"));

    let out = env.run(&["exec", &id, "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));

    let mut write = env
        .berth()
        .args(["write", &id, "notes/todo.md"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(write.stdin.as_mut().unwrap(), b"- ship it\n").unwrap();
    drop(write.stdin.take());
    assert!(write.wait().unwrap().success());
    assert_eq!(env.ok(&["read", &id, "notes/todo.md"]), "- ship it\n");
    assert_eq!(env.ok(&["files", &id]), "code/\nnotes/\nready\n");
    let out = env.run(&["read", &id, "../../etc/passwd"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(".."), "{}", stderr(&out));

    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["ls", "--json"])).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "running");
    let shown = env.ok(&["show", &id]);
    assert!(
        shown.contains("no isolation"),
        "local says it is not isolated: {shown}"
    );

    assert_eq!(env.ok(&["stop", &id]).trim(), id);
    assert_eq!(env.ok(&["start", &id]).trim(), id);
    assert_eq!(env.ok(&["rm", &id]).trim(), id);
    assert_eq!(
        env.ok(&["ls"]).lines().count(),
        1,
        "only the header is left"
    );
}

#[test]
fn the_second_workspace_comes_from_the_cache_and_fetches() {
    let env = Env::new();
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("v", "1\n")]);
    let spec = env.file(
        "spec.toml",
        &format!(
            "runtime = \"local\"\nsetup_script = \"echo SETUP-RAN\"\n[[repositories]]\nurl = \"{}\"\npath = \"r\"\n",
            repo.display()
        ),
    );
    let first = env.run(&["up", spec.to_str().unwrap()]);
    assert!(stderr(&first).contains("SETUP-RAN"));
    commit_files(&repo, &[("v", "2\n")], "two");
    let second = env.run(&["up", spec.to_str().unwrap()]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        !stderr(&second).contains("SETUP-RAN"),
        "setup ran again: {}",
        stderr(&second)
    );
    assert!(stderr(&second).contains("cached"), "{}", stderr(&second));
    let id = String::from_utf8(second.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert_eq!(env.ok(&["read", &id, "r/v"]), "2\n");

    commit_files(&repo, &[("v", "3\n")], "three");
    assert!(env.ok(&["fetch", &id]).contains("r: "));
    assert_eq!(env.ok(&["read", &id, "r/v"]), "3\n");
}

#[test]
fn bad_input_gets_clear_errors_and_creates_nothing() {
    let env = Env::new();
    let spec = env.file(
        "bad.json",
        r#"{"runtime": "local", "repositories": [{"url": "x", "path": "a", "branch": "main"}]}"#,
    );
    let out = env.run(&["up", spec.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("bad.json"), "{message}");
    assert!(message.contains("repositories[0]"), "{message}");
    assert!(message.contains("unknown field `branch`"), "{message}");

    let spec = env.file("none.toml", "setup_script = \"true\"\n");
    let out = env.run(&["up", spec.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("no runtime chosen"),
        "{}",
        stderr(&out)
    );
    let available = stderr(&out);
    let available = available.split("available here: ").nth(1).unwrap_or("");
    for runtime in ["docker", "local", "sandbox"] {
        assert!(
            available.contains(runtime),
            "{runtime} is listed: {available}"
        );
    }
    let out = env
        .berth()
        .args(["up", spec.to_str().unwrap()])
        .env("BERTH_RUNTIME", "local")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "BERTH_RUNTIME chooses: {}",
        stderr(&out)
    );
    let out = env.run(&["up", spec.to_str().unwrap(), "--runtime", "nope"]);
    assert!(
        stderr(&out).contains("unknown runtime `nope`"),
        "{}",
        stderr(&out)
    );

    let out = env.run(&["exec", "no-such-workspace", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no-such-workspace"));
    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["ls", "--json"])).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "only the BERTH_RUNTIME one exists"
    );
}

#[test]
fn the_configuration_file_sets_defaults_and_variables_override_it() {
    let env = Env::new();
    std::fs::create_dir_all(&env.home).unwrap();
    let config = env.home.join("config.toml");
    std::fs::write(&config, "runtime = \"local\"\noutput_limit = \"4\"\n").unwrap();
    let spec = env.file("none.toml", "setup_script = \"true\"\n");
    let id = workspace_id(&env.ok(&["up", spec.to_str().unwrap()]));
    assert!(env.ok(&["show", &id]).contains("runtime:   local"));
    let out = env.run(&["exec", &id, "--", "echo", "0123456789"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0123");
    assert_eq!(out.status.code(), Some(125), "output was cut");
    let out = env
        .berth()
        .args(["exec", &id, "--", "echo", "0123456789"])
        .env("BERTH_OUTPUT_LIMIT", "1k")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0123456789\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    std::fs::write(&config, "runtime = \"local\"\nshm_size = \"lots\"\n").unwrap();
    let out = env.run(&["ls"]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "berth: {}: shm_size: `lots` is not a size",
        config.display()
    );
    assert!(stderr(&out).starts_with(&expected), "{}", stderr(&out));
}

#[test]
fn runtimes_lists_what_works_here() {
    let env = Env::new();
    let runtimes: serde_json::Value =
        serde_json::from_str(&env.ok(&["runtimes", "--json"])).unwrap();
    let local = runtimes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "local")
        .unwrap();
    assert_eq!(local["available"], true);
}

#[tokio::test]
async fn derricks_invocation_serves_derricks_routes_with_a_token() {
    let _port = derrick::derrick_port();
    let env = Env::new();
    let config = env.file(
        "config.json",
        r#"{"name": "test-123", "repositories": [], "setup_script": "echo \"Hello World\" > hello"}"#,
    );
    let mut server = env
        .berth()
        .args([
            "serve",
            "--provisioning-mode",
            "local",
            "--server-mode",
            "http",
        ])
        .args(["--workspace-config-path", config.to_str().unwrap()])
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = "http://127.0.0.1:50080";
    let mut healthy = false;
    for _ in 0..200 {
        if let Ok(response) = client.get(format!("{base}/health")).send().await {
            healthy = response.status().is_success();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(healthy, "berth serve answered /health on Derrick's port");

    let refused = client
        .post(format!("{base}/workspaces"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "no token, no workspace");
    let token = std::fs::read_to_string(env.home.join("server-token")).unwrap();
    let created: serde_json::Value = client
        .post(format!("{base}/workspaces"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let output: serde_json::Value = client
        .post(format!("{base}/workspaces/{id}/cmd_with_output"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"cmd": "cat hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(output["stdout"], "Hello World\n", "{output}");
    server.kill().unwrap();
    server.wait().unwrap();
    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["ls", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "test-123");
}

#[test]
fn a_sandbox_workspace_from_the_cli_detects_lists_changes_diffs_resets_and_forks() {
    let env = Env::new();
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("keep.txt", "k\n"), ("edit.txt", "old\n")]);
    let spec = env.file(
        "sandbox.toml",
        &format!(
            "runtime = \"sandbox\"\nimage = \"host\"\nsetup_script = \"echo ready > ready.txt\"\n\
             [[repositories]]\nurl = \"{}\"\npath = \"app\"\n",
            repo.display()
        ),
    );
    let out = env.run(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();

    let shown = env.ok(&["show", &id]);
    assert!(shown.contains("isolation: isolated"), "{shown}");
    assert!(shown.contains("pid"), "{shown}");
    let inside = env.ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "cat ready.txt; ls /proc | grep -c '^[0-9]'",
    ]);
    let mut lines = inside.lines();
    assert_eq!(lines.next(), Some("ready"));
    let processes: u32 = lines.next().unwrap().parse().unwrap();
    assert!(
        processes < 10,
        "the workspace sees only its own processes: {processes}"
    );
    let detected = env.ok(&["detect", &id]);
    assert!(detected.lines().any(|l| l.starts_with("sh ")), "{detected}");

    env.ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo new > app/edit.txt; rm app/keep.txt; echo a > app/added.txt",
    ]);
    assert_eq!(
        env.ok(&["changes", &id]),
        "A app/added.txt\nM app/edit.txt\nD app/keep.txt\n"
    );
    let patch = env.ok(&["diff", &id]);
    assert!(
        patch.contains("--- a/app/edit.txt") && patch.contains("+new"),
        "{patch}"
    );

    let forks = env.ok(&["fork", &id, "--count", "2"]);
    let forks: Vec<&str> = forks.lines().collect();
    assert_eq!(forks.len(), 2);
    let export = env.dir.path().join("out");
    env.ok(&["export", &id, "-o", export.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(export.join("app/added.txt")).unwrap(),
        "a\n"
    );
    assert!(
        !export.join("app/keep.txt").exists(),
        "only changed files are exported"
    );
    env.ok(&["reset", &id]);
    assert_eq!(env.ok(&["changes", &id]), "", "reset drops every change");
    assert_eq!(
        env.ok(&["read", forks[0], "app/edit.txt"]),
        "new\n",
        "a fork keeps the state it was made from"
    );
    env.ok(&["rm", &id, forks[0], forks[1]]);
}

/// `diff` runs git in the workspace; what git writes there (a scratch
/// index, the objects of files it adds) must not become a change.
#[test]
fn diff_reads_a_workspace_without_writing_to_it_on_every_runtime() {
    let env = Env::new();
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("keep.txt", "k\n"), ("edit.txt", "old\n")]);
    for (runtime, image) in [
        ("sandbox", "image = \"host\"\n".to_string()),
        (
            "docker",
            format!("image = \"{}\"\n", derrick::bash_git_image()),
        ),
        ("local", String::new()),
    ] {
        let spec = env.file(
            &format!("{runtime}.toml"),
            &format!(
                "runtime = \"{runtime}\"\n{image}\
                 [[repositories]]\nurl = \"{}\"\npath = \"app\"\n",
                repo.display()
            ),
        );
        let id = workspace_id(&env.ok(&["up", spec.to_str().unwrap()]));
        env.ok(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo new > app/edit.txt; rm app/keep.txt; echo a > app/added.txt",
        ]);
        // `local` keeps no base to list changes against: there, the files
        // of the repository are compared.
        let changes = || match runtime {
            "local" => env.ok(&["exec", &id, "--", "sh", "-c", "cd app && find . | sort"]),
            _ => env.ok(&["changes", &id]),
        };
        let before = changes();
        if runtime != "local" {
            assert_eq!(
                before, "A app/added.txt\nM app/edit.txt\nD app/keep.txt\n",
                "{runtime}"
            );
        }
        for _ in 0..2 {
            let patch = env.ok(&["diff", &id]);
            assert!(
                patch.contains("+++ b/app/added.txt") && patch.contains("+new"),
                "{runtime}: {patch}"
            );
            assert_eq!(changes(), before, "{runtime}");
        }
        env.ok(&["rm", &id]);
    }
}

/// Changes are counted from the state the workspace was last reset to or
/// made from: the provisioned state, or the snapshot `reset --to` named.
#[test]
fn changes_count_from_the_state_a_workspace_was_last_reset_to_on_every_runtime() {
    let env = Env::new();
    for (runtime, image) in [
        ("sandbox", "host".to_string()),
        ("docker", derrick::bash_git_image().to_string()),
    ] {
        let spec = env.file(
            &format!("{runtime}.toml"),
            &format!(
                "runtime = \"{runtime}\"\nimage = \"{image}\"\n\
                 setup_script = \"echo ready > ready.txt\"\n"
            ),
        );
        let id = workspace_id(&env.ok(&["up", spec.to_str().unwrap()]));
        let sh = |script: &str| env.ok(&["exec", &id, "--", "sh", "-c", script]);
        sh("echo one > one.txt; echo changed > ready.txt");
        assert_eq!(
            env.ok(&["changes", &id]),
            "A one.txt\nM ready.txt\n",
            "{runtime}"
        );
        let snapshot = env.ok(&["snapshot", &id]).trim().to_string();
        sh("echo two > two.txt; rm one.txt");

        env.ok(&["reset", &id, "--to", &snapshot]);
        assert_eq!(
            env.ok(&["changes", &id]),
            "",
            "{runtime}: since the snapshot"
        );
        sh("echo three > three.txt");
        assert_eq!(env.ok(&["changes", &id]), "A three.txt\n", "{runtime}");
        let fork = env.ok(&["fork", &id]).trim().to_string();
        assert_eq!(env.ok(&["changes", &fork]), "", "{runtime}: since the fork");
        env.ok(&["rm", &fork]);

        env.ok(&["reset", &id]);
        assert_eq!(
            env.ok(&["changes", &id]),
            "",
            "{runtime}: since provisioning"
        );
        assert_eq!(sh("cat ready.txt; ls"), "ready\nready.txt\n", "{runtime}");
        env.ok(&["rm", &id]);
    }
}

/// A diff killed before its patch was read leaves the patch in the
/// repository's git directory: it is no change, and the next diff removes
/// it once it is old enough to be no other diff's.
#[test]
fn patches_a_killed_diff_left_never_show_in_changes_and_go_with_the_next_diff() {
    let env = Env::new();
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("keep.txt", "k\n"), ("edit.txt", "old\n")]);
    let spec = env.file(
        "sandbox.toml",
        &format!(
            "runtime = \"sandbox\"\nimage = \"host\"\n\
             [[repositories]]\nurl = \"{}\"\npath = \"app\"\n",
            repo.display()
        ),
    );
    let id = workspace_id(&env.ok(&["up", spec.to_str().unwrap()]));
    env.ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo new > app/edit.txt; \
         echo stale > app/.git/berth-diff-stale.patch; \
         touch -d '2 hours ago' app/.git/berth-diff-stale.patch; \
         echo recent > app/.git/berth-diff-recent.patch",
    ]);
    assert_eq!(env.ok(&["changes", &id]), "M app/edit.txt\n");
    let patch = env.ok(&["diff", &id]);
    assert!(
        patch.contains("+new") && !patch.contains("stale"),
        "{patch}"
    );
    assert_eq!(
        env.ok(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "ls app/.git | grep berth-diff"
        ]),
        "berth-diff-recent.patch\n",
        "the stale patch is gone, the diff's own too"
    );
    assert_eq!(env.ok(&["changes", &id]), "M app/edit.txt\n");
    env.ok(&["rm", &id]);
}

#[test]
fn a_sandbox_workspace_comes_up_in_a_home_under_a_0700_directory_and_umask_077() {
    use std::os::unix::fs::PermissionsExt;
    // As `mktemp -d` makes homes, and as root's own home is.
    let env = Env::new();
    let outer = env.dir.path().join("private");
    std::fs::create_dir(&outer).unwrap();
    std::fs::set_permissions(&outer, std::fs::Permissions::from_mode(0o700)).unwrap();
    let home = outer.join("berth");
    let spec = env.file(
        "private.toml",
        "runtime = \"sandbox\"\nimage = \"host\"\nsetup_script = \"echo ready > ready.txt\"\n",
    );
    let berth = |args: &[&str]| {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                "umask 077 && exec \"$0\" \"$@\"",
                env!("CARGO_BIN_EXE_berth"),
            ])
            .args(args)
            .env("BERTH_HOME", &home)
            .env_remove("BERTH_RUNTIME")
            .stdin(Stdio::null());
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "berth {args:?} failed: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let up = berth(&["up", spec.to_str().unwrap()]);
    let id = up.lines().last().unwrap().to_string();
    assert_eq!(berth(&["exec", &id, "--", "cat", "ready.txt"]), "ready\n");
    berth(&["reset", &id]);
    assert_eq!(berth(&["exec", &id, "--", "ls"]), "ready.txt\n");
    berth(&["rm", &id]);
}

#[test]
fn show_prints_the_memory_limit_and_shm_and_tmp_sizes_a_workspace_got_by_default() {
    let env = Env::new();
    let spec = env.file("plain.toml", "runtime = \"sandbox\"\nimage = \"host\"\n");
    let out = env
        .berth()
        .args(["up", spec.to_str().unwrap()])
        .env("BERTH_DEFAULT_MEMORY", "512m")
        .env("BERTH_SHM_SIZE", "16m")
        .env("BERTH_TMP_SIZE", "32m")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    // What the workspace was made with, whatever the defaults are now.
    let shown = env.ok(&["show", &id]);
    for expected in [
        "memory=536870912",
        "shm=16777216",
        "note:       memory limit 512MiB (the default, BERTH_DEFAULT_MEMORY)",
        "note:       /dev/shm is a tmpfs of 16MiB (BERTH_SHM_SIZE, at most the memory limit)",
        "tmp=33554432",
        "note:       /tmp is a tmpfs of 32MiB (BERTH_TMP_SIZE, at most the memory limit)",
    ] {
        assert!(shown.contains(expected), "{expected}: {shown}");
    }
    let size = env.ok(&["exec", &id, "--", "sh", "-c", "df -k /dev/shm | tail -1"]);
    assert_eq!(size.split_whitespace().nth(1), Some("16384"), "{size}");
    let size = env.ok(&["exec", &id, "--", "sh", "-c", "df -k /tmp | tail -1"]);
    assert_eq!(size.split_whitespace().nth(1), Some("32768"), "{size}");

    let out = env
        .berth()
        .args(["ls"])
        .env("BERTH_SHM_SIZE", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("BERTH_SHM_SIZE: `lots` is not a size"),
        "{}",
        stderr(&out)
    );
    env.ok(&["rm", &id]);
}

/// Names a workspace gives its files to forge lines of a listing, hide
/// text behind terminal escapes, or blur where a name starts and ends.
const HOSTILE_NAMES: &[(&str, &str)] = &[
    // (what `printf` makes of it, how the listing prints it)
    ("ok\\nD important.txt", r#""ok\nD important.txt""#),
    ("\\033[31mred", r#""\033[31mred""#),
    ("tab\\there", r#""tab\there""#),
    ("\\342\\200\\256txt.exe", r#""\342\200\256txt.exe""#),
    (" lead", r#"" lead""#),
    ("trail ", r#""trail ""#),
    ("quote\"d", r#""quote\"d""#),
    ("back\\\\slash", r#""back\\slash""#),
    ("caf\\303\\251.txt", "café.txt"),
    ("plain.txt", "plain.txt"),
    // Not UTF-8: the raw byte is quoted in octal, not its replacement.
    ("bad\\377name", r#""bad\377name""#),
];

#[test]
fn a_file_name_with_a_newline_cannot_forge_a_line_of_changes_or_files() {
    let env = Env::new();
    let spec = env.file("sandbox.toml", "runtime = \"sandbox\"\nimage = \"host\"\n");
    let out = env.run(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = workspace_id(&String::from_utf8(out.stdout).unwrap());
    let script: String = HOSTILE_NAMES
        .iter()
        .map(|(name, _)| format!("touch \"$(printf '{}')\"\n", name.replace('\'', "'\\''")))
        .collect();
    env.ok(&["exec", &id, "--", "sh", "-c", &script]);

    let mut expected: Vec<&str> = HOSTILE_NAMES.iter().map(|(_, shown)| *shown).collect();
    let changes = env.ok(&["changes", &id]);
    let mut listed: Vec<&str> = changes
        .lines()
        .map(|line| {
            line.strip_prefix("A ")
                .unwrap_or_else(|| panic!("{changes}"))
        })
        .collect();
    listed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(listed, expected, "one line per change:\n{changes}");
    assert!(!changes.contains('\u{1b}'), "{changes}");

    let files = env.ok(&["files", &id]);
    for shown in &expected {
        assert!(
            files.lines().any(|line| line == *shown),
            "{shown} in:\n{files}"
        );
    }
    assert_eq!(files.lines().count(), expected.len(), "{files}");

    // `--json` carries each name that is UTF-8 exactly.
    let exact: serde_json::Value =
        serde_json::from_str(&env.ok(&["changes", &id, "--json"])).unwrap();
    let mut names: Vec<&str> = exact
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["path"].as_str().unwrap())
        .filter(|name| !name.starts_with("bad"))
        .collect();
    names.sort_unstable();
    let mut made = vec![
        "ok\nD important.txt",
        "\u{1b}[31mred",
        "tab\there",
        "\u{202e}txt.exe",
        " lead",
        "trail ",
        "quote\"d",
        "back\\slash",
        "café.txt",
        "plain.txt",
    ];
    made.sort_unstable();
    assert_eq!(names, made);
    env.ok(&["rm", &id]);
}

#[test]
fn a_name_that_is_not_utf8_is_listed_exactly_by_changes_json() {
    use base64::Engine as _;
    let env = Env::new();
    let spec = env.file("sandbox.toml", "runtime = \"sandbox\"\nimage = \"host\"\n");
    let out = env.run(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = workspace_id(&String::from_utf8(out.stdout).unwrap());
    // Two names that differ only in bytes that are not UTF-8, a directory
    // so named holding a file, and a plain name beside them.
    let script = "printf 1 > \"$(printf 'a\\377.txt')\"\n\
                  printf 2 > \"$(printf 'a\\376.txt')\"\n\
                  mkdir \"$(printf 'd\\300')\"\n\
                  printf 3 > \"$(printf 'd\\300/in')\"\n\
                  printf 4 > plain.txt\n";
    env.ok(&["exec", &id, "--", "sh", "-c", script]);

    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["changes", &id, "--json"])).unwrap();
    let mut exact: Vec<(Vec<u8>, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|change| {
            let path = change["path"].as_str().unwrap().to_string();
            let raw = match change.get("path_bytes") {
                Some(bytes) => base64::engine::general_purpose::STANDARD
                    .decode(bytes.as_str().unwrap())
                    .unwrap(),
                None => path.clone().into_bytes(),
            };
            assert_eq!(path, String::from_utf8_lossy(&raw), "{listed}");
            (raw, path)
        })
        .collect();
    exact.sort();
    let expected: Vec<(Vec<u8>, String)> = [
        &b"a\xfe.txt"[..],
        b"a\xff.txt",
        b"d\xc0",
        b"d\xc0/in",
        b"plain.txt",
    ]
    .iter()
    .map(|raw| (raw.to_vec(), String::from_utf8_lossy(raw).into_owned()))
    .collect();
    assert_eq!(exact, expected, "{listed}");
    // Only names that are not UTF-8 carry their bytes.
    let plain = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|change| change["path"] == "plain.txt")
        .unwrap();
    assert!(plain.get("path_bytes").is_none(), "{listed}");
    // Text output quotes the raw bytes, not their replacement.
    assert_eq!(
        env.ok(&["changes", &id]),
        "A \"a\\376.txt\"\nA \"a\\377.txt\"\nA \"d\\300\"\nA \"d\\300/in\"\nA plain.txt\n",
    );
    env.ok(&["rm", &id]);
}

#[test]
fn ls_columns_line_up_whatever_the_lengths_of_names_and_states() {
    let env = Env::new();
    let spec = env.file("empty.yaml", "runtime: local\n");
    let long = "a-workspace-name-longer-than-any-column-width";
    for name in ["a", long] {
        env.ok(&["up", spec.to_str().unwrap(), "--name", name]);
    }
    env.ok(&["stop", "a"]);
    let table = env.ok(&["ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in ["NAME", "RUNTIME", "STATE", "CREATED"] {
        let at = lines[0].find(column).unwrap();
        for line in &lines[1..] {
            let (before, value) = line.split_at(at);
            assert!(
                before.ends_with("  ") && !value.starts_with(' '),
                "{column} starts at column {at} on every line:\n{table}"
            );
        }
    }
    assert!(table.contains(long) && table.contains("stopped"), "{table}");
}

/// `berth ls --json | head -1`: the reader goes away; each command treats
/// the closed pipe as success and says nothing.
#[test]
fn a_closed_stdout_pipe_is_success_and_silent_for_every_command() {
    let env = Env::new();
    let spec = env.file("empty.yaml", "runtime: local\n");
    let id = workspace_id(&env.ok(&["up", spec.to_str().unwrap(), "--name", "w"]));
    env.ok(&["exec", &id, "--", "sh", "-c", "seq 100000 > big"]);
    for args in [
        vec!["ls"],
        vec!["ls", "--json"],
        vec!["show", &id],
        vec!["show", &id, "--json"],
        vec!["runtimes", "--json"],
        vec!["files", &id],
        vec!["read", &id, "big"],
        vec!["exec", &id, "--", "cat", "big"],
    ] {
        let mut child = env
            .berth()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The read end is closed before berth writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "berth {args:?}: {out:?}");
        assert_eq!(stderr(&out), "", "berth {args:?} is silent");
    }
}

#[test]
fn labels_are_shown_and_select_what_ls_and_rm_touch() {
    let env = Env::new();
    let spec = env.file("empty.yaml", "runtime: local\n");
    let spec = spec.to_str().unwrap();
    env.ok(&[
        "up",
        spec,
        "--name",
        "s1",
        "--label",
        "team=search",
        "--label",
        "run=1",
    ]);
    env.ok(&[
        "up",
        spec,
        "--name",
        "s2",
        "--label",
        "team=search",
        "--label",
        "run=2",
    ]);
    env.ok(&["up", spec, "--name", "a1", "--label", "team=ads"]);
    let names = |args: &[&str]| -> Vec<String> {
        let listed: serde_json::Value = serde_json::from_str(&env.ok(args)).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|ws| ws["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&["ls", "--json", "--label", "team=search"]),
        ["s1", "s2"]
    );
    assert_eq!(
        names(&["ls", "--json", "--label", "team=search", "--label", "run=2"]),
        ["s2"]
    );
    let shown = env.ok(&["show", "s1"]);
    assert!(
        shown.contains("label:     run=1") && shown.contains("label:     team=search"),
        "{shown}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", "s1", "--json"])).unwrap();
    assert_eq!(shown["labels"]["team"], "search", "{shown}");

    let removed = env.ok(&["rm", "--label", "team=search"]);
    assert_eq!(removed.lines().count(), 2, "{removed}");
    assert_eq!(names(&["ls", "--json"]), ["a1"]);

    let out = env.run(&["up", spec, "--label", "team=has space"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("label `team=has space`"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["ls", "--label", "nokey"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("label `nokey`: expected key=value"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        names(&["ls", "--json"]),
        ["a1"],
        "nothing made of a bad label"
    );
}

#[test]
fn ten_berth_up_processes_from_one_uncached_spec_run_setup_once() {
    let env = Env::new();
    let setups = env.dir.path().join("setups");
    // The setup counts its runs outside the workspace (a local workspace
    // can) and takes a while, so that every process starts while the
    // first is still provisioning.
    let spec = env.file(
        "once.toml",
        &format!(
            "runtime = \"local\"\nsetup_script = \"echo ran >> {}; echo made > marker; sleep 1\"\n",
            setups.display()
        ),
    );
    let children: Vec<_> = (0..10)
        .map(|_| {
            env.berth()
                .args(["up", spec.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "berth up failed: {}", stderr(&out));
            workspace_id(&String::from_utf8(out.stdout).unwrap())
        })
        .collect();
    assert_eq!(std::fs::read_to_string(&setups).unwrap(), "ran\n");
    for id in &ids {
        assert_eq!(env.ok(&["exec", id, "--", "cat", "marker"]), "made\n");
    }
    let mut rm = vec!["rm"];
    rm.extend(ids.iter().map(String::as_str));
    env.ok(&rm);
}

// --- berth standing in for Derrick ------------------------------------------

#[path = "cli/dashboard.rs"]
mod dashboard;
#[path = "cli/derrick.rs"]
mod derrick;
#[path = "cli/hostile.rs"]
mod hostile;
#[path = "cli/jobs.rs"]
mod jobs;
#[path = "cli/server.rs"]
mod server;
#[path = "cli/terminal.rs"]
mod terminal;

#[test]
fn up_with_idle_and_lifetime_shows_when_each_deadline_falls() {
    let env = Env::new();
    let spec = env.file(
        "deadlines.toml",
        "runtime = \"local\"\n[timeouts]\nidle = 60\n",
    );
    let spec = spec.to_str().unwrap();
    let id = workspace_id(&env.ok(&["up", spec, "--idle", "600", "--lifetime", "86400"]));
    let shown = env.ok(&["show", &id]);
    assert!(
        shown.contains("stops:     in 9m unless used (idle timeout 600s)"),
        "{shown}"
    );
    assert!(
        shown.contains("removed:   in 23h (lifetime 86400s)"),
        "{shown}"
    );
    let details: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", "--json", &id])).unwrap();
    let created = details["created_at"].as_i64().unwrap();
    assert_eq!(
        details["removal_deadline"].as_i64(),
        Some(created + 86_400_000)
    );
    let idle_at = details["idle_deadline"].as_i64().unwrap();
    assert!(idle_at >= created + 600_000, "{details}");

    // A stopped workspace has no idle deadline, and its lifetime still runs.
    env.ok(&["stop", &id]);
    let shown = env.ok(&["show", &id]);
    assert!(!shown.contains("stops:"), "{shown}");
    assert!(shown.contains("removed:   in 23h"), "{shown}");

    let refused = env.run(&["up", spec, "--idle", "0"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("timeouts.idle"),
        "{}",
        stderr(&refused)
    );
    env.ok(&["rm", &id]);
}
#[path = "cli/cluster.rs"]
mod cluster;
