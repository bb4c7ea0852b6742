//! Batch jobs under `/v1/jobs` and `/v1/runs`: one handler per call of the
//! jobs service ([`berth_jobs::Jobs`]), each translating the request into
//! that call and its answer into HTTP. Logs and a run's live state stream
//! as server-sent events or NDJSON; patches download as files.

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiQuery};
use crate::stream::{Format, negotiate, streamed};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::job::{JobRecord, Run};
use berth_jobs::api::{
    JobList, LOG_PAGE_MAX, LogLine, LogPage, PublishRequest, PublishResponse, RunEvent, RunList,
    ScheduleRequest,
};
use berth_jobs::service::patch_stem;
use berth_jobs::{JobSpec, RunDetails, TaskDetails};
use futures::StreamExt as _;
use serde::Deserialize;
use std::time::Duration;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How often a followed log or run is read again while nothing changed.
/// The server's own workers wake followers as they write; this slow poll
/// is for a `berth runner` process on the same home, whose writes only the
/// registry carries.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// The media type of a patch.
const PATCH_TYPE: &str = "text/x-diff";

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_job, list_jobs))
        .routes(routes!(run_job, list_runs))
        .routes(routes!(set_schedule, remove_schedule))
        .routes(routes!(get_run))
        .routes(routes!(run_events))
        .routes(routes!(cancel_run))
        .routes(routes!(retry_run))
        .routes(routes!(publish_run))
        .routes(routes!(run_patch))
        .routes(routes!(get_task))
        .routes(routes!(task_log))
        .routes(routes!(task_patch))
        .routes(routes!(cancel_task))
        .routes(routes!(retry_task))
}

/// The job a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobRef {
    /// The job's name.
    pub job: String,
}

/// The run a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunRef {
    /// A run id or a unique prefix of one.
    pub run: String,
}

/// The task of a run a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TaskRef {
    /// A run id or a unique prefix of one.
    pub run: String,
    /// A task id (or a unique prefix), its repository's URL (percent-encoded)
    /// or the URL's last path segment without `.git`.
    pub task: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Entries after this position (0: from the start).
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: u64,
    /// At most this many entries in a page (1 to 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Follow the log as NDJSON (same as `Accept: application/x-ndjson`).
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Stream as NDJSON (same as `Accept: application/x-ndjson`).
    #[serde(default)]
    pub stream: bool,
}

fn created(run: Run) -> Response {
    let location = HeaderValue::from_str(&format!("/v1/runs/{}", run.id));
    let mut response = (StatusCode::CREATED, Json(run)).into_response();
    if let Ok(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Registers a job from its spec (replacing the spec of a job of the same
/// name) and starts a run of it.
///
/// The spec stands on its own: repositories are absolute paths or URLs
/// (a client reading a job file resolves paths relative to it), and
/// `repositories_file` is refused (its list belongs in `repositories`).
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = JobSpec,
    responses(
        (status = 201, description = "The run, queued", body = Run,
            headers(("Location" = String, description = "The run's URL"))),
        (status = 400, description = "A malformed or invalid spec", body = ErrorResponse),
    )
)]
pub(crate) async fn start_job(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<Response, ApiError> {
    Ok(created(state.jobs.submit(&spec).await?))
}

/// Lists jobs, by name, each with its last run.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    responses((status = 200, description = "The jobs", body = JobList))
)]
pub(crate) async fn list_jobs(State(state): State<AppState>) -> Result<Json<JobList>, ApiError> {
    Ok(Json(JobList {
        jobs: state.jobs.jobs()?,
    }))
}

/// Starts a new run of a registered job with its registered spec.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job}/runs",
    tag = "jobs",
    params(JobRef),
    responses(
        (status = 201, description = "The run, queued", body = Run,
            headers(("Location" = String, description = "The run's URL"))),
        (status = 404, description = "No such job", body = ErrorResponse),
    )
)]
pub(crate) async fn run_job(
    State(state): State<AppState>,
    Path(JobRef { job }): Path<JobRef>,
) -> Result<Response, ApiError> {
    Ok(created(state.jobs.run_again(&job).await?))
}

