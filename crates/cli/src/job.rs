//! `berth job …` and `berth runner`: batch jobs from the command line,
//! each subcommand one call of the jobs service.
//!
//! `berth job run` queues a run for whatever runs tasks (the workers of
//! `berth serve`, a `berth runner`); with `--wait` this process also runs
//! tasks until the run ends, so no daemon is needed.

use crate::quote::quoted;
use anyhow::{Context, Result, bail};
use berth_core::SystemClock;
use berth_core::job::{LogEvent, RunState, TaskState};
use berth_jobs::service::{patch_stem, repository_name};
use berth_jobs::{JobSpec, Jobs, Runner, RunnerConfig, SqliteQueue};
use berth_provider::Provider;
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

pub async fn command(provider: Provider, command: JobCommand) -> Result<ExitCode> {
    let (jobs, runner) = open(&provider, 8)?;
    let mut out = std::io::stdout().lock();
    match command {
        JobCommand::Run { file, wait } => {
            let spec = JobSpec::from_file(&file)?;
            let run = jobs.start(&spec).await?;
            writeln!(out, "{}", run.id)?;
            if wait {
                drop(out);
                return wait_for(&jobs, runner, &run.id).await;
            }
        }
        JobCommand::Ls { json } => {
            let list = jobs.jobs()?;
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
            let runs = jobs.runs(&job)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &runs)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<28} {:<10} {:<9} DURATION",
                    "RUN", "STATE", "TRIGGER"
                )?;
                for run in runs {
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
                for skipped in jobs.skipped_times(&job)? {
                    writeln!(out, "skipped {}: {}", rfc3339(skipped.at), skipped.reason)?;
                }
            }
        }
        JobCommand::Show { run, json } => {
            let details = jobs.run(&run)?;
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
                Some(query) => vec![jobs.task(&run, query)?.task],
                None => jobs.run(&run)?.tasks,
            };
            let many = tasks.len() > 1;
            for task in tasks {
                if many {
                    writeln!(out, "==> {} <==", quoted(&task.url))?;
                }
                print_log(&jobs, &mut out, &task.id, follow && !many).await?;
            }
        }
        JobCommand::Patch { run, task, output } => {
            let tasks = match &task {
                Some(query) => vec![jobs.task(&run, query)?.task],
                None => jobs.run(&run)?.tasks,
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
                let patch = jobs.patch(&task.id)?;
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
            let details = jobs.cancel(&run, task.as_deref()).await?;
            writeln!(out, "{}: {}", details.run.id, details.run.state)?;
        }
        JobCommand::Retry { run, task, failed } => {
            let details = jobs
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
            for published in jobs
                .publish(&provider, &run, &branch, message.as_deref())
                .await?
            {
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
            let record = jobs.schedule(&job, if off { None } else { cron.as_deref() })?;
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

/// Prints a task's log; following, until the task ends.
async fn print_log(jobs: &Jobs, out: &mut impl Write, task: &str, follow: bool) -> Result<()> {
    let mut seen = 0;
    // Once the task has ended, one more read takes what it wrote last.
    let mut ended = !follow;
    loop {
        let entries = jobs.log(task, seen, 1000)?;
        for entry in &entries {
            seen = entry.seq;
            let text = match &entry.event {
                LogEvent::Stdout { text } | LogEvent::Stderr { text } => {
                    out.write_all(text.as_bytes())?;
                    continue;
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
        }
        out.flush()?;
        if entries.len() == 1000 {
            continue;
        }
        if ended {
            return Ok(());
        }
        ended = jobs.task_by_id(task)?.state.is_final();
        if !ended {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs tasks here until the run ends, showing each running task.
async fn wait_for(jobs: &Jobs, runner: Runner, run: &str) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let serving = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { runner.serve(shutdown).await })
    };
    let bars = MultiProgress::new();
    if !std::io::stderr().is_terminal() {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut shown: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let details = loop {
        let details = jobs.run(run)?;
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    shutdown.cancel();
    let _ = serving.await;
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
