//! The static `berth-agent` executable, embedded: the one way the rest of
//! berth gets the agent, with no manual build step.
//!
//! This crate's build script builds the agent (musl when the target is
//! installed, else glibc with `+crt-static`) with the `agent` profile and
//! embeds it. Runtimes call [`install`] to write it once into a directory
//! they mount into workspaces; the file name carries the content hash, so
//! an upgraded agent never replaces a file a running workspace uses. The
//! server serves [`binary_for_arch`] for hosts that download it.
//!
//! For development, `BERTH_AGENT_BINARY=/path/to/berth-agent` makes the
//! build embed that file instead of building one, and makes [`install`]
//! return that path as it is.

use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-agent"));

/// SHA-256 of the embedded agent, hex.
pub const SHA256: &str = env!("BERTH_AGENT_SHA256");

/// What the embedded agent was built for, e.g. `x86_64-unknown-linux-musl`.
pub const TARGET: &str = env!("BERTH_AGENT_TARGET");

/// The architecture the embedded agent runs on, as `uname -m` says it.
pub const ARCH: &str = std::env::consts::ARCH;

/// The environment variable that points at an agent to use instead.
pub const OVERRIDE_VAR: &str = "BERTH_AGENT_BINARY";

/// The embedded agent executable.
pub fn agent_binary() -> &'static [u8] {
    AGENT
}

/// The agent for an architecture (`x86_64`, or `amd64` for the same),
/// when this build has one.
pub fn binary_for_arch(arch: &str) -> Option<&'static [u8]> {
    let arch = if arch == "amd64" { "x86_64" } else { arch };
    (arch == ARCH).then_some(AGENT)
}

/// Why the agent could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{OVERRIDE_VAR} names `{path}`, which is not a file")]
    Override { path: PathBuf },
    #[error("cannot install the agent into `{dir}`: {source}")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file name the agent is installed under.
pub fn file_name() -> String {
    format!("berth-agent-{}", &SHA256[..16])
}

/// Writes the agent into `dir` (created if missing) once, with mode 0755,
/// and returns its path; an agent already there with the same content is
/// reused. With `BERTH_AGENT_BINARY` set, returns that path instead.
pub fn install(dir: &Path) -> Result<PathBuf, InstallError> {
    if let Some(path) = std::env::var_os(OVERRIDE_VAR) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(InstallError::Override { path })
        };
    }
    let err = |source| InstallError::Write {
        dir: dir.to_path_buf(),
        source,
    };
    let path = dir.join(file_name());
    if stamp(&path).is_some_and(|now| std::fs::read(stamp_path(dir)).ok() == Some(now)) {
        return Ok(path);
    }
    if std::fs::read(&path).is_ok_and(|existing| Sha256::digest(&existing)[..] == digest()[..]) {
        write_stamp(dir, &path);
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    // Written under a temporary name and renamed, so a concurrent install
    // or a crash never leaves a half-written agent under the real name.
    let mut file = tempfile_in(dir).map_err(err)?;
    file.1.write_all(AGENT).map_err(err)?;
    file.1.sync_all().map_err(err)?;
    std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    std::fs::rename(&file.0, &path).map_err(err)?;
    write_stamp(dir, &path);
    Ok(path)
}

/// Where the stamp of the installed agent is kept: its size, change time
/// and inode when its content was last checked. A CLI process installs
/// the agent on every start; reading and hashing megabytes each time would
/// cost more than most commands, while a file whose stamp still matches
/// was not touched since it was checked.
fn stamp_path(dir: &Path) -> PathBuf {
    dir.join(format!(".{}.checked", file_name()))
}

fn stamp(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.is_file().then(|| {
        format!(
            "{} {}.{} {} {}",
            meta.len(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino(),
            meta.dev()
        )
        .into_bytes()
    })
}

/// Records that `path` was checked as it is now; a stamp that cannot be
/// written only means the next install checks again.
fn write_stamp(dir: &Path, path: &Path) {
    if let Some(now) = stamp(path) {
        let temporary = dir.join(format!(".{}.checked.{}", file_name(), std::process::id()));
        if std::fs::write(&temporary, now).is_ok() {
            let _ = std::fs::rename(&temporary, stamp_path(dir));
        }
    }
}

fn digest() -> Vec<u8> {
    hex::decode(SHA256).unwrap_or_default()
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".{}.{}.tmp", file_name(), std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}
