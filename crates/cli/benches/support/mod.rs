//! What the CLI's whole-process benches share: a median of timings and a
//! command that must succeed.

use std::process::{Command, Stdio};
use std::time::Duration;

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Runs `command` without stdin and returns its stdout; panics with its
/// stderr when it fails.
pub fn ok(command: &mut Command) -> String {
    let out = command.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
