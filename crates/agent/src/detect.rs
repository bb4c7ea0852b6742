//! Interpreter detection: which of python, node, ruby, go, java, perl, R,
//! bash and sh the workspace has, where, and in which version.
//!
//! Each candidate found on `PATH` is run once with its version flag, with a
//! short timeout, a minimal environment (`PATH`, `HOME`, `LANG=C`) and
//! `/` as its directory, and the first version-looking token of its output
//! is taken. Detection runs soon after the first client connects and again
//! on request.
//!
//! The first detection waits for a quiet moment (no operation running)
//! and its probes run at the lowest CPU priority: a workspace's first
//! commands, which usually follow its start at once, never share the CPU
//! with `java -version`. A request for the interpreters before then
//! detects at once.
//!
//! # Hints file
//!
//! An image can name interpreters the search path would miss, or override
//! what is found, in `/.berth/runtimes.json`, `/.berth/runtimes.yaml` or
//! `/.berth/runtimes` (the first that exists; `--hints` names another).
//! Two formats are accepted:
//!
//! ```text
//! # one `name: path` per line (also valid YAML); `#` starts a comment
//! python: /opt/python/bin/python3.12
//! deno: /usr/local/bin/deno
//! ```
//!
//! ```json
//! {"python": "/opt/python/bin/python3.12",
//!  "deno": {"path": "/usr/local/bin/deno", "version": "1.40.0"}}
//! ```
//!
//! A hint replaces the detected entry of the same name, or adds one. Its
//! version is the one given, else probed like a known interpreter of that
//! name, else with `--version`. A path without a `/` is looked up on
//! `PATH`; a hint whose program does not exist is left out.

use crate::env::BaseEnv;
use crate::reaper::Reaper;
use berth_exec::{Spawn, Stdin};
use berth_proto::{ExecEvent, Interpreter, InterpreterSource};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the agent must be without operations before the first
/// detection starts.
pub const QUIET_PERIOD: Duration = Duration::from_millis(500);

/// How long the first detection waits for a quiet moment at most.
pub const QUIET_PATIENCE: Duration = Duration::from_secs(10);

/// A known interpreter: its name, the programs it may be called, and the
/// arguments that make it print its version.
struct Probe {
    name: &'static str,
    programs: &'static [&'static str],
    args: &'static [&'static str],
}

const PROBES: &[Probe] = &[
    Probe {
        name: "python",
        programs: &["python3", "python"],
        args: &["--version"],
    },
    Probe {
        name: "node",
        programs: &["node", "nodejs"],
        args: &["--version"],
    },
    Probe {
        name: "ruby",
        programs: &["ruby"],
        args: &["--version"],
    },
    Probe {
        name: "go",
        programs: &["go"],
        args: &["version"],
    },
    Probe {
        name: "java",
        programs: &["java"],
        args: &["-version"],
    },
    Probe {
        name: "perl",
        programs: &["perl"],
        // `perl --version` leads with "perl 5, version 36"; `$^V` is exact.
        args: &["-e", "print $^V"],
    },
    Probe {
        name: "R",
        programs: &["R", "Rscript"],
        args: &["--version"],
    },
    Probe {
        name: "bash",
        programs: &["bash"],
        args: &["--version"],
    },
    Probe {
        name: "sh",
        programs: &["sh"],
        // POSIX sh has no version flag; busybox's is found below.
        args: &[],
    },
];

/// One entry of the hints file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub name: String,
    pub path: String,
    pub version: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HintsError {
    #[error("line {line}: expected `name: path`, found `{text}`")]
    Line { line: usize, text: String },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("entry `{0}` must be a path or an object with a `path`")]
    Entry(String),
}

/// Parses a hints file in either of its formats.
pub fn parse_hints(text: &str) -> Result<Vec<Hint>, HintsError> {
    if text.trim_start().starts_with('{') {
        return parse_json_hints(text);
    }
    let mut hints = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = match raw.find(" #") {
            Some(at) => &raw[..at],
            None => raw,
        }
        .trim();
        if line.is_empty() || line.starts_with('#') || line == "---" {
            continue;
        }
        let (name, path) = line.split_once(':').ok_or_else(|| HintsError::Line {
            line: index + 1,
            text: raw.to_string(),
        })?;
        let unquote = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        let (name, path) = (unquote(name), unquote(path));
        if name.is_empty() || path.is_empty() {
            return Err(HintsError::Line {
                line: index + 1,
                text: raw.to_string(),
            });
        }
        hints.push(Hint {
            name,
            path,
            version: None,
        });
    }
    Ok(hints)
}

