//! The machine's processes as a test hunting for a leaked secret sees
//! them: which hold it, and waiting for them to end.

use std::time::Duration;

/// Every process whose environment or command line holds `needle`, by pid.
/// Processes this one may not inspect are passed over.
pub fn processes_holding(needle: &str) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").unwrap_or_else(|e| panic!("cannot list /proc: {e}"));
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let holds = ["environ", "cmdline"].iter().any(|file| {
            std::fs::read(entry.path().join(file))
                .is_ok_and(|bytes| crate::contains(&bytes, needle.as_bytes()))
        });
        if holds && pid != std::process::id() {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// Waits until every process of `pids` has ended (a zombie has ended);
/// panics naming those still running after `within`, a bound on a broken
/// test rather than a timing.
pub fn wait_for_exit(pids: &[u32], within: Duration) {
    let deadline = std::time::Instant::now() + within;
    for &pid in pids {
        let Some(id) = rustix::process::Pid::from_raw(pid as i32) else {
            continue;
        };
        let fd = match rustix::process::pidfd_open(id, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => continue,
            Err(e) => panic!("cannot watch process {pid}: {e}"),
        };
        // A pidfd is readable once its process has ended.
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let timeout = rustix::event::Timespec::try_from(left)
                .unwrap_or_else(|e| panic!("cannot wait {left:?}: {e}"));
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => panic!(
                    "process {pid} ({}) still runs after {within:?}",
                    command_of(pid)
                ),
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("cannot wait for process {pid}: {e}"),
            }
        }
    }
}

/// A process's command line, for messages.
pub fn command_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_else(|e| format!("unreadable: {e}"))
}
