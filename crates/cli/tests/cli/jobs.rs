//! Batch jobs through the `berth` binary on the sandbox runtime: a run
//! waited for, its logs and patches, and runner processes killed mid-task.

use super::{Env, stderr};
use berth_testkit::{GitHttpServer, git, make_repo, write_credentials};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "tok-cli-jobs-3b8e1f";

/// `repos` repositories `r0`… on a token-guarded server, and a job file
/// running `steps` over them in the sandbox.
fn job(env: &Env, repos: usize, steps: &str) -> (GitHttpServer, PathBuf) {
    let upstream = env.dir.path().join("repos");
    for i in 0..repos {
        make_repo(
            &upstream.join(format!("r{i}")),
            &[("version.txt", &format!("repo {i}\n"))],
        );
    }
    let server = GitHttpServer::start(&upstream, TOKEN);
    write_credentials(&env.home, "forge", TOKEN, &[&server.url()]);
    let mut text = String::from(
        "name = \"edit\"\nruntime = \"sandbox\"\nimage = \"host\"\nrepositories = [\n",
    );
    for i in 0..repos {
        text.push_str(&format!(
            "  {{ url = \"{}r{i}\", credential = \"forge\" }},\n",
            server.url()
        ));
    }
    text.push_str("]\n");
    text.push_str(steps);
    let file = env.file("job.toml", &text);
    (server, file)
}

fn show(env: &Env, run: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["job", "show", run, "--json"])).unwrap()
}

/// Waits for `done` of the run's JSON, at most two minutes.
fn wait(env: &Env, run: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let details = show(env, run);
        if done(&details) {
            return details;
        }
        assert!(
            Instant::now() < until,
            "the run did not get there: {details:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn runner(env: &Env, resets: u32) -> Child {
    env.berth()
        .args(["runner", "--slots", "2"])
        .env("BERTH_JOB_HEARTBEAT", "0.2")
        .env("BERTH_JOB_STALL", "2")
        .env("BERTH_JOB_RESETS", resets.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn job_run_wait_prints_the_run_first_then_a_summary_and_the_patches_apply() {
    let env = Env::new();
    let steps = "[[steps]]\nname = \"bump\"\nrun = '''\necho bumped >> version.txt\n\
                 if grep -q 'repo 1' version.txt; then echo 'no luck' >&2; exit 7; fi\n'''\n";
    let (_server, file) = job(&env, 3, steps);
    let out = env.run(&["job", "run", file.to_str().unwrap(), "--wait"]);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a partial run fails: {text}\n{}",
        stderr(&out)
    );
    let run = text.lines().next().unwrap().to_owned();
    assert!(text.contains(&format!("run {run}: partial")), "{text}");
    assert!(
        text.contains("step bump: "),
        "the failure names its step: {text}"
    );

    let details = show(&env, &run);
    assert_eq!(details["state"], "partial");
    assert_eq!(details["tasks"][1]["exit_code"], 7);
    let log = env.ok(&["job", "logs", &run, "r1"]);
    assert!(log.contains("no luck"), "{log}");
    assert!(log.contains("==> step 1: bump"), "{log}");

    let dir = env.dir.path().join("patches");
    let written = env.ok(&["job", "patch", &run, "-o", dir.to_str().unwrap()]);
    assert_eq!(written.lines().count(), 2, "{written}");
    for name in ["r0", "r2"] {
        let clone = env.dir.path().join("clones").join(name);
        git(
            env.dir.path(),
            &[
                "clone",
                "--quiet",
                env.dir.path().join("repos").join(name).to_str().unwrap(),
                clone.to_str().unwrap(),
            ],
        );
        let patch = dir.join(format!("{name}.patch"));
        git(&clone, &["apply", patch.to_str().unwrap()]);
        assert!(
            std::fs::read_to_string(clone.join("version.txt"))
                .unwrap()
                .ends_with("bumped\n")
        );
    }
    assert!(!dir.join("r1.patch").exists());
    let listed = env.ok(&["job", "ls"]);
    assert!(listed.contains("edit") && listed.contains(&run), "{listed}");
    assert!(env.ok(&["job", "runs", "edit"]).contains(&run));
}

#[test]
fn a_runner_killed_mid_task_is_replaced_and_the_task_completes_once() {
    let env = Env::new();
    let steps = "[[steps]]\nrun = \"echo started; sleep 1; echo edited >> version.txt\"\n";
    let (_server, file) = job(&env, 1, steps);
    let run = env.ok(&["job", "run", file.to_str().unwrap()]);
    let run = run.trim().to_owned();
    let mut first = runner(&env, 1);
    wait(&env, &run, |d| d["tasks"][0]["state"] == "running");
    // Killed before it could finish: the task must not be lost.
    kill(&mut first);
    let mut second = runner(&env, 1);
    let details = wait(&env, &run, |d| d["state"] != "running");
    kill(&mut second);
    assert_eq!(details["state"], "completed", "{details:#}");
    let task = &details["tasks"][0];
    assert_eq!(task["attempts"], 2);
    assert_eq!(task["resets"], 1);
    let id = task["id"].as_str().unwrap();
    let patch = env.ok(&["job", "patch", &run, id]);
    assert_eq!(patch.matches("+edited").count(), 1, "{patch}");
    // What the killed attempt left in the sandbox goes with its run.
    env.run(&["rm", "--label", &format!("berth.run={run}")]);
}

#[test]
fn with_no_resets_a_task_whose_runner_was_killed_fails_saying_its_runner_died() {
    let env = Env::new();
    let steps = "[[steps]]\nrun = \"echo started; sleep 600\"\n";
    let (_server, file) = job(&env, 1, steps);
    let run = env.ok(&["job", "run", file.to_str().unwrap()]);
    let run = run.trim().to_owned();
    let mut first = runner(&env, 0);
    wait(&env, &run, |d| d["tasks"][0]["state"] == "running");
    kill(&mut first);
    let mut second = runner(&env, 0);
    let details = wait(&env, &run, |d| d["state"] != "running");
    kill(&mut second);
    assert_eq!(details["state"], "failed", "{details:#}");
    let error = details["tasks"][0]["error"].as_str().unwrap();
    assert!(error.contains("died"), "{error}");
    env.run(&["rm", "--label", &format!("berth.run={run}")]);
}