fn parse_json_hints(text: &str) -> Result<Vec<Hint>, HintsError> {
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| HintsError::Json(e.to_string()))?;
    value
        .into_iter()
        .map(|(name, entry)| match entry {
            serde_json::Value::String(path) => Ok(Hint {
                name,
                path,
                version: None,
            }),
            serde_json::Value::Object(fields) => {
                let text = |key: &str| fields.get(key).and_then(|v| v.as_str()).map(String::from);
                Ok(Hint {
                    path: text("path").ok_or_else(|| HintsError::Entry(name.clone()))?,
                    version: text("version"),
                    name,
                })
            }
            _ => Err(HintsError::Entry(name)),
        })
        .collect()
}

/// The first dotted version in `output` (`3.11.7` in `Python 3.11.7`,
/// `1.21.0` in `go1.21.0`), or else the first number.
pub fn extract_version(output: &str) -> Option<String> {
    let bytes = output.as_bytes();
    let mut first_number = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let mut end = i;
            while end < bytes.len()
                && (bytes[end].is_ascii_digit()
                    || (bytes[end] == b'.'
                        && bytes.get(end + 1).is_some_and(|b| b.is_ascii_digit())))
            {
                end += 1;
            }
            let token = &output[i..end];
            if token.contains('.') {
                return Some(token.to_string());
            }
            first_number.get_or_insert_with(|| token.to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    first_number
}

/// Detection results, cached between requests.
#[derive(Debug)]
pub struct Detector {
    hints: Option<PathBuf>,
    cache: Arc<Mutex<Option<Vec<Interpreter>>>>,
}

impl Detector {
    pub fn new(hints: Option<PathBuf>) -> Self {
        Detector {
            hints,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// Starts the first detection in the background once the agent is
    /// quiet: after [`QUIET_PERIOD`] with no operation running, or after
    /// [`QUIET_PATIENCE`] whatever runs.
    pub fn start(&self, agent: Arc<crate::Agent>) {
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + QUIET_PATIENCE;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(QUIET_PERIOD) => {}
                    () = agent.shutdown.cancelled() => return,
                }
                let busy = agent.operations.load(Ordering::Relaxed) > 0;
                if !busy || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            agent.detector.get(&agent.env, &agent.reaper, false).await;
        });
    }

    /// The interpreters, detected again first when `again`.
    pub async fn get(&self, env: &BaseEnv, reaper: &Reaper, again: bool) -> Vec<Interpreter> {
        let mut slot = self.cache.lock().await;
        if again || slot.is_none() {
            *slot = Some(detect(env, self.hints_path(), reaper).await);
        }
        slot.clone().unwrap_or_default()
    }

    fn hints_path(&self) -> Option<PathBuf> {
        match &self.hints {
            Some(path) => Some(path.clone()),
            None => crate::args::DEFAULT_HINTS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
        }
    }
}

/// Finds and probes every known interpreter, then applies the hints.
pub async fn detect(env: &BaseEnv, hints: Option<PathBuf>, reaper: &Reaper) -> Vec<Interpreter> {
    let mut probes = tokio::task::JoinSet::new();
    for (index, probe) in PROBES.iter().enumerate() {
        let Some(path) = probe.programs.iter().find_map(|p| env.which(p)) else {
            continue;
        };
        let (env, reaper) = (env.clone(), reaper.clone());
        probes.spawn(async move {
            let version = probe_version(&env, &reaper, probe.name, &path, probe.args).await;
            let found = Interpreter {
                name: probe.name.to_string(),
                path: path.to_string_lossy().into_owned(),
                version,
                source: InterpreterSource::Detected,
            };
            (index, found)
        });
    }
    let mut found = probes.join_all().await;
    found.sort_by_key(|(index, _)| *index);
    let mut found: Vec<Interpreter> = found.into_iter().map(|(_, i)| i).collect();
    let hints = hints
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| parse_hints(&text).ok())
        .unwrap_or_default();
    for hint in hints {
        let path = if hint.path.contains('/') {
            Some(PathBuf::from(&hint.path)).filter(|p| p.is_file())
        } else {
            env.which(&hint.path)
        };
        let Some(path) = path else { continue };
        let version = match hint.version {
            Some(version) => Some(version),
            None => {
                let args = PROBES
                    .iter()
                    .find(|p| p.name == hint.name)
                    .map_or(&["--version"][..], |p| p.args);
                probe_version(env, reaper, &hint.name, &path, args).await
            }
        };
        let entry = Interpreter {
            name: hint.name,
            path: path.to_string_lossy().into_owned(),
            version,
            source: InterpreterSource::Hint,
        };
        match found.iter_mut().find(|i| i.name == entry.name) {
            Some(existing) => *existing = entry,
            None => found.push(entry),
        }
    }
    found
}

