//! An agent's priority, held from the host. The workspace's root may raise
//! the nice value of its agent and of each of its threads (`renice -n 19
//! -p 1`: they run as its own user), and then starve berth's calls with a
//! busy loop; nothing inside lets the agent lower it again (that takes
//! CAP_SYS_NICE in the host's user namespace, or room under `RLIMIT_NICE`,
//! which no process of a workspace has). The host process may: before each
//! use of a connection, [`hold`] puts each thread of the agent whose nice
//! value is above the host process's back at it. The agent's process id is
//! the one the kernel gave for the connection, not one the workspace told.

use rustix::process::Pid;

/// Puts each thread of process `pid` whose nice value is above `nice` back
/// at `nice`. What cannot be done (the process ended, this process may not)
/// is left as it is: the agent reports its nice value in its info.
pub(crate) fn hold(pid: u32, nice: i32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        // PRIO_PROCESS with a thread's id is that thread alone.
        if rustix::process::getpriority_process(Some(tid)).is_ok_and(|now| now > nice) {
            let _ = rustix::process::setpriority_process(Some(tid), nice);
        }
    }
}
