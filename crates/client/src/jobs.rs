//! Batch jobs through a server: `/v1/jobs` and `/v1/runs`, one method per
//! call of the jobs service.

use crate::{Client, ClientError, ErrorBody, NDJSON};
use berth_core::job::{JobRecord, Run};
use berth_jobs::api::{
    JobList, LogLine, LogPage, PublishRequest, PublishResponse, RunList, ScheduleRequest,
};
use berth_jobs::{JobSpec, JobSummary, Published, RunDetails, TaskDetails};
use futures::{Stream, StreamExt as _};
use reqwest::Method;
use serde::Deserialize;

/// A line of a followed log: a line, or the error that ended it.
#[derive(Deserialize)]
#[serde(untagged)]
enum FollowedLine {
    Line(LogLine),
    Error { error: ErrorBody },
}

/// One path segment, percent-encoded (a task may be named by its URL).
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn run_path(run: &str, rest: &str) -> String {
    format!("/v1/runs/{}{rest}", segment(run))
}

fn task_path(run: &str, task: &str, rest: &str) -> String {
    format!("/v1/runs/{}/tasks/{}{rest}", segment(run), segment(task))
}

impl Client {
    /// Registers a job from its spec (resolved by the caller: absolute
    /// repository paths, no `repositories_file`) and starts a run.
    pub async fn start_job(&self, spec: &JobSpec) -> Result<Run, ClientError> {
        self.json(self.request(Method::POST, "/v1/jobs")?.json(spec))
            .await
    }

    /// Starts a new run of a registered job.
    pub async fn run_job(&self, job: &str) -> Result<Run, ClientError> {
        let path = format!("/v1/jobs/{}/runs", segment(job));
        self.json(self.request(Method::POST, &path)?).await
    }

    pub async fn jobs(&self) -> Result<Vec<JobSummary>, ClientError> {
        let request = self.request(Method::GET, "/v1/jobs")?;
        Ok(self.json::<JobList>(request).await?.jobs)
    }

    /// A job's runs and the scheduled times at which none started.
    pub async fn runs(&self, job: &str) -> Result<RunList, ClientError> {
        let path = format!("/v1/jobs/{}/runs", segment(job));
        self.json(self.request(Method::GET, &path)?).await
    }

    pub async fn job_run(&self, run: &str) -> Result<RunDetails, ClientError> {
        self.json(self.request(Method::GET, &run_path(run, ""))?)
            .await
    }

    /// A task of a run, by id, repository URL or name.
    pub async fn task(&self, run: &str, task: &str) -> Result<TaskDetails, ClientError> {
        self.json(self.request(Method::GET, &task_path(run, task, ""))?)
            .await
    }

    pub async fn log_page(
        &self,
        run: &str,
        task: &str,
        after: u64,
        limit: u32,
    ) -> Result<LogPage, ClientError> {
        let request = self
            .request(Method::GET, &task_path(run, task, "/log"))?
            .query(&[("after", after), ("limit", u64::from(limit))]);
        self.json(request).await
    }

    /// A task's log after `after`, as it is written, then its `end`.
    pub async fn follow_log(
        &self,
        run: &str,
        task: &str,
        after: u64,
    ) -> Result<impl Stream<Item = Result<LogLine, ClientError>> + Send + use<>, ClientError> {
        let request = self
            .request(Method::GET, &task_path(run, task, "/log"))?
            .query(&[("after", after)])
            .header(reqwest::header::ACCEPT, NDJSON);
        let response = self.send(request).await?;
        Ok(self
            .lines::<FollowedLine>(response)
            .map(|line| match line? {
                FollowedLine::Line(line) => Ok(line),
                FollowedLine::Error { error } => Err(ClientError::Api {
                    status: 500,
                    code: error.code,
                    message: error.message,
                }),
            }))
    }

    /// A task's patch; empty when it made none.
    pub async fn task_patch(&self, run: &str, task: &str) -> Result<Vec<u8>, ClientError> {
        let request = self.request(Method::GET, &task_path(run, task, "/patch"))?;
        let body = self.send(request).await?.bytes().await;
        Ok(body.map_err(|e| self.unreachable(e))?.to_vec())
    }

    /// Cancels a run, or one task of it.
    pub async fn cancel_run(
        &self,
        run: &str,
        task: Option<&str>,
    ) -> Result<RunDetails, ClientError> {
        let path = match task {
            Some(task) => task_path(run, task, "/cancel"),
            None => run_path(run, "/cancel"),
        };
        self.json(self.request(Method::POST, &path)?).await
    }

    /// Queues again a run's failed tasks, or one task.
    pub async fn retry_run(
        &self,
        run: &str,
        task: Option<&str>,
    ) -> Result<RunDetails, ClientError> {
        let path = match task {
            Some(task) => task_path(run, task, "/retry"),
            None => run_path(run, "/retry"),
        };
        self.json(self.request(Method::POST, &path)?).await
    }

    pub async fn publish(
        &self,
        run: &str,
        branch: &str,
        message: Option<&str>,
    ) -> Result<Vec<Published>, ClientError> {
        let request = self
            .request(Method::POST, &run_path(run, "/publish"))?
            .json(&PublishRequest {
                branch: branch.into(),
                message: message.map(str::to_owned),
            });
        Ok(self.json::<PublishResponse>(request).await?.published)
    }

    /// Sets (or with `None` removes) a job's schedule.
    pub async fn schedule(&self, job: &str, cron: Option<&str>) -> Result<JobRecord, ClientError> {
        let path = format!("/v1/jobs/{}/schedule", segment(job));
        let request = match cron {
            Some(cron) => self
                .request(Method::PUT, &path)?
                .json(&ScheduleRequest { cron: cron.into() }),
            None => self.request(Method::DELETE, &path)?,
        };
        self.json(request).await
    }
}