async fn probe_version(
    env: &BaseEnv,
    reaper: &Reaper,
    name: &str,
    path: &Path,
    args: &[&str],
) -> Option<String> {
    let mut argv = vec![path.to_string_lossy().into_owned()];
    if name == "sh" {
        // Only busybox's sh can tell its version (by running `busybox`).
        let target = std::fs::canonicalize(path).ok()?;
        if target.file_name()?.to_str()? != "busybox" {
            return None;
        }
        argv = vec![target.to_string_lossy().into_owned()];
    }
    argv.extend(args.iter().map(|a| a.to_string()));
    let output = run_probe(env, reaper, argv).await?;
    extract_version(&output)
}

/// Runs a probe and returns its stdout and stderr together.
async fn run_probe(env: &BaseEnv, reaper: &Reaper, argv: Vec<String>) -> Option<String> {
    let mut running = berth_exec::spawn(
        Spawn {
            argv,
            cwd: PathBuf::from("/"),
            env: env.minimal(),
            stdin: Stdin::Null,
            timeout: Some(PROBE_TIMEOUT),
            output_limit: Some(4096),
            grace: Duration::from_millis(100),
            cgroup: None,
            shepherd: None,
            // Detection is never urgent: the workspace's own commands
            // come first.
            nice: Some(19),
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .ok()?;
    let _owned = reaper.own(running.pid);
    let mut output = Vec::new();
    while let Some(event) = running.events.recv().await {
        match event {
            ExecEvent::Stdout { data } | ExecEvent::Stderr { data } => {
                output.extend_from_slice(&data.0)
            }
            ExecEvent::Exit(status) if status.timed_out => return None,
            ExecEvent::Exit(_) => break,
        }
    }
    Some(String::from_utf8_lossy(&output).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_found_in_what_interpreters_print() {
        let cases = [
            ("Python 3.11.7\n", "3.11.7"),
            ("v20.11.1\n", "20.11.1"),
            ("go version go1.21.0 linux/amd64", "1.21.0"),
            ("openjdk version \"17.0.9\" 2023-10-17\n", "17.0.9"),
            ("v5.36.0", "5.36.0"),
            (
                "GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)",
                "5.2.15",
            ),
            ("R version 4.2.2 Patched (2022-11-10 r83330)", "4.2.2"),
            ("ruby 3.1.2p20 (2022-04-12 revision 4491bb740a)", "3.1.2"),
            (
                "BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary.",
                "1.35.0",
            ),
            ("tool 7", "7"),
        ];
        for (output, version) in cases {
            assert_eq!(
                extract_version(output).as_deref(),
                Some(version),
                "{output}"
            );
        }
        assert_eq!(extract_version("no digits"), None);
    }

    #[test]
    fn hints_are_read_in_both_formats() {
        let lines = "# interpreters\n---\npython: /opt/py/bin/python3 # pinned\n'deno': \"deno\"\n";
        assert_eq!(
            parse_hints(lines).unwrap(),
            vec![
                Hint {
                    name: "python".into(),
                    path: "/opt/py/bin/python3".into(),
                    version: None
                },
                Hint {
                    name: "deno".into(),
                    path: "deno".into(),
                    version: None
                },
            ]
        );
        let json = r#"{"deno": {"path": "/bin/deno", "version": "1.40.0"}}"#;
        assert_eq!(
            parse_hints(json).unwrap(),
            vec![Hint {
                name: "deno".into(),
                path: "/bin/deno".into(),
                version: Some("1.40.0".into())
            }]
        );
        assert_eq!(
            parse_hints("python /usr/bin/python3"),
            Err(HintsError::Line {
                line: 1,
                text: "python /usr/bin/python3".into()
            })
        );
        assert!(matches!(
            parse_hints(r#"{"x": 3}"#),
            Err(HintsError::Entry(name)) if name == "x"
        ));
    }
}
