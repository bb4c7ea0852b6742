//! Jobs, runs and their tasks over NATS: each request translated into one
//! call of the jobs service ([`berth_jobs::Jobs`]), as the HTTP routes
//! under `/v1/jobs` and `/v1/runs` do. A followed log and a run's events
//! stream as `item`s, patches as chunks of bytes.

use crate::Frame;
use crate::protocol::{
    JobArgs, LogArgs, Op, PublishArgs, RunArgs, RunTaskArgs, ScheduleArgs, TaskArgs,
};
use crate::service::{answered, chunked, json, with_args};
use berth_jobs::api::{JobList, LOG_PAGE_MAX, PublishResponse, RunList};
use berth_jobs::{JobError, JobSpec, Jobs};
use berth_provider::Provider;
use futures::StreamExt as _;
use futures::stream::{self, BoxStream};
use serde::Serialize;
use std::time::Duration;

/// How often a followed log or run is read again while nothing changed,
/// as over HTTP: the server's own workers wake followers as they write.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// The frames answering a request about jobs. `provider` is the one
/// publishing pushes through.
pub(crate) fn answer(
    op: Op,
    jobs: &Jobs,
    provider: &Provider,
    payload: &[u8],
) -> BoxStream<'static, Frame> {
    let jobs = jobs.clone();
    match op {
        Op::JobStart => with_args(op, payload, |spec: JobSpec| {
            answered(async move { jobs.submit(&spec).await })
        }),
        Op::JobList => answered(async move { Ok::<_, JobError>(JobList { jobs: jobs.jobs()? }) }),
        Op::JobRerun => with_args(op, payload, |args: JobArgs| {
            answered(async move { jobs.run_again(&args.job).await })
        }),
        Op::JobRuns => with_args(op, payload, |args: JobArgs| {
            answered(async move {
                Ok::<_, JobError>(RunList {
                    runs: jobs.runs(&args.job)?,
                    skipped: jobs.skipped_times(&args.job)?,
                })
            })
        }),
        Op::JobSchedule => with_args(op, payload, |args: ScheduleArgs| {
            answered(async move { jobs.schedule(&args.job, args.cron.as_deref()) })
        }),
        Op::RunShow => with_args(op, payload, |args: RunArgs| {
            answered(async move { jobs.run(&args.run) })
        }),
        Op::RunEvents => with_args(op, payload, |args: RunArgs| {
            // Looked up first, so that an unknown run is an error, not a
            // stream.
            opened(async move {
                let run = jobs.run(&args.run)?.run.id;
                Ok(followed(berth_jobs::follow::run(jobs, run, FOLLOW_POLL)))
            })
        }),
        Op::RunCancel => with_args(op, payload, |args: RunTaskArgs| {
            answered(async move { jobs.cancel(&args.run, args.task.as_deref()).await })
        }),
        Op::RunRetry => with_args(op, payload, |args: RunTaskArgs| {
            answered(async move { jobs.retry(&args.run, args.task.as_deref()).await })
        }),
        Op::RunPublish => {
            let provider = provider.clone();
            with_args(op, payload, |args: PublishArgs| {
                answered(async move {
                    let published = jobs
                        .publish(&provider, &args.run, &args.branch, args.message.as_deref())
                        .await?;
                    Ok::<_, JobError>(PublishResponse { published })
                })
            })
        }
        Op::RunPatch => with_args(op, payload, |args: RunArgs| {
            opened(async move { Ok(chunked(jobs.run_patch(&args.run)?.1)) })
        }),
        Op::TaskShow => with_args(op, payload, |args: TaskArgs| {
            answered(async move { jobs.task(&args.run, &args.task) })
        }),
        Op::TaskLog => with_args(op, payload, |args: LogArgs| {
            opened(async move {
                let task = jobs.task(&args.run, &args.task)?.task;
                if args.follow {
                    return Ok(followed(berth_jobs::follow::log(
                        jobs,
                        task.id,
                        args.after,
                        FOLLOW_POLL,
                    )));
                }
                let page = jobs.log_page(&task.id, args.after, LOG_PAGE_MAX)?;
                Ok(stream::iter([Frame::Done(json(&page))]).boxed())
            })
        }),
        Op::TaskPatch => with_args(op, payload, |args: TaskArgs| {
            opened(async move {
                let task = jobs.task(&args.run, &args.task)?.task;
                Ok(chunked(jobs.patch(&task.id)?))
            })
        }),
        other => stream::once(async move {
            Frame::Failed(berth_server::ErrorBody {
                code: "internal".into(),
                message: format!("`{}` is not an operation on jobs", other.subject()),
            })
        })
        .boxed(),
    }
}

/// The frames of an answer that is looked up first: its error, if the
/// lookup fails, is the answer's only frame.
fn opened(
    open: impl Future<Output = Result<BoxStream<'static, Frame>, JobError>> + Send + 'static,
) -> BoxStream<'static, Frame> {
    stream::once(async move {
        match open.await {
            Ok(frames) => frames,
            Err(err) => stream::once(async move { Frame::Failed(err.into()) }).boxed(),
        }
    })
    .flatten()
    .boxed()
}

/// Items as the jobs service yields them, then `done`; an error ends the
/// answer.
fn followed<T: Serialize>(
    items: impl futures::Stream<Item = Result<T, JobError>> + Send + 'static,
) -> BoxStream<'static, Frame> {
    items
        .map(|item| match item {
            Ok(item) => Frame::Item(json(&item)),
            Err(err) => Frame::Failed(err.into()),
        })
        .chain(stream::once(async { Frame::Done(bytes::Bytes::new()) }))
        .boxed()
}
