//! Reading processes from `/proc`: who is whose child, who is a zombie,
//! who belongs to a process group, and what a process uses.

use std::fs;

/// The fields of `/proc/PID/stat` the agent needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// When the process started, in clock ticks after boot (0 when the
    /// line does not say).
    pub start_time: u64,
}

/// Parses one `/proc/PID/stat` line. The command name may contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let (head, tail) = line.rsplit_once(')')?;
    let pid = head.split_once(' ')?.0.trim().parse().ok()?;
    let mut fields = tail.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    // After pgrp: session, tty_nr, tpgid, flags, minflt, cminflt, majflt,
    // cmajflt, then utime and stime.
    let mut rest = fields.skip(8);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    // Then cutime, cstime, priority, nice, num_threads, itrealvalue.
    let start_time = rest.nth(6).and_then(|t| t.parse().ok()).unwrap_or(0);
    Some(ProcStat {
        pid,
        state,
        ppid,
        pgrp,
        cpu_ticks: utime + stime,
        start_time,
    })
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process visible in `/proc`, or `None` when `/proc` is not there.
pub fn all() -> Option<Vec<ProcStat>> {
    let dir = fs::read_dir("/proc").ok()?;
    Some(
        dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(stat)
            .collect(),
    )
}

/// How many processes `/proc` shows, without reading any of them.
pub fn count() -> Option<u32> {
    let dir = fs::read_dir("/proc").ok()?;
    let numeric = |name: &std::ffi::OsStr| {
        name.to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    };
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| numeric(&e.file_name()))
            .count() as u32,
    )
}

/// The agent's direct children, from `/proc/self/task/*/children`, which
/// is much cheaper than reading every process; `None` when the kernel does
/// not provide it.
pub fn children() -> Option<Vec<i32>> {
    let tasks = fs::read_dir("/proc/self/task").ok()?;
    let mut pids = Vec::new();
    for task in tasks {
        let path = task.ok()?.path().join("children");
        let text = fs::read_to_string(path).ok()?;
        pids.extend(
            text.split_ascii_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(pids)
}

/// Members of process group `pgrp` other than `except`.
pub fn group_members(pgrp: i32, except: i32) -> Vec<i32> {
    all()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.pgrp == pgrp && p.pid != except)
        .map(|p| p.pid)
        .collect()
}

/// The command line of `pid`, or `None` when it is gone.
pub fn cmdline(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// A field of `/proc/self/status` or `/proc/meminfo` given in kB, in bytes.
pub fn kb_field(path: &str, name: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..]
        .trim_start_matches(':')
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "4242 (a) b (c)) Z 1 4242 4242 0 -1 4194564 0 0 0 0 7 3 0 0 20 0 1 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                state: 'Z',
                ppid: 1,
                pgrp: 4242,
                cpu_ticks: 10,
                start_time: 0,
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let stat = stat(me).unwrap();
        assert_eq!(stat.pid, me);
        assert!(kb_field("/proc/self/status", "VmRSS").unwrap() > 0);
    }
}
