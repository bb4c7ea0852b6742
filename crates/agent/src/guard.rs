//! What keeps a workspace from taking over its own agent. The agent runs
//! as the workspace's root, the user its commands run as too, and by the
//! kernel's ordinary rules a process may trace, read and write the memory
//! of, and set the resource limits of, any process of its own user: a
//! command could stop the agent under `ptrace`, patch it through
//! `/proc/1/mem` or `process_vm_writev`, or leave it no descriptors with
//! `prlimit`, and every host-side call would then wait on it.
//!
//! - The agent is not dumpable: tracing it, its `/proc` files (`mem`,
//!   `environ`, `fd`), `process_vm_readv`/`writev` and `pidfd_getfd` then
//!   need CAP_SYS_PTRACE in the user namespace the agent was started in,
//!   which no process of a workspace has (the sandbox and Docker drop it;
//!   a user namespace a command makes is a child of that one, whose
//!   capabilities do not reach it).
//! - Its saved group id is one its real and effective group ids are not:
//!   `prlimit` and `ptrace` of another process are allowed without a
//!   capability only to a caller whose group id is all three of the
//!   target's, which no process then is. Commands are unaffected: an
//!   `execve` makes the saved id the effective one again.
//!
//! A SIGSTOP or SIGKILL from inside never reaches the agent as PID 1 of
//! the workspace's PID namespace: the kernel drops them.

/// Applies both measures to the calling thread, which must be the only
/// one (call it first thing in `main`: threads started later inherit
/// it). Each measure that cannot be applied is left out: an agent that is
/// not root cannot change its saved group id, and is no one else's to
/// defend.
pub fn harden() {
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let gid = rustix::process::getgid();
    let egid = rustix::process::getegid();
    if let Some(saved) = [65534, 65533]
        .into_iter()
        .map(rustix::process::Gid::from_raw)
        .find(|g| *g != gid && *g != egid)
    {
        let _ = rustix::thread::set_thread_res_gid(gid, egid, saved);
    }
}
