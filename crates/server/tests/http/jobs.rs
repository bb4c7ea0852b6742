//! Batch jobs over HTTP: a job sent as JSON runs on the `local` runtime by a
//! runner beside the server; its run's events, logs and patches are served,
//! errors carry the jobs service's codes, and a log read again after a
//! restart is the log followed live.

use super::*;
use berth_core::SystemClock;
use berth_jobs::{Jobs, Runner, RunnerConfig};
use berth_testkit::{git, make_repo};
use futures::StreamExt as _;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A runner of the server's registry, as `berth serve` runs its workers;
/// it stops when the token is cancelled.
fn start_runner(api: &Api) -> CancellationToken {
    let store = Arc::new(berth_store::Store::open(api.home.path()).unwrap());
    let jobs = Jobs::sqlite(store, Arc::new(SystemClock));
    let mut config = RunnerConfig::new("http-test-runner");
    config.slots = 4;
    config.heartbeat = Duration::from_millis(100);
    config.poll = Duration::from_millis(20);
    let runner = Runner::new(api.provider.clone(), jobs, config);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { runner.serve(stop).await });
    shutdown
}

/// `count` repositories `r0`… under `dir`, each with a `version.txt`.
fn repositories(dir: &Path, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let repo = dir.join(format!("r{i}"));
            make_repo(&repo, &[("version.txt", &format!("repo {i}\nversion 1\n"))]);
            repo.display().to_string()
        })
        .collect()
}

fn job(name: &str, urls: &[String], step: &str) -> Value {
    json!({
        "name": name,
        "runtime": "local",
        "repositories": urls.iter().map(|url| json!({ "url": url })).collect::<Vec<_>>(),
        "steps": [{ "name": "edit", "run": step }],
    })
}

