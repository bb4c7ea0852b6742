//! Whether the process that owns a provision is still alive.
//!
//! A pid alone is not enough: after a crash the kernel may hand the same
//! pid to an unrelated process. So the owner's start time is recorded with
//! its pid and compared later. Both come from `/proc/<pid>/stat`; reading
//! that one line by hand avoids a procfs crate for one field.

use rustix::io::Errno;
use rustix::process::Pid;

/// A process's start time in clock ticks after boot, `None` if it is gone
/// or this is not Linux.
pub(crate) fn start_time(pid: u32) -> Option<i64> {
    stat(pid).map(|stat| stat.start)
}

/// Whether `pid` names a live process that started at `start` (when known).
pub(crate) fn is_alive(pid: u32, start: Option<i64>) -> bool {
    let Some(pid_t) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match rustix::process::test_kill_process(pid_t) {
        // EPERM: the process exists but belongs to someone else.
        Ok(()) | Err(Errno::PERM) => {}
        Err(_) => return false,
    }
    match stat(pid) {
        // A zombie has exited; only its exit status is left to collect.
        Some(stat) if stat.zombie => false,
        Some(stat) => start.is_none_or(|start| start == stat.start),
        // No procfs to ask: the signal check is all there is.
        None => true,
    }
}

struct Stat {
    start: i64,
    zombie: bool,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so
    // the fields are counted from the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state is field 3 of stat(5), starttime field 22.
    let state = *fields.first()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some(Stat {
        start,
        zombie: state == "Z" || state == "X",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_with_its_own_start_time() {
        let me = std::process::id();
        let start = start_time(me);
        assert!(start.is_some());
        assert!(is_alive(me, start));
        assert!(is_alive(me, None));
    }

    #[test]
    fn a_different_start_time_means_the_pid_was_reused() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(!is_alive(me, Some(start + 1)));
    }

    #[test]
    fn exited_and_zombie_processes_are_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Until waited for, the exited child is a zombie.
        while stat(pid).is_some_and(|s| !s.zombie) {
            std::thread::yield_now();
        }
        assert!(!is_alive(pid, None));
        child.wait().unwrap();
        assert!(!is_alive(pid, None));
        assert!(!is_alive(0, None));
        assert!(!is_alive(u32::MAX, None));
    }
}