/// Lists a job's runs, oldest first, and the scheduled times at which no
/// run started.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job}/runs",
    tag = "jobs",
    params(JobRef),
    responses(
        (status = 200, description = "The runs", body = RunList),
        (status = 404, description = "No such job", body = ErrorResponse),
    )
)]
pub(crate) async fn list_runs(
    State(state): State<AppState>,
    Path(JobRef { job }): Path<JobRef>,
) -> Result<Json<RunList>, ApiError> {
    Ok(Json(RunList {
        runs: state.jobs.runs(&job)?,
        skipped: state.jobs.skipped_times(&job)?,
    }))
}

/// Sets a job's schedule: the server starts a run at each time of the cron
/// expression (UTC), unless the previous run is still going.
#[utoipa::path(
    put,
    path = "/v1/jobs/{job}/schedule",
    tag = "jobs",
    params(JobRef),
    request_body = ScheduleRequest,
    responses(
        (status = 200, description = "The job", body = JobRecord),
        (status = 400, description = "Not a cron expression", body = ErrorResponse),
        (status = 404, description = "No such job", body = ErrorResponse),
    )
)]
pub(crate) async fn set_schedule(
    State(state): State<AppState>,
    Path(JobRef { job }): Path<JobRef>,
    ApiJson(request): ApiJson<ScheduleRequest>,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(state.jobs.schedule(&job, Some(&request.cron))?))
}

/// Removes a job's schedule.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{job}/schedule",
    tag = "jobs",
    params(JobRef),
    responses(
        (status = 200, description = "The job", body = JobRecord),
        (status = 404, description = "No such job", body = ErrorResponse),
    )
)]
pub(crate) async fn remove_schedule(
    State(state): State<AppState>,
    Path(JobRef { job }): Path<JobRef>,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(state.jobs.schedule(&job, None)?))
}

/// A run and each of its tasks: repository, state, exit code, failing
/// step, attempts, times, patch size, and the workspace kept, if any.
#[utoipa::path(
    get,
    path = "/v1/runs/{run}",
    tag = "runs",
    params(RunRef),
    responses(
        (status = 200, description = "The run", body = RunDetails),
        (status = 400, description = "An ambiguous run id prefix", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
    )
)]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    Path(RunRef { run }): Path<RunRef>,
) -> Result<Json<RunDetails>, ApiError> {
    Ok(Json(state.jobs.run(&run)?))
}

/// A run's live state as server-sent events (or NDJSON): a `snapshot` of
/// the run and its tasks, then a `task` event each time a task changes and
/// a `run` event each time the run's state does, ending once the run has
/// ended.
#[utoipa::path(
    get,
    path = "/v1/runs/{run}/events",
    tag = "runs",
    params(RunRef, EventsQuery),
    responses(
        (status = 200, description = "The run's events", content(
            (RunEvent = "text/event-stream"),
            (RunEvent = "application/x-ndjson"))),
        (status = 400, description = "An ambiguous run id prefix", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
    )
)]
pub(crate) async fn run_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
    Path(RunRef { run }): Path<RunRef>,
) -> Result<Response, ApiError> {
    // Looked up first, so that an unknown run is a 404, not a stream.
    let run = state.jobs.run(&run)?.run.id;
    let format = match negotiate(&headers, query.stream) {
        Format::Json => Format::Sse,
        other => other,
    };
    let events = berth_jobs::follow::run(state.jobs, run, FOLLOW_POLL).map(stream_item);
    Ok(streamed(format, events))
}

/// Cancels a run: its queued tasks never start, its running ones are ended.
#[utoipa::path(
    post,
    path = "/v1/runs/{run}/cancel",
    tag = "runs",
    params(RunRef),
    responses(
        (status = 200, description = "The run", body = RunDetails),
        (status = 400, description = "An ambiguous run id prefix", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run has ended", body = ErrorResponse),
    )
)]
pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    Path(RunRef { run }): Path<RunRef>,
) -> Result<Json<RunDetails>, ApiError> {
    Ok(Json(state.jobs.cancel(&run, None).await?))
}