/// Reads server-sent events until the stream ends: (event name, data).
async fn sse(response: reqwest::Response) -> Vec<(String, Value)> {
    let text = response.text().await.unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
        if !data.is_empty() {
            events.push((name, serde_json::from_str(&data).unwrap()));
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_sent_as_json_runs_and_its_events_logs_and_patches_are_served() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let urls = repositories(dir.path(), 3);
    let runner = start_runner(&api);
    let step = "sed -i 's/version 1/version 2/' version.txt && echo edited && echo warned >&2";
    let response = api
        .post("/v1/jobs")
        .json(&job("bump", &urls, step))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let run: Value = response.json().await.unwrap();
    let run_id = run["id"].as_str().unwrap().to_string();
    assert_eq!(run["job"], "bump");

    // The run's events: a snapshot, task changes, the run's end.
    let events = sse(api
        .get(&format!("/v1/runs/{run_id}/events"))
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap())
    .await;
    let (first, snapshot) = &events[0];
    assert_eq!(first, "snapshot");
    assert_eq!(snapshot["tasks"].as_array().unwrap().len(), 3);
    let (last, end) = events.last().unwrap();
    assert_eq!(last, "run", "{events:?}");
    assert_eq!(end["run"]["state"], "completed");
    for url in &urls {
        assert!(
            events.iter().any(|(name, e)| name == "task"
                && e["task"]["url"] == url.as_str()
                && e["task"]["state"] == "completed"),
            "no completion of {url}: {events:?}"
        );
    }

    // The run with its tasks.
    let (status, details) = api.json(api.get(&format!("/v1/runs/{run_id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(details["state"], "completed");
    for task in details["tasks"].as_array().unwrap() {
        assert_eq!(task["exit_code"], 0);
        assert!(task["patch_size"].as_u64().unwrap() > 0);
    }

    // Every patch, downloadable, applies to a fresh clone.
    let response = api
        .get(&format!("/v1/runs/{run_id}/tasks/r1/patch"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/x-diff");
    assert_eq!(
        response.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"r1.patch\""
    );
    let patch = response.bytes().await.unwrap();
    let clone = dir.path().join("check");
    git(
        dir.path(),
        &["clone", "--quiet", &urls[1], clone.to_str().unwrap()],
    );
    std::fs::write(dir.path().join("r1.patch"), &patch).unwrap();
    git(
        &clone,
        &["apply", dir.path().join("r1.patch").to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("version.txt")).unwrap(),
        "repo 1\nversion 2\n"
    );
    let all = api
        .get(&format!("/v1/runs/{run_id}/patch"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        all.headers()[header::CONTENT_DISPOSITION],
        format!("attachment; filename=\"{run_id}.patch\"").as_str()
    );
    let all = all.text().await.unwrap();
    assert_eq!(all.matches("diff --git a/version.txt").count(), 3, "{all}");

    // A task's log as a page, and followed (it has ended: all, then `end`).
    let (status, page) = api
        .json(api.get(&format!("/v1/runs/{run_id}/tasks/r0/log?limit=2")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    assert_eq!(page["done"], false);
    let next = page["next"].as_u64().unwrap();
    let (_, rest) = api
        .json(api.get(&format!("/v1/runs/{run_id}/tasks/r0/log?after={next}")))
        .await;
    assert_eq!(rest["done"], true, "{rest}");
    let lines = ndjson(
        api.get(&format!("/v1/runs/{run_id}/tasks/r0/log"))
            .header(header::ACCEPT, "application/x-ndjson")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let kinds = types(&lines);
    assert_eq!(kinds.last(), Some(&"end"));
    assert_eq!(lines.last().unwrap()["state"], "completed");
    assert!(
        kinds.contains(&"step_start") && kinds.contains(&"step_end"),
        "{kinds:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "stdout" && l["text"] == "edited\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "stderr" && l["text"] == "warned\n")
    );
    assert_eq!(
        lines.len() - 1,
        page["entries"].as_array().unwrap().len() + rest["entries"].as_array().unwrap().len()
    );

    // The job is listed with its last run; run again, it has two runs.
    let (_, jobs) = api.json(api.get("/v1/jobs")).await;
    assert_eq!(jobs["jobs"][0]["name"], "bump");
    assert_eq!(jobs["jobs"][0]["last_run"]["id"], run_id.as_str());
    let again = api.post("/v1/jobs/bump/runs").send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let (_, runs) = api.json(api.get("/v1/jobs/bump/runs")).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);

    // A schedule set and removed.
    let (status, record) = api
        .json(
            api.request(Method::PUT, "/v1/jobs/bump/schedule")
                .json(&json!({ "cron": "0 3 * * *" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["schedule"], "0 3 * * *");
    let (_, record) = api
        .json(api.request(Method::DELETE, "/v1/jobs/bump/schedule"))
        .await;
    assert_eq!(record["schedule"], Value::Null);
    runner.cancel();
}

#[tokio::test]
async fn unknown_malformed_and_conflicting_requests_get_the_jobs_codes() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let urls = repositories(dir.path(), 1);

    let (status, body) = api.json(api.post("/v1/jobs/nope/runs")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", &["nope"]);
    let (status, body) = api.json(api.get("/v1/runs/01nosuchrun")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["01nosuchrun"],
    );

    // A job sent whole names no file and no path relative to one.
    let mut relative = job("rel", &urls, "true");
    relative["repositories"][0]["url"] = json!("../elsewhere");
    let (status, body) = api.json(api.post("/v1/jobs").json(&relative)).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["repositories[0].url", "../elsewhere"],
    );
    let mut listed = job("listed", &urls, "true");
    listed["repositories_file"] = json!("/etc/passwd");
    let (status, body) = api.json(api.post("/v1/jobs").json(&listed)).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["repositories_file"],
    );
    let (status, body) = api
        .json(
            api.post("/v1/jobs")
                .json(&json!({ "name": "x", "steps": "no" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        &["steps"],
    );
    let (_, list) = api.json(api.get("/v1/jobs")).await;
    assert_eq!(list["jobs"], json!([]), "nothing was registered");

    // No runner: the task stays queued.
    let (status, run) = api
        .json(api.post("/v1/jobs").json(&job("q", &urls, "true")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run = run["id"].as_str().unwrap();
    let (status, body) = api
        .json(api.get(&format!("/v1/runs/{run}/tasks/no-such-repo")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no-such-repo"],
    );
    let (status, body) = api
        .json(api.get(&format!("/v1/runs/{run}/tasks/r0/log?limit=0")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        &["limit"],
    );
    // A queued task cannot be retried; cancelled, it cannot be cancelled again.
    let (status, body) = api
        .json(api.post(&format!("/v1/runs/{run}/tasks/r0/retry")))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "wrong_state", &[]);
    let (status, details) = api.json(api.post(&format!("/v1/runs/{run}/cancel"))).await;
    assert_eq!(status, StatusCode::OK, "{details}");
    assert_eq!(details["tasks"][0]["state"], "cancelled");
    let (status, body) = api
        .json(
            api.request(Method::PUT, "/v1/jobs/q/schedule")
                .json(&json!({ "cron": "every day" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["cron"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_followed_live_is_byte_identical_when_read_again_after_a_restart() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let urls = repositories(dir.path(), 1);
    let go = dir.path().join("go");
    let runner = start_runner(&api);
    // The step waits for the test's word, so that the log is followed
    // while the task runs.
    let step = format!(
        "echo started; while [ ! -e {go} ]; do sleep 0.02; done; printf 'a\\x01b\\n'; \
         seq 1 300; echo gone >&2",
        go = go.display()
    );
    let (status, run) = api
        .json(api.post("/v1/jobs").json(&job("live", &urls, &step)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run = run["id"].as_str().unwrap().to_string();

    let response = api
        .get(&format!("/v1/runs/{run}/tasks/r0/log"))
        .header(header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut live = Vec::new();
    // Live: what the step printed before it waits arrives while it waits.
    while !String::from_utf8_lossy(&live).contains("started") {
        live.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    let (_, task) = api.json(api.get(&format!("/v1/runs/{run}/tasks/r0"))).await;
    assert_eq!(task["state"], "running", "the log was followed live");
    // Its attempts: a count, and each one in `history`.
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(task["history"].as_array().unwrap().len(), 1, "{task}");
    std::fs::write(&go, "").unwrap();
    while let Some(chunk) = body.next().await {
        live.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8_lossy(&live);
    assert!(text.contains("\"type\":\"end\""), "{text}");
    assert!(text.contains("300\\n"), "{text}");
    runner.cancel();

    let home = api.shutdown().await;
    let again = Api::start_in(home, |config| config).await;
    let reread = again
        .get(&format!("/v1/runs/{run}/tasks/r0/log"))
        .header(header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&reread), text);
    assert_eq!(reread.as_ref(), live.as_slice());
}
