//! The command line of `berth-agent`.
//!
//! Parsed by hand: five flags do not justify an argument-parsing crate in a
//! binary whose size is a contract.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Where the hints file is looked for when `--hints` is not given.
pub const DEFAULT_HINTS: [&str; 3] = [
    "/.berth/runtimes.json",
    "/.berth/runtimes.yaml",
    "/.berth/runtimes",
];

pub const USAGE: &str = "\
usage: berth-agent --socket PATH [--root DIR] [--hints FILE] [--grace-ms N]
                   [--cgroup-fd N]
       berth-agent --install DIR

  --socket PATH   unix socket to serve (its directory must exist)
  --root DIR      workspace root; command cwds and file paths are relative
                  to it (default /workspace, created if missing)
  --hints FILE    interpreter hints (default: the first of
                  /.berth/runtimes.json, /.berth/runtimes.yaml, /.berth/runtimes)
  --grace-ms N    time between SIGTERM and SIGKILL when ending commands
                  (default 2000)
  --cgroup-fd N   an open directory of cgroup v2 delegated to the agent:
                  each command, session and terminal gets a cgroup of its
                  own beneath it, and ending one ends all it started
  --install DIR   copy this executable to DIR/berth-agent (mode 0755) and
                  exit: how an init container with only the agent in it
                  hands it to a workspace container
  --version       print the version and exit
";

/// What the agent was asked to do.
#[derive(Debug, PartialEq)]
pub enum Invocation {
    Serve(Options),
    Install(PathBuf),
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub socket: PathBuf,
    pub root: PathBuf,
    /// The hints file given on the command line; the defaults otherwise.
    pub hints: Option<PathBuf>,
    pub grace: Duration,
    /// The descriptor of a cgroup v2 directory delegated to the agent.
    pub cgroup_fd: Option<i32>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    #[error("`{0}` needs a value")]
    MissingValue(String),
    #[error("`--grace-ms` must be a number of milliseconds, not `{0}`")]
    BadGrace(String),
    #[error("`--cgroup-fd` must be a descriptor number, not `{0}`")]
    BadDescriptor(String),
    #[error("unknown argument `{0}`")]
    Unknown(String),
    #[error("`--socket` is required")]
    NoSocket,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, ArgsError> {
    let mut socket = None;
    let mut root = PathBuf::from("/workspace");
    let mut hints = None;
    let mut grace = Duration::from_millis(2000);
    let mut cgroup_fd = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<OsString, ArgsError> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| ArgsError::MissingValue(flag.clone()))
        };
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--root" => root = PathBuf::from(value()?),
            "--hints" => hints = Some(PathBuf::from(value()?)),
            "--grace-ms" => {
                let raw = value()?.to_string_lossy().into_owned();
                let ms = raw.parse::<u64>().map_err(|_| ArgsError::BadGrace(raw))?;
                grace = Duration::from_millis(ms);
            }
            "--cgroup-fd" => {
                let raw = value()?.to_string_lossy().into_owned();
                let fd = raw
                    .parse::<i32>()
                    .ok()
                    .filter(|fd| *fd > 2)
                    .ok_or(ArgsError::BadDescriptor(raw))?;
                cgroup_fd = Some(fd);
            }
            "--install" => return Ok(Invocation::Install(PathBuf::from(value()?))),
            "--version" | "-V" => return Ok(Invocation::Version),
            "--help" | "-h" => return Ok(Invocation::Help),
            _ => return Err(ArgsError::Unknown(arg)),
        }
    }
    Ok(Invocation::Serve(Options {
        socket: socket.ok_or(ArgsError::NoSocket)?,
        root,
        hints,
        grace,
        cgroup_fd,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_flags_in_both_forms_with_defaults() {
        let Invocation::Serve(opts) =
            parse(args(&["--socket", "/run/b.sock", "--grace-ms=50"])).unwrap()
        else {
            panic!("expected serve");
        };
        assert_eq!(opts.socket, PathBuf::from("/run/b.sock"));
        assert_eq!(opts.root, PathBuf::from("/workspace"));
        assert_eq!(opts.grace, Duration::from_millis(50));
        assert_eq!(opts.hints, None);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert_eq!(parse(args(&[])), Err(ArgsError::NoSocket));
        assert_eq!(
            parse(args(&["--socket"])),
            Err(ArgsError::MissingValue("--socket".into()))
        );
        assert_eq!(
            parse(args(&["--socket", "s", "--fast"])),
            Err(ArgsError::Unknown("--fast".into()))
        );
        assert_eq!(
            parse(args(&["--socket", "s", "--grace-ms", "soon"])),
            Err(ArgsError::BadGrace("soon".into()))
        );
        assert_eq!(parse(args(&["--version"])), Ok(Invocation::Version));
        assert_eq!(
            parse(args(&["--install", "/berth/bin"])),
            Ok(Invocation::Install(PathBuf::from("/berth/bin")))
        );
    }
}
