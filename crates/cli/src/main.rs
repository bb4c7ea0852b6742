//! `berth`: the command line. It wires the runtimes into a provider and
//! translates each subcommand into one service-layer call; no daemon is
//! needed, and `berth serve` puts the same calls behind HTTP. Started as
//! `derrick`, it is `berth serve` with Derrick's command line.

mod backend;
mod job;
mod node;
mod progress;
mod quote;
mod serve;
mod terminal;

use anyhow::{Context, Result, bail};
use backend::Backend;
use berth_core::{ExecEvent, ExecRequest, Spec, Workspace};
use berth_provider::{Config, CreateOptions, config};
use clap::{Parser, Subcommand};
use quote::{quoted, quoted_bytes};
use serve::{DerrickCli, ServeArgs};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code when berth itself failed around a command (as `docker exec`).
const EXIT_BERTH_FAILED: u8 = 125;
/// Exit code when the command could not be started.
const EXIT_NOT_STARTED: u8 = 127;
/// Exit code when the command ran past its timeout (as `timeout(1)`).
const EXIT_TIMED_OUT: u8 = 124;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Fresh, isolated, pre-provisioned workspaces for coding agents"
)]
struct Cli {
    /// berth's state directory (registry, credentials, workspaces).
    #[arg(long, env = "BERTH_HOME", global = true)]
    home: Option<PathBuf>,
    /// Run the command on a running `berth serve`: `http://HOST:PORT`
    /// (with the token in BERTH_TOKEN or --token-file),
    /// `unix:///PATH/TO/SOCKET`, or through its NATS API at
    /// `nats://HOST:PORT` (or `tls://`, with the --nats-* options).
    #[arg(long, env = "BERTH_SERVER", global = true)]
    server: Option<String>,
    /// A file holding the server's bearer token (such as the server's
    /// `$BERTH_HOME/server-token`); BERTH_TOKEN gives it directly.
    #[arg(long, global = true, requires = "server")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    nats: berth_nats::NatsOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provision and start a workspace from a spec (JSON, TOML or YAML);
    /// prints its id as the last line.
    Up {
        spec: PathBuf,
        /// The runtime; overrides the spec's (and BERTH_RUNTIME, the
        /// default for specs that name none).
        #[arg(long)]
        runtime: Option<String>,
        /// A name for the workspace; overrides the spec's.
        #[arg(long)]
        name: Option<String>,
        /// A `key=value` tag to list and remove the workspace by; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Stop the workspace after this many seconds without a command, a
        /// file operation or an open terminal; overrides `timeouts.idle`.
        #[arg(long, value_name = "SECONDS")]
        idle: Option<u64>,
        /// Remove the workspace this many seconds after its creation;
        /// overrides `timeouts.lifetime`.
        #[arg(long, value_name = "SECONDS")]
        lifetime: Option<u64>,
    },
    /// List workspaces.
    Ls {
        #[arg(long)]
        json: bool,
        /// Include removed workspaces.
        #[arg(long, short)]
        all: bool,
        /// Only workspaces with this `key=value` label; repeatable, all must match.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Show a workspace, with the isolation in force.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped workspace.
    Start { id: String },
    /// Stop a running workspace, keeping its files.
    Stop { id: String },
    /// Remove workspaces and everything in them.
    Rm {
        #[arg(required_unless_present = "labels")]
        ids: Vec<String>,
        /// Also every workspace with this `key=value` label; repeatable, all
        /// must match.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Fetch upstream changes into a workspace's repositories.
    Fetch { id: String },
    /// List the runtimes and whether each works here.
    Runtimes {
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a workspace; exits with its exit code.
    Exec {
        id: String,
        /// Working directory, relative to the workspace root.
        #[arg(long)]
        cwd: Option<String>,
        /// Environment variables, as KEY=VALUE.
        #[arg(long = "env", short = 'e', value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Seconds before the command's whole process tree is ended.
        #[arg(long)]
        timeout: Option<f64>,
        /// Pass this process's standard input to the command.
        #[arg(long, short = 'i')]
        interactive: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a file of a workspace.
    Read { id: String, path: String },
    /// Write standard input to a file of a workspace.
    Write { id: String, path: String },
    /// List a directory of a workspace.
    Files {
        id: String,
        #[arg(default_value = "")]
        dir: String,
        #[arg(long)]
        json: bool,
    },
    /// Freeze a workspace's current files into a snapshot; prints its id.
    Snapshot { id: String },
    /// Make new workspaces from a workspace's current state; prints their ids.
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Return a workspace to its provisioned state, or to a snapshot.
    Reset {
        id: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// List the paths added (A), modified (M) and deleted (D) since the workspace was made or last reset (to its provisioned state or a snapshot).
    Changes {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a git patch of each repository's changes since the commit it was provisioned at.
    Diff { id: String },
    /// Write the changed files to a directory, or to FILE.tar.zst.
    Export {
        id: String,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Remove layers and leftovers that nothing uses.
    Gc {
        /// Also evict the least recently used provisioning cache entries
        /// that no workspace uses until the cache fits SIZE (`10G`); without
        /// SIZE, the configured budget (`BERTH_CACHE_BUDGET`), or every such
        /// entry when none is set.
        #[arg(long, value_name = "SIZE", num_args = 0..=1, default_missing_value = "")]
        cache: Option<String>,
    },
    /// List the interpreters a workspace has, with their versions.
    Detect {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Open an interactive terminal in a workspace.
    Terminal {
        id: String,
        /// What to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Serve the API over HTTP and/or NATS, and run job tasks.
    Serve(ServeArgs),
    /// Batch jobs: one script over many repositories.
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// Run job tasks only, for a host that serves nothing.
    Runner {
        /// Tasks at once.
        #[arg(long, default_value_t = 8)]
        slots: usize,
    },
    /// Join a NATS cluster as a node: register, and run the job tasks of
    /// its work queue until SIGTERM.
    Node(node::NodeArgs),
    /// The live nodes of a NATS cluster, with the age of their heartbeat.
    Nodes(node::NodesArgs),
}

impl Command {
    /// Whether the command runs many tasks at once for long, and so gets
    /// a worker thread per core.
    fn runs_on_workers(&self) -> bool {
        matches!(
            self,
            Command::Serve(_) | Command::Job { .. } | Command::Runner { .. } | Command::Node(_)
        )
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!("expected KEY=VALUE, found `{text}`")),
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    berth_core::label::parse(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = if DerrickCli::invoked() {
        let derrick = DerrickCli::parse();
        Cli {
            home: derrick.home.clone(),
            server: None,
            token_file: None,
            nats: berth_nats::NatsOptions::default(),
            command: Command::Serve(derrick.into_serve()),
        }
    } else {
        Cli::parse()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // A one-shot command runs on this thread alone: starting a worker
    // thread per core would cost more than many commands take. What runs
    // tasks side by side for long (serving, jobs, a node) gets the workers.
    let mut builder = if cli.command.runs_on_workers() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BERTH_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause shown once: many errors already
/// include their cause's message in their own.
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}

/// Whether the error is a write to a closed pipe (`berth ls | head -1`):
/// the reader has what it wanted, so that is success, said nothing of.
/// Every command's output fails up to `main`, so it is checked once here.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) == broken
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == broken
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let nats = cli.nats;
    let backend = match cli.server.filter(|s| !s.is_empty()) {
        Some(server) if berth_nats_api::is_nats_url(&server) => {
            let connection = nats.connect(&server, "berth").await?;
            Backend::Nats(berth_nats_api::NatsClient::new(
                connection,
                &nats.prefix,
                &server,
            ))
        }
        Some(server) => Backend::Remote(client(&server, cli.token_file)?),
        None => {
            let mut config = Config::load(config::home_dir(cli.home)?)?;
            if let Command::Serve(args) = &cli.command
                && let Some(runtime) = args.default_runtime()
            {
                config.runtime = Some(runtime);
            }
            if let Command::Node(args) = &cli.command
                && let Some(offer) = &args.runtimes
            {
                if let Some(unknown) = offer
                    .iter()
                    .find(|r| !config::RUNTIMES.contains(&r.as_str()))
                {
                    bail!(
                        "--runtimes: no runtime `{unknown}`; expected some of {}",
                        config::RUNTIMES.join(", ")
                    );
                }
                config.offer = Some(offer.clone());
            }
            Backend::Local(config.open().await?)
        }
    };
    let code = command(cli.command, &backend, &nats).await;
    // What the runtimes finish after answering (a sandbox's standby
    // instance) is done before the process ends, not cut off.
    backend.settle().await;
    code
}

/// The client of `server`, with the token of `--token-file` or
/// `BERTH_TOKEN`.
fn client(server: &str, token_file: Option<PathBuf>) -> Result<berth_client::Client> {
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("--token-file: cannot read {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("BERTH_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    Ok(berth_client::Client::new(server, token)?)
}

async fn command(
    command: Command,
    backend: &Backend,
    nats: &berth_nats::NatsOptions,
) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Up {
            spec,
            runtime,
            name,
            labels,
            idle,
            lifetime,
        } => {
            let spec = Spec::from_file(&spec)?;
            let (sender, receiver) = tokio::sync::mpsc::channel(64);
            let renderer = tokio::spawn(progress::render(receiver));
            let created = backend
                .create(
                    spec,
                    CreateOptions {
                        runtime,
                        name,
                        labels: labels.into_iter().collect(),
                        idle,
                        lifetime,
                    },
                    sender,
                )
                .await;
            let _ = renderer.await;
            let ws = created?;
            writeln!(stdout, "{}", ws.id)?;
        }
        Command::Ls { json, all, labels } => {
            let workspaces = backend.list(all, &labels.into_iter().collect()).await?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &workspaces)?;
                writeln!(stdout)?;
            } else {
                print_table(&mut stdout, &workspaces)?;
            }
        }
        Command::Show { id, json } => {
            let details = backend.describe(&id).await?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &details)?;
                writeln!(stdout)?;
            } else {
                print_details(&mut stdout, &details)?;
            }
        }
        Command::Start { id } => writeln!(stdout, "{}", backend.start(&id).await?.id)?,
        Command::Stop { id } => writeln!(stdout, "{}", backend.stop(&id).await?.id)?,
        Command::Rm { mut ids, labels } => {
            if !labels.is_empty() {
                let selector = labels.into_iter().collect();
                let labelled = backend.list(false, &selector).await?;
                ids.extend(labelled.into_iter().map(|ws| ws.id.to_string()));
            }
            let mut failed = false;
            for id in ids {
                match backend.remove(&id).await {
                    Ok(ws) => writeln!(stdout, "{}", ws.id)?,
                    Err(e) => {
                        eprintln!("berth: {}", error_chain(&e));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Fetch { id } => {
            for result in backend.fetch(&id).await? {
                let state = if result.updated {
                    format!("{} -> {}", short(&result.previous), short(&result.commit))
                } else {
                    format!("up to date at {}", short(&result.commit))
                };
                writeln!(stdout, "{}: {state}", quoted(&result.path))?;
            }
        }
        Command::Runtimes { json } => {
            let runtimes = backend.runtimes().await?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &runtimes)?;
                writeln!(stdout)?;
            } else {
                for r in runtimes {
                    let status = match &r.reason {
                        None => "available".to_string(),
                        Some(reason) => format!("unavailable: {reason}"),
                    };
                    writeln!(stdout, "{:<10} {:<12} {}", r.name, status, r.description)?;
                }
            }
        }
        Command::Exec {
            id,
            cwd,
            env,
            timeout,
            interactive,
            command,
        } => {
            drop(stdout);
            return exec(backend, id, cwd, env, timeout, interactive, command).await;
        }
        Command::Read { id, path } => {
            let file = backend.read_file(&id, &path).await?;
            drop(stdout);
            copy_out(file, &format!("`{path}`")).await?;
        }
        Command::Write { id, path } => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .context("cannot read standard input")?;
            backend.write_file(&id, &path, data).await?;
        }
        Command::Files { id, dir, json } => {
            let entries = backend.list_files(&id, &dir).await?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &entries)?;
                writeln!(stdout)?;
            } else {
                for entry in entries {
                    let suffix = if entry.kind == berth_core::FileKind::Dir {
                        "/"
                    } else {
                        ""
                    };
                    writeln!(stdout, "{}{suffix}", quoted_bytes(&entry.raw_path()))?;
                }
            }
        }
        Command::Snapshot { id } => writeln!(stdout, "{}", backend.snapshot(&id).await?.id)?,
        Command::Fork { id, count } => {
            for ws in backend.fork(&id, count).await? {
                writeln!(stdout, "{}", ws.id)?;
            }
        }
        Command::Reset { id, to } => {
            writeln!(stdout, "{}", backend.reset(&id, to.as_deref()).await?.id)?
        }
        Command::Changes { id, json } => {
            let changes = backend.changes(&id).await?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &changes)?;
                writeln!(stdout)?;
            } else {
                for change in changes {
                    let mark = match change.kind {
                        berth_core::ChangeKind::Added => 'A',
                        berth_core::ChangeKind::Modified => 'M',
                        berth_core::ChangeKind::Deleted => 'D',
                    };
                    writeln!(stdout, "{mark} {}", quoted_bytes(&change.raw_path()))?;
                }
            }
        }
        Command::Diff { id } => {
            let patch = backend.diff(&id).await?;
            drop(stdout);
            copy_out(patch, "the patch").await?;
        }
        Command::Export { id, output } => {
            let counts = backend.export(&id, &output).await?;
            eprintln!(
                "exported {} entries ({} bytes); {} deleted paths not carried",
                counts.entries, counts.bytes, counts.deleted
            );
        }
        Command::Gc { cache } => {
            if let Some(budget) = cache {
                let budget = match budget.as_str() {
                    "" => None,
                    text => Some(berth_core::spec::parse_bytes(text).with_context(|| {
                        format!("--cache: `{text}` is not a size: expected bytes or a number with k, m, g or t")
                    })?),
                };
                let evicted = backend.gc_cache(budget).await?;
                writeln!(
                    stdout,
                    "cache: {} entries evicted ({} bytes freed, {} bytes kept)",
                    evicted.evicted.len(),
                    evicted.freed,
                    evicted.kept
                )?;
            }
            let gc = backend.gc().await?;
            for runtime in gc.runtimes {
                writeln!(
                    stdout,
                    "{}: {} layers and {} leftover workspaces removed",
                    runtime.runtime,
                    runtime.report.removed.len(),
                    runtime.report.orphans.len()
                )?;
            }
            if let Some(git) = gc.git {
                writeln!(
                    stdout,
                    "git: {git} leftovers of interrupted clones and fetches removed"
                )?;
            }
        }
        Command::Detect { id, json } => {
            let info = backend.agent_info(&id, true).await?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &info.interpreters)?;
                writeln!(stdout)?;
            } else {
                for found in info.interpreters {
                    // What the workspace reports: its hints file names
                    // interpreters, and their programs print versions.
                    let version = found.version.as_deref().unwrap_or("?");
                    writeln!(
                        stdout,
                        "{:<8} {:<12} {}",
                        quoted(&found.name),
                        quoted(version),
                        quoted(&found.path)
                    )?;
                }
            }
        }
        Command::Terminal { id, command } => {
            drop(stdout);
            return terminal::run(backend, &id, command).await;
        }
        Command::Serve(args) => {
            drop(stdout);
            serve::serve(backend.local("serve")?.clone(), args, nats).await?;
        }
        Command::Job { command } => {
            drop(stdout);
            return job::command(backend, command).await;
        }
        Command::Runner { slots } => {
            drop(stdout);
            return job::runner(backend.local("runner")?.clone(), slots).await;
        }
        Command::Node(args) => {
            drop(stdout);
            return node::node(backend.local("node")?.clone(), nats, args).await;
        }
        Command::Nodes(args) => {
            drop(stdout);
            return node::nodes(backend, nats, args).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies what is read from a workspace to standard output as it comes;
/// a read that fails midway fails the command, after what came before it.
async fn copy_out(mut from: berth_core::ReadStream, what: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .with_context(|| format!("cannot read {what}"))?;
        if n == 0 {
            return Ok(stdout.flush().await?);
        }
        stdout.write_all(&buf[..n]).await?;
    }
}

async fn exec(
    backend: &Backend,
    id: String,
    cwd: Option<String>,
    env: Vec<(String, String)>,
    timeout: Option<f64>,
    interactive: bool,
    command: Vec<String>,
) -> Result<ExitCode> {
    let mut request = ExecRequest::argv(command);
    request.cwd = cwd;
    request.env = env.into_iter().collect();
    if let Some(secs) = timeout {
        if !(secs.is_finite() && secs > 0.0) {
            bail!("--timeout: expected a positive number of seconds, found {secs}");
        }
        request.timeout_ms = Some((secs * 1000.0) as u64);
    }
    if interactive {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("cannot read standard input")?;
        request.stdin = Some(data);
    }
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let mut events = match backend.exec(&id, request, cancel).await {
        Ok(events) => events,
        Err(err) => {
            eprintln!("berth: {}", error_chain(&err));
            return Ok(ExitCode::from(
                if backend::error_code(&err) == Some("command_not_started") {
                    EXIT_NOT_STARTED
                } else {
                    EXIT_BERTH_FAILED
                },
            ));
        }
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(event) = events.recv().await {
        match event {
            ExecEvent::Stdout { data } => {
                out.write_all(&data.0)?;
                out.flush()?;
            }
            ExecEvent::Stderr { data } => {
                err.write_all(&data.0)?;
                err.flush()?;
            }
            ExecEvent::Exit(status) => {
                for (name, dropped) in [
                    ("stdout", status.stdout_dropped),
                    ("stderr", status.stderr_dropped),
                ] {
                    if dropped > 0 {
                        eprintln!(
                            "berth: {dropped} bytes of {name} dropped beyond the output limit"
                        );
                    }
                }
                if status.timed_out {
                    eprintln!("berth: timed out after {} ms", status.duration_ms);
                    return Ok(ExitCode::from(EXIT_TIMED_OUT));
                }
                if status.cancelled {
                    eprintln!("berth: cancelled");
                }
                let code = status.shell_code().clamp(0, 255) as u8;
                // A success whose output was cut is not a success.
                let cut = status.stdout_dropped > 0 || status.stderr_dropped > 0;
                if cut && code == 0 {
                    return Ok(ExitCode::from(EXIT_BERTH_FAILED));
                }
                return Ok(ExitCode::from(code));
            }
        }
    }
    bail!("the command's output ended without an exit status")
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn print_table(out: &mut impl Write, workspaces: &[Workspace]) -> Result<()> {
    // Through a cluster's controller, each workspace's node.
    if workspaces.iter().any(|ws| ws.node.is_some()) {
        let rows = workspaces.iter().map(|ws| {
            [
                ws.id.to_string(),
                quoted(&ws.name).to_string(),
                ws.node.clone().unwrap_or_default(),
                ws.runtime.clone(),
                ws.state.to_string(),
                progress::ago(ws.created_at),
            ]
        });
        return write_columns(
            out,
            ["ID", "NAME", "NODE", "RUNTIME", "STATE", "CREATED"],
            rows,
        );
    }
    let rows = workspaces.iter().map(|ws| {
        [
            ws.id.to_string(),
            quoted(&ws.name).to_string(),
            ws.runtime.clone(),
            ws.state.to_string(),
            progress::ago(ws.created_at),
        ]
    });
    write_columns(out, ["ID", "NAME", "RUNTIME", "STATE", "CREATED"], rows)
}

/// Writes a header and rows as columns two spaces apart, each as wide as
/// its widest value (in characters); the last column is not padded.
fn write_columns<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) -> Result<()> {
    let rows: Vec<[String; N]> = std::iter::once(header.map(str::to_owned))
        .chain(rows)
        .collect();
    let mut widths = [0usize; N];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn print_details(out: &mut impl Write, details: &berth_provider::WorkspaceDetails) -> Result<()> {
    let ws = &details.workspace;
    let iso = &details.isolation;
    writeln!(out, "id:        {}", ws.id)?;
    writeln!(out, "name:      {}", quoted(&ws.name))?;
    writeln!(out, "runtime:   {}", ws.runtime)?;
    writeln!(out, "state:     {}", ws.state)?;
    writeln!(out, "created:   {}", progress::ago(ws.created_at))?;
    if let (Some(at), Some(idle)) = (details.idle_deadline, ws.spec.timeouts.idle) {
        writeln!(
            out,
            "stops:     {} unless used (idle timeout {idle}s)",
            progress::until(at)
        )?;
    }
    if let (Some(at), Some(lifetime)) = (details.removal_deadline, ws.spec.timeouts.lifetime) {
        writeln!(
            out,
            "removed:   {} (lifetime {lifetime}s)",
            progress::until(at)
        )?;
    }
    for (key, value) in &ws.labels {
        writeln!(out, "label:     {key}={value}")?;
    }
    if let Some(key) = &ws.cache_key {
        writeln!(out, "cache key: {key}")?;
    }
    for repo in &ws.spec.repositories {
        let reference = repo.reference.as_deref().unwrap_or("default branch");
        writeln!(
            out,
            "repo:      {} -> {} ({})",
            quoted(&repo.url),
            quoted(repo.path.as_str()),
            quoted(reference)
        )?;
    }
    writeln!(
        out,
        "isolation: {}",
        if iso.isolated { "isolated" } else { "none" }
    )?;
    if !iso.namespaces.is_empty() {
        writeln!(out, "  namespaces: {}", iso.namespaces.join(", "))?;
    }
    if !iso.limits.is_empty() {
        writeln!(out, "  limits:     {}", iso.limits.join(", "))?;
    }
    writeln!(
        out,
        "  seccomp:    {}",
        if iso.seccomp { "on" } else { "off" }
    )?;
    writeln!(out, "  network:    {}", iso.network)?;
    for note in &iso.notes {
        writeln!(out, "  note:       {note}")?;
    }
    if let Some(error) = &ws.error {
        writeln!(out, "error:     {}", error.replace('\n', "\n           "))?;
    }
    Ok(())
}
