//! `berth job …` and `berth runner`: batch jobs from the command line,
//! each subcommand one call of the jobs service.
//!
//! `berth job run` queues a run for whatever runs tasks (the workers of
//! `berth serve`, a `berth runner`); with `--wait` this process also runs
//! tasks until the run ends, so no daemon is needed.

use crate::backend::Backend;
use crate::quote::quoted;
use anyhow::{Context, Result, bail};
use berth_client::Client;
use berth_core::SystemClock;
use berth_core::job::{JobRecord, LogEntry, LogEvent, Run, RunState, Task, TaskState};
use berth_jobs::api::{LogLine, LogPage, RunList};
use berth_jobs::service::{patch_stem, repository_name};
use berth_jobs::{
    JobSpec, JobSummary, Jobs, Published, RunDetails, Runner, RunnerConfig, SqliteQueue,
};
use berth_nats_api::NatsClient;
use berth_provider::Provider;
use futures::stream::{BoxStream, FusedStream as _};
use futures::{FutureExt as _, StreamExt as _};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Start a run of a job file (JSON, TOML or YAML); prints the run id
    /// as the last line.
    Run {
        file: PathBuf,
        /// Run the tasks here too and wait for the run to end: the run id
        /// first, a progress line per running task, then a summary; exits
        /// 0 only if every task succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// List jobs with their last run.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// List the runs of a job.
    Runs {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a run and each of its tasks.
    Show {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the log of a run's tasks, or of one (by id, URL or name).
    Logs {
        run: String,
        task: Option<String>,
        /// Follow the log as it is written until the task ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print every succeeded task's patch, or write each to DIR/<repo>.patch.
    Patch {
        run: String,
        task: Option<String>,
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Cancel a run, or one of its tasks.
    Cancel { run: String, task: Option<String> },
    /// Queue again a run's failed tasks (`--failed`), or one task.
    Retry {
        run: String,
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        task: Option<String>,
        #[arg(long)]
        failed: bool,
    },
    /// Push each succeeded task's change as a branch of its repository.
    Publish {
        run: String,
        #[arg(long)]
        branch: String,
        /// The commit message; `berth job JOB` when absent.
        #[arg(long)]
        message: Option<String>,
    },
    /// Set or remove a job's schedule.
    Schedule {
        job: String,
        /// A cron expression (UTC).
        #[arg(long, required_unless_present = "off", conflicts_with = "off")]
        cron: Option<String>,
        #[arg(long)]
        off: bool,
    },
}

/// The runner's settings from the environment: how often it heartbeats
/// (`BERTH_JOB_HEARTBEAT`, seconds), how long a silent runner's task waits
/// before it is requeued (`BERTH_JOB_STALL`) and how often (`BERTH_JOB_RESETS`).
pub struct RunnerSettings {
    pub heartbeat: Duration,
    pub stall: Duration,
    pub resets: u32,
}

impl RunnerSettings {
    pub fn from_env() -> Result<Self> {
        let secs = |name: &str, default: f64| -> Result<Duration> {
            match std::env::var(name) {
                Ok(text) => text
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .with_context(|| {
                        format!("{name}: `{text}` is not a positive number of seconds")
                    }),
                Err(_) => Ok(Duration::from_secs_f64(default)),
            }
        };
        let resets = match std::env::var("BERTH_JOB_RESETS") {
            Ok(text) => text
                .parse()
                .with_context(|| format!("BERTH_JOB_RESETS: `{text}` is not a count"))?,
            Err(_) => berth_jobs::queue::DEFAULT_MAX_RESETS,
        };
        Ok(RunnerSettings {
            heartbeat: secs("BERTH_JOB_HEARTBEAT", 5.0)?,
            stall: secs("BERTH_JOB_STALL", 60.0)?,
            resets,
        })
    }
}

/// The jobs service over berth's registry, and a runner of its queue.
pub fn open(provider: &Provider, slots: usize) -> Result<(Jobs, Runner)> {
    let settings = RunnerSettings::from_env()?;
    let store = Arc::new(berth_store::Store::open(provider.home())?);
    let clock = Arc::new(SystemClock);
    let queue = Arc::new(
        SqliteQueue::new(store.clone(), clock.clone()).with_stall(settings.stall, settings.resets),
    );
    let jobs = Jobs::new(store, queue, clock);
    let mut config = RunnerConfig::new(format!("{}-{}", host_name(), std::process::id()));
    config.slots = slots.max(1);
    config.heartbeat = settings.heartbeat;
    let runner = Runner::new(provider.clone(), jobs.clone(), config);
    Ok((jobs, runner))
}

pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// `berth runner`: runs tasks until interrupted.
pub async fn runner(provider: Provider, slots: usize) -> Result<ExitCode> {
    let (_, runner) = open(&provider, slots)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    eprintln!("berth runner: running tasks ({slots} at once)");
    runner.serve(shutdown).await;
    Ok(ExitCode::SUCCESS)
}

/// Where the job commands go: the jobs service in this process (which also
/// runs tasks while `run --wait` waits), or a server's, over HTTP or NATS.
enum Service {
    Here {
        provider: Provider,
        jobs: Jobs,
        runner: Runner,
    },
    Server(Client),
    Nats(NatsClient),
}

/// Log entries read at once.
const LOG_PAGE: u32 = 1000;

/// How often a followed log or a waited-for run is read again. Writes of
/// this process's own runner wake a followed log at once; the tasks of a
/// `berth serve` or `berth runner` on the same home reach it only through
/// the registry, read this often.
const POLL: Duration = Duration::from_millis(200);

impl Service {
    fn open(backend: &Backend) -> Result<Service> {
        Ok(match backend {
            Backend::Local(provider) => {
                let (jobs, runner) = open(provider, 8)?;
                Service::Here {
                    provider: provider.clone(),
                    jobs,
                    runner,
                }
            }
            Backend::Remote(client) => Service::Server(client.clone()),
            Backend::Nats(client) => Service::Nats(client.clone()),
        })
    }

    async fn start(&self, spec: &JobSpec) -> Result<Run> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.start(spec).await?,
            Service::Server(client) => client.start_job(spec).await?,
            Service::Nats(client) => client.start_job(spec).await?,
        })
    }

    async fn jobs(&self) -> Result<Vec<JobSummary>> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.jobs()?,
            Service::Server(client) => client.jobs().await?,
            Service::Nats(client) => client.jobs().await?,
        })
    }

    async fn runs(&self, job: &str) -> Result<RunList> {
        Ok(match self {
            Service::Here { jobs, .. } => RunList {
                runs: jobs.runs(job)?,
                skipped: jobs.skipped_times(job)?,
            },
            Service::Server(client) => client.runs(job).await?,
            Service::Nats(client) => client.runs(job).await?,
        })
    }

    async fn run(&self, run: &str) -> Result<RunDetails> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.run(run)?,
            Service::Server(client) => client.job_run(run).await?,
            Service::Nats(client) => client.job_run(run).await?,
        })
    }

    async fn task(&self, run: &str, task: &str) -> Result<Task> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.task(run, task)?.task,
            Service::Server(client) => client.task(run, task).await?.task,
            Service::Nats(client) => client.task(run, task).await?.task,
        })
    }

    async fn log_page(&self, task: &Task, after: u64) -> Result<LogPage> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.log_page(&task.id, after, LOG_PAGE)?,
            Service::Server(client) => {
                client
                    .log_page(&task.run_id, &task.id, after, LOG_PAGE)
                    .await?
            }
            Service::Nats(client) => client.log_page(&task.run_id, &task.id, after).await?,
        })
    }

    /// A task's log as it is written, then its `end`.
    async fn follow_log(&self, task: &Task) -> Result<BoxStream<'static, Result<LogLine>>> {
        Ok(match self {
            Service::Here { jobs, .. } => {
                berth_jobs::follow::log(jobs.clone(), task.id.clone(), 0, POLL)
                    .map(|line| line.map_err(anyhow::Error::from))
                    .boxed()
            }
            Service::Server(client) => client
                .follow_log(&task.run_id, &task.id, 0)
                .await?
                .map(|line| line.map_err(anyhow::Error::from))
                .boxed(),
            Service::Nats(client) => client
                .follow_log(&task.run_id, &task.id, 0)
                .await?
                .map(|line| line.map_err(anyhow::Error::from))
                .boxed(),
        })
    }

    async fn patch(&self, task: &Task) -> Result<Vec<u8>> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.patch(&task.id)?,
            Service::Server(client) => client.task_patch(&task.run_id, &task.id).await?,
            Service::Nats(client) => client.task_patch(&task.run_id, &task.id).await?,
        })
    }

    async fn cancel(&self, run: &str, task: Option<&str>) -> Result<RunDetails> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.cancel(run, task).await?,
            Service::Server(client) => client.cancel_run(run, task).await?,
            Service::Nats(client) => client.cancel_run(run, task).await?,
        })
    }

    async fn retry(&self, run: &str, task: Option<&str>) -> Result<RunDetails> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.retry(run, task).await?,
            Service::Server(client) => client.retry_run(run, task).await?,
            Service::Nats(client) => client.retry_run(run, task).await?,
        })
    }

    async fn publish(
        &self,
        run: &str,
        branch: &str,
        message: Option<&str>,
    ) -> Result<Vec<Published>> {
        Ok(match self {
            Service::Here { provider, jobs, .. } => {
                jobs.publish(provider, run, branch, message).await?
            }
            Service::Server(client) => client.publish(run, branch, message).await?,
            Service::Nats(client) => client.publish(run, branch, message).await?,
        })
    }

    async fn schedule(&self, job: &str, cron: Option<&str>) -> Result<JobRecord> {
        Ok(match self {
            Service::Here { jobs, .. } => jobs.schedule(job, cron)?,
            Service::Server(client) => client.schedule(job, cron).await?,
            Service::Nats(client) => client.schedule(job, cron).await?,
        })
    }
}