/// Queues again every task of a run that did not complete; earlier
/// attempts stay.
#[utoipa::path(
    post,
    path = "/v1/runs/{run}/retry",
    tag = "runs",
    params(RunRef),
    responses(
        (status = 200, description = "The run", body = RunDetails),
        (status = 400, description = "An ambiguous run id prefix", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "A task is still running", body = ErrorResponse),
    )
)]
pub(crate) async fn retry_run(
    State(state): State<AppState>,
    Path(RunRef { run }): Path<RunRef>,
) -> Result<Json<RunDetails>, ApiError> {
    Ok(Json(state.jobs.retry(&run, None).await?))
}

/// Pushes each completed task's change as `branch` of its repository; a
/// push that fails is reported for its repository and the others go on.
#[utoipa::path(
    post,
    path = "/v1/runs/{run}/publish",
    tag = "runs",
    params(RunRef),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "What each push did", body = PublishResponse),
        (status = 400, description = "An invalid branch name, or an ambiguous run id prefix", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
    )
)]
pub(crate) async fn publish_run(
    State(state): State<AppState>,
    Path(RunRef { run }): Path<RunRef>,
    ApiJson(request): ApiJson<PublishRequest>,
) -> Result<Json<PublishResponse>, ApiError> {
    let published = state
        .jobs
        .publish(
            &state.provider,
            &run,
            &request.branch,
            request.message.as_deref(),
        )
        .await?;
    Ok(Json(PublishResponse { published }))
}

/// Every completed task's patch, one after the other in the run's order:
/// one file that `git apply` takes in each repository's checkout. Empty
/// when no task completed.
#[utoipa::path(
    get,
    path = "/v1/runs/{run}/patch",
    tag = "runs",
    params(RunRef),
    responses(
        (status = 200, description = "The patches", content((String = "text/x-diff")),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<run>.patch\"`"))),
        (status = 400, description = "An ambiguous run id prefix", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
    )
)]
pub(crate) async fn run_patch(
    State(state): State<AppState>,
    Path(RunRef { run }): Path<RunRef>,
) -> Result<Response, ApiError> {
    let (run, patches) = state.jobs.run_patch(&run)?;
    Ok(patch_response(&run, patches))
}

/// A task of a run with every attempt it made.
#[utoipa::path(
    get,
    path = "/v1/runs/{run}/tasks/{task}",
    tag = "runs",
    params(TaskRef),
    responses(
        (status = 200, description = "The task", body = TaskDetails),
        (status = 400, description = "An ambiguous run id prefix or task", body = ErrorResponse),
        (status = 404, description = "No such run or task", body = ErrorResponse),
    )
)]
pub(crate) async fn get_task(
    State(state): State<AppState>,
    Path(TaskRef { run, task }): Path<TaskRef>,
) -> Result<Json<TaskDetails>, ApiError> {
    Ok(Json(state.jobs.task(&run, &task)?))
}

/// A task's log: each step's start, output and end, with berth's notes,
/// as persisted (it survives restarts).
///
/// By default a page of entries after `after`. With
/// `Accept: text/event-stream` or `application/x-ndjson` (or
/// `?stream=true`) the log is followed: every entry after `after` as it is
/// written (in SSE each event is named by the entry's `type`), then an
/// `end` event with the task's final state.
#[utoipa::path(
    get,
    path = "/v1/runs/{run}/tasks/{task}/log",
    tag = "runs",
    params(TaskRef, LogQuery),
    responses(
        (status = 200, description = "A page of the log, or the log followed", content(
            (LogPage = "application/json"),
            (LogLine = "text/event-stream"),
            (LogLine = "application/x-ndjson"))),
        (status = 400, description = "A limit out of range, or an ambiguous run id prefix or task", body = ErrorResponse),
        (status = 404, description = "No such run or task", body = ErrorResponse),
    )
)]
pub(crate) async fn task_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<LogQuery>,
    Path(TaskRef { run, task }): Path<TaskRef>,
) -> Result<Response, ApiError> {
    let limit = match query.limit {
        None => LOG_PAGE_MAX,
        Some(limit @ 1..=LOG_PAGE_MAX) => limit,
        Some(limit) => {
            return Err(ApiError::new(
                "invalid_query",
                format!("`limit`: {limit} is out of range; give 1 to {LOG_PAGE_MAX}"),
            ));
        }
    };
    let task = state.jobs.task(&run, &task)?.task;
    let format = negotiate(&headers, query.stream);
    if format != Format::Json {
        let lines =
            berth_jobs::follow::log(state.jobs, task.id, query.after, FOLLOW_POLL).map(stream_item);
        return Ok(streamed(format, lines));
    }
    Ok(Json(state.jobs.log_page(&task.id, query.after, limit)?).into_response())
}