pub async fn command(backend: &Backend, command: JobCommand) -> Result<ExitCode> {
    let service = Service::open(backend)?;
    let mut out = std::io::stdout().lock();
    match command {
        JobCommand::Run { file, wait } => {
            // Read here, relative paths and `repositories_file` resolved
            // against the file, whichever service runs it.
            let spec = JobSpec::from_file(&file)?;
            let run = service.start(&spec).await?;
            writeln!(out, "{}", run.id)?;
            if wait {
                drop(out);
                return wait_for(service, &run.id).await;
            }
        }
        JobCommand::Ls { json } => {
            let list = service.jobs().await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<28} {:<10} SCHEDULE",
                    "JOB", "LAST RUN", "STATE"
                )?;
                for job in list {
                    let (id, state) = match &job.last_run {
                        Some(run) => (run.id.clone(), run.state.to_string()),
                        None => ("-".into(), "-".into()),
                    };
                    let schedule = job.job.schedule.as_deref().unwrap_or("-");
                    writeln!(out, "{:<24} {id:<28} {state:<10} {schedule}", job.job.name)?;
                }
            }
        }
        JobCommand::Runs { job, json } => {
            let list = service.runs(&job).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &list.runs)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<28} {:<10} {:<9} DURATION",
                    "RUN", "STATE", "TRIGGER"
                )?;
                for run in list.runs {
                    let duration = run.ended_at.map(|end| end - run.created_at);
                    writeln!(
                        out,
                        "{:<28} {:<10} {:<9} {}",
                        run.id,
                        run.state.as_str(),
                        run.trigger,
                        millis(duration)
                    )?;
                }
                for skipped in list.skipped {
                    writeln!(out, "skipped {}: {}", rfc3339(skipped.at), skipped.reason)?;
                }
            }
        }
        JobCommand::Show { run, json } => {
            let details = service.run(&run).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &details)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "run {} of job {}: {}",
                    details.run.id, details.run.job, details.run.state
                )?;
                summary(&mut out, &details)?;
            }
        }
        JobCommand::Logs { run, task, follow } => {
            let tasks = match &task {
                Some(query) => vec![service.task(&run, query).await?],
                None => service.run(&run).await?.tasks,
            };
            let many = tasks.len() > 1;
            for task in tasks {
                if many {
                    writeln!(out, "==> {} <==", quoted(&task.url))?;
                }
                print_log(&service, &mut out, &task, follow && !many).await?;
            }
        }
        JobCommand::Patch { run, task, output } => {
            let tasks = match &task {
                Some(query) => vec![service.task(&run, query).await?],
                None => service.run(&run).await?.tasks,
            };
            let done: Vec<_> = tasks
                .into_iter()
                .filter(|t| t.state == TaskState::Completed)
                .collect();
            if done.is_empty() {
                bail!("run `{run}` has no succeeded task with a patch");
            }
            if let Some(dir) = &output {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut names: BTreeMap<String, usize> = BTreeMap::new();
            for task in done {
                let patch = service.patch(&task).await?;
                match &output {
                    None => out.write_all(&patch)?,
                    Some(dir) => {
                        // Two repositories of one name get `name`, `name-2`…
                        let base = patch_stem(&task.url);
                        let count = names.entry(base.clone()).or_default();
                        *count += 1;
                        let name = match *count {
                            1 => base,
                            n => format!("{base}-{n}"),
                        };
                        let path = dir.join(format!("{name}.patch"));
                        std::fs::write(&path, &patch)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        writeln!(out, "{}", path.display())?;
                    }
                }
            }
        }
        JobCommand::Cancel { run, task } => {
            let details = service.cancel(&run, task.as_deref()).await?;
            writeln!(out, "{}: {}", details.run.id, details.run.state)?;
        }
        JobCommand::Retry { run, task, failed } => {
            let details = service
                .retry(&run, if failed { None } else { task.as_deref() })
                .await?;
            writeln!(out, "{}: {}", details.run.id, details.run.state)?;
        }
        JobCommand::Publish {
            run,
            branch,
            message,
        } => {
            let mut failed = false;
            for published in service.publish(&run, &branch, message.as_deref()).await? {
                match (&published.commit, &published.error) {
                    (Some(commit), _) => writeln!(
                        out,
                        "{} {branch} {}",
                        quoted(&published.url),
                        commit.get(..12).unwrap_or(commit)
                    )?,
                    (None, error) => {
                        failed = true;
                        writeln!(
                            out,
                            "{} refused: {}",
                            quoted(&published.url),
                            quoted(error.as_deref().unwrap_or_default())
                        )?
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        JobCommand::Schedule { job, cron, off } => {
            let record = service
                .schedule(&job, if off { None } else { cron.as_deref() })
                .await?;
            writeln!(
                out,
                "{}: {}",
                record.name,
                record.schedule.as_deref().unwrap_or("no schedule")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a task's log; following, as it is written until the task ends.
async fn print_log(
    service: &Service,
    out: &mut impl Write,
    task: &Task,
    follow: bool,
) -> Result<()> {
    if follow {
        let mut lines = service.follow_log(task).await?;
        while let Some(line) = lines.next().await {
            match line? {
                LogLine::Entry(entry) => print_entry(out, &entry)?,
                LogLine::End(_) => break,
            }
            out.flush()?;
        }
        return Ok(());
    }
    let mut after = 0;
    loop {
        let page = service.log_page(task, after).await?;
        for entry in &page.entries {
            print_entry(out, entry)?;
        }
        if page.entries.len() < LOG_PAGE as usize {
            return Ok(out.flush()?);
        }
        after = page.next;
    }
}

fn print_entry(out: &mut impl Write, entry: &LogEntry) -> Result<()> {
    let text = match &entry.event {
        LogEvent::Stdout { text } | LogEvent::Stderr { text } => {
            out.write_all(text.as_bytes())?;
            return Ok(());
        }
        LogEvent::StepStart { step, name } => format!("==> step {step}: {name}"),
        LogEvent::StepEnd { step, exit_code } => {
            format!("<== step {step} exited with {exit_code}")
        }
        LogEvent::Note { text } => format!("berth: {text}"),
        LogEvent::Truncated { dropped_bytes } => {
            format!("berth: [log truncated: {dropped_bytes} bytes dropped]")
        }
    };
    writeln!(out, "{} {text}", timestamp(entry.at))?;
    Ok(())
}

/// Waits for the run to end, showing each running task; here, this
/// process runs tasks meanwhile.
async fn wait_for(service: Service, run: &str) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let serving = match &service {
        Service::Here { runner, .. } => {
            let (runner, shutdown) = (runner.clone(), shutdown.clone());
            Some(tokio::spawn(async move { runner.serve(shutdown).await }))
        }
        Service::Server(_) | Service::Nats(_) => None,
    };
    let bars = MultiProgress::new();
    if !std::io::stderr().is_terminal() {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut shown: BTreeMap<String, ProgressBar> = BTreeMap::new();
    // Here, the run's changes wake the wait as this process makes them.
    let mut changes = match &service {
        Service::Here { jobs, .. } => {
            berth_jobs::follow::run(jobs.clone(), run.to_owned(), POLL).boxed()
        }
        Service::Server(_) | Service::Nats(_) => futures::stream::empty().boxed(),
    }
    .fuse();
    let details = loop {
        let details = service.run(run).await?;
        for task in &details.tasks {
            if task.state == TaskState::Running {
                let bar = shown.entry(task.id.clone()).or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(repository_name(&task.url).to_owned());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(format!("attempt {}", task.attempts));
            } else if let Some(bar) = shown.remove(&task.id) {
                bar.finish_and_clear();
            }
        }
        if details.run.state != RunState::Running {
            break details;
        }
        if changes.is_terminated() || changes.next().await.is_none() {
            tokio::time::sleep(POLL).await;
        } else {
            // What else came with the same change is in the next read.
            while let Some(Some(_)) = changes.next().now_or_never() {}
        }
    };
    shutdown.cancel();
    if let Some(serving) = serving {
        let _ = serving.await;
    }
    let _ = bars.clear();
    let mut out = std::io::stdout().lock();
    writeln!(out, "run {}: {}", details.run.id, details.run.state)?;
    summary(&mut out, &details)?;
    Ok(if details.run.state == RunState::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line per task: repository, state, exit, attempts, duration, patch size.
fn summary(out: &mut impl Write, details: &berth_jobs::RunDetails) -> Result<()> {
    writeln!(
        out,
        "{:<28} {:<10} {:>4} {:>8} {:>9} {:>9}  REPOSITORY",
        "TASK", "STATE", "EXIT", "ATTEMPTS", "DURATION", "PATCH"
    )?;
    for task in &details.tasks {
        let duration = match (task.started_at, task.ended_at) {
            (Some(start), Some(end)) => Some(end - start),
            _ => None,
        };
        let exit = task
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<28} {:<10} {exit:>4} {:>8} {:>9} {:>9}  {}",
            task.id,
            task.state.as_str(),
            task.attempts,
            millis(duration),
            task.patch_size,
            quoted(&task.url)
        )?;
        if let Some(error) = &task.error
            && task.state != TaskState::Completed
        {
            let step = task
                .failed_step
                .as_deref()
                .map(|s| format!("step {s}: "))
                .unwrap_or_default();
            writeln!(out, "{:<28} {step}{}", "", quoted(error))?;
        }
    }
    Ok(())
}

fn millis(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
        None => "-".into(),
    }
}

/// A timestamp in ms as RFC 3339 (UTC).
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `HH:MM:SS.mmm` (UTC) of a timestamp in ms.
fn timestamp(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}