/// A task's patch: its repository's changes against the commit its
/// workspace was provisioned at, `git apply`-able. Empty when it made none.
#[utoipa::path(
    get,
    path = "/v1/runs/{run}/tasks/{task}/patch",
    tag = "runs",
    params(TaskRef),
    responses(
        (status = 200, description = "The patch", content((String = "text/x-diff")),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<repository>.patch\"`"))),
        (status = 400, description = "An ambiguous run id prefix or task", body = ErrorResponse),
        (status = 404, description = "No such run or task", body = ErrorResponse),
    )
)]
pub(crate) async fn task_patch(
    State(state): State<AppState>,
    Path(TaskRef { run, task }): Path<TaskRef>,
) -> Result<Response, ApiError> {
    let task = state.jobs.task(&run, &task)?.task;
    let patch = state.jobs.patch(&task.id)?;
    Ok(patch_response(&patch_stem(&task.url), patch))
}

/// Cancels one task of a run.
#[utoipa::path(
    post,
    path = "/v1/runs/{run}/tasks/{task}/cancel",
    tag = "runs",
    params(TaskRef),
    responses(
        (status = 200, description = "The run", body = RunDetails),
        (status = 400, description = "An ambiguous run id prefix or task", body = ErrorResponse),
        (status = 404, description = "No such run or task", body = ErrorResponse),
        (status = 409, description = "The task has ended", body = ErrorResponse),
    )
)]
pub(crate) async fn cancel_task(
    State(state): State<AppState>,
    Path(TaskRef { run, task }): Path<TaskRef>,
) -> Result<Json<RunDetails>, ApiError> {
    Ok(Json(state.jobs.cancel(&run, Some(&task)).await?))
}

/// Queues one task of a run again; its earlier attempts stay.
#[utoipa::path(
    post,
    path = "/v1/runs/{run}/tasks/{task}/retry",
    tag = "runs",
    params(TaskRef),
    responses(
        (status = 200, description = "The run", body = RunDetails),
        (status = 400, description = "An ambiguous run id prefix or task", body = ErrorResponse),
        (status = 404, description = "No such run or task", body = ErrorResponse),
        (status = 409, description = "The task is still queued or running", body = ErrorResponse),
    )
)]
pub(crate) async fn retry_task(
    State(state): State<AppState>,
    Path(TaskRef { run, task }): Path<TaskRef>,
) -> Result<Json<RunDetails>, ApiError> {
    Ok(Json(state.jobs.retry(&run, Some(&task)).await?))
}

/// A streamed item, or the error line that ends the stream.
fn stream_item<T: serde::Serialize>(item: Result<T, berth_jobs::JobError>) -> serde_json::Value {
    match item {
        Ok(item) => serde_json::to_value(item).unwrap_or_default(),
        Err(err) => {
            serde_json::to_value(crate::stream::ErrorLine::new(err.into())).unwrap_or_default()
        }
    }
}

/// A patch as a download named `<stem>.patch`.
fn patch_response(stem: &str, patch: Vec<u8>) -> Response {
    let disposition = format!("attachment; filename=\"{stem}.patch\"");
    let mut response = Bytes::from(patch).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PATCH_TYPE));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
