//! The default seccomp filter: Docker's default profile (moby's
//! `profiles/seccomp/default.json`) as an allow list, for a workspace
//! whose root keeps Docker's default capabilities
//! ([`KEPT_CAPABILITIES`](crate::stage1::KEPT_CAPABILITIES)).
//!
//! [`ALLOWED`] is what Docker allows to such a container without
//! conditions. Three calls are allowed only with some arguments, as in
//! Docker: `clone` without namespace flags (Docker wants CAP_SYS_ADMIN for
//! them), `socket` for any family but `AF_VSOCK` (the host's hypervisor
//! sockets), and `personality` with the values Docker allows.
//!
//! Everything else fails, with one of two answers:
//!
//! - `EPERM` for the calls in [`REFUSED`]: the kernel has them but the
//!   workspace may not use them, because Docker grants them only with a
//!   capability the sandbox drops (mounting, new namespaces, modules,
//!   BPF, tracing the kernel, the clock) or to no one (kernel keyrings,
//!   swap, `userfaultfd`, `io_uring`, whose operations seccomp never
//!   sees). It is what a process without the privilege expects, and what
//!   the same call gets under Docker.
//! - `ENOSYS` for any other call: newer than this list, or obsolete.
//!   Docker's profile answers `EPERM` to every call it does not list, but
//!   runc, beneath Docker, answers `ENOSYS` to calls newer than the
//!   profile, because `EPERM` makes libc and language runtimes report a
//!   failure where `ENOSYS` makes them fall back to an older call (glibc
//!   goes from `clone3` to `clone`, from `fchmodat2` to `fchmodat`).
//!   Answering `ENOSYS` to every call not listed gets that fallback
//!   without deciding which calls are "newer", and gives nothing away:
//!   the older call a program falls back to passes this same filter.
//!
//! `clone3` is the case that matters today: its flags are in memory, out
//! of a filter's reach, so it answers `ENOSYS` and libc uses `clone`,
//! whose flags the filter checks (Docker does the same).
//!
//! Only native calls pass: seccompiler kills a process making a call
//! through another ABI (32-bit x86), and x32 calls on x86_64 (numbers
//! with bit 30 set) match nothing and get `ENOSYS`. Docker allows both.
//!
//! The filter is two programs: the allow list (`ENOSYS` otherwise), then
//! the refusals (`EPERM`, installed last: among filters answering with
//! errors the kernel keeps the most recent one's errno). Arguments are
//! read only by the refusals of `clone`, `socket` and `personality`, so
//! every other allowed call gets "allow" from both programs whatever its
//! arguments; since Linux 5.11 the kernel notices that and caches it,
//! and those calls skip the filter altogether.

use linux_raw_sys::errno::{ENOSYS, EPERM};
use linux_raw_sys::general as nr;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp is not supported on this architecture")]
    Architecture,
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// Calls allowed whatever their arguments: Docker's list, less what does
/// not exist on this architecture, plus the calls Docker allows with the
/// capabilities the sandbox keeps (`chroot`, CAP_SYS_CHROOT) or on any
/// kernel from 4.8 on (`ptrace`, `process_vm_readv`, `process_vm_writev`:
/// a process may trace its own kind, not what CAP_SYS_PTRACE would
/// reach). `clone`, `socket` and `personality` are here too: their
/// refusals (see [`conditional_refusals`]) narrow them.
const ALLOWED: &[u32] = &[
    nr::__NR_accept,
    nr::__NR_accept4,
    nr::__NR_adjtimex,
    nr::__NR_bind,
    nr::__NR_brk,
    nr::__NR_cachestat,
    nr::__NR_capget,
    nr::__NR_capset,
    nr::__NR_chdir,
    nr::__NR_chroot,
    nr::__NR_clock_adjtime,
    nr::__NR_clock_getres,
    nr::__NR_clock_gettime,
    nr::__NR_clock_nanosleep,
    nr::__NR_clone,
    nr::__NR_close,
    nr::__NR_close_range,
    nr::__NR_connect,
    nr::__NR_copy_file_range,
    nr::__NR_dup,
    nr::__NR_dup3,
    nr::__NR_epoll_create1,
    nr::__NR_epoll_ctl,
    nr::__NR_epoll_pwait,
    nr::__NR_epoll_pwait2,
    nr::__NR_eventfd2,
    nr::__NR_execve,
    nr::__NR_execveat,
    nr::__NR_exit,
    nr::__NR_exit_group,
    nr::__NR_faccessat,
    nr::__NR_faccessat2,
    nr::__NR_fadvise64,
    nr::__NR_fallocate,
    nr::__NR_fanotify_mark,
    nr::__NR_fchdir,
    nr::__NR_fchmod,
    nr::__NR_fchmodat,
    nr::__NR_fchmodat2,
    nr::__NR_fchown,
    nr::__NR_fchownat,
    nr::__NR_fcntl,
    nr::__NR_fdatasync,
    nr::__NR_fgetxattr,
    nr::__NR_flistxattr,
    nr::__NR_flock,
    nr::__NR_fremovexattr,
    nr::__NR_fsetxattr,
    nr::__NR_fstat,
    nr::__NR_fstatfs,
    nr::__NR_fsync,
    nr::__NR_ftruncate,
    nr::__NR_futex,
    nr::__NR_futex_requeue,
    nr::__NR_futex_wait,
    nr::__NR_futex_waitv,
    nr::__NR_futex_wake,
    nr::__NR_get_robust_list,
    nr::__NR_getcpu,
    nr::__NR_getcwd,
    nr::__NR_getdents64,
    nr::__NR_getegid,
    nr::__NR_geteuid,
    nr::__NR_getgid,
    nr::__NR_getgroups,
    nr::__NR_getitimer,
    nr::__NR_getpeername,
    nr::__NR_getpgid,
    nr::__NR_getpid,
    nr::__NR_getppid,
    nr::__NR_getpriority,
    nr::__NR_getrandom,
    nr::__NR_getresgid,
    nr::__NR_getresuid,
    nr::__NR_getrlimit,
    nr::__NR_getrusage,
    nr::__NR_getsid,
    nr::__NR_getsockname,
    nr::__NR_getsockopt,
    nr::__NR_gettid,
    nr::__NR_gettimeofday,
    nr::__NR_getuid,
    nr::__NR_getxattr,
    nr::__NR_getxattrat,
    nr::__NR_inotify_add_watch,
    nr::__NR_inotify_init1,
    nr::__NR_inotify_rm_watch,
    nr::__NR_io_cancel,
    nr::__NR_io_destroy,
    nr::__NR_io_getevents,
    nr::__NR_io_pgetevents,
    nr::__NR_io_setup,
    nr::__NR_io_submit,
    nr::__NR_ioctl,
    nr::__NR_ioprio_get,
    nr::__NR_ioprio_set,
    nr::__NR_kill,
    nr::__NR_landlock_add_rule,
    nr::__NR_landlock_create_ruleset,
    nr::__NR_landlock_restrict_self,
    nr::__NR_lgetxattr,
    nr::__NR_linkat,
    nr::__NR_listen,
    nr::__NR_listmount,
    nr::__NR_listxattr,
    nr::__NR_listxattrat,
    nr::__NR_llistxattr,
    nr::__NR_lremovexattr,
    nr::__NR_lseek,
    nr::__NR_lsetxattr,
    nr::__NR_madvise,
    nr::__NR_map_shadow_stack,
    nr::__NR_membarrier,
    nr::__NR_memfd_create,
    nr::__NR_memfd_secret,
    nr::__NR_mincore,
    nr::__NR_mkdirat,
    nr::__NR_mknodat,
    nr::__NR_mlock,
    nr::__NR_mlock2,
    nr::__NR_mlockall,
    nr::__NR_mmap,
    nr::__NR_mprotect,
    nr::__NR_mq_getsetattr,
    nr::__NR_mq_notify,
    nr::__NR_mq_open,
    nr::__NR_mq_timedreceive,
    nr::__NR_mq_timedsend,
    nr::__NR_mq_unlink,
    nr::__NR_mremap,
    nr::__NR_mseal,
    nr::__NR_msgctl,
    nr::__NR_msgget,
    nr::__NR_msgrcv,
    nr::__NR_msgsnd,
    nr::__NR_msync,
    nr::__NR_munlock,
    nr::__NR_munlockall,
    nr::__NR_munmap,
    nr::__NR_name_to_handle_at,
    nr::__NR_nanosleep,
    nr::__NR_newfstatat,
    nr::__NR_openat,
    nr::__NR_openat2,
    nr::__NR_personality,
    nr::__NR_pidfd_open,
    nr::__NR_pidfd_send_signal,
    nr::__NR_pipe2,
    nr::__NR_pkey_alloc,
    nr::__NR_pkey_free,
    nr::__NR_pkey_mprotect,
    nr::__NR_ppoll,
    nr::__NR_prctl,
    nr::__NR_pread64,
    nr::__NR_preadv,
    nr::__NR_preadv2,
    nr::__NR_prlimit64,
    nr::__NR_process_mrelease,
    nr::__NR_process_vm_readv,
    nr::__NR_process_vm_writev,
    nr::__NR_pselect6,
    nr::__NR_ptrace,
    nr::__NR_pwrite64,
    nr::__NR_pwritev,
    nr::__NR_pwritev2,
    nr::__NR_read,
    nr::__NR_readahead,
    nr::__NR_readlinkat,
    nr::__NR_readv,
    nr::__NR_recvfrom,
    nr::__NR_recvmmsg,
    nr::__NR_recvmsg,
    nr::__NR_remap_file_pages,
    nr::__NR_removexattr,
    nr::__NR_removexattrat,
    nr::__NR_renameat,
    nr::__NR_renameat2,
    nr::__NR_restart_syscall,
    nr::__NR_rseq,
    nr::__NR_rt_sigaction,
    nr::__NR_rt_sigpending,
    nr::__NR_rt_sigprocmask,
    nr::__NR_rt_sigqueueinfo,
    nr::__NR_rt_sigreturn,
    nr::__NR_rt_sigsuspend,
    nr::__NR_rt_sigtimedwait,
    nr::__NR_rt_tgsigqueueinfo,
    nr::__NR_sched_get_priority_max,
    nr::__NR_sched_get_priority_min,
    nr::__NR_sched_getaffinity,
    nr::__NR_sched_getattr,
    nr::__NR_sched_getparam,
    nr::__NR_sched_getscheduler,
    nr::__NR_sched_rr_get_interval,
    nr::__NR_sched_setaffinity,
    nr::__NR_sched_setattr,
    nr::__NR_sched_setparam,
    nr::__NR_sched_setscheduler,
    nr::__NR_sched_yield,
    nr::__NR_seccomp,
    nr::__NR_semctl,
    nr::__NR_semget,
    nr::__NR_semop,
    nr::__NR_semtimedop,
    nr::__NR_sendfile,
    nr::__NR_sendmmsg,
    nr::__NR_sendmsg,
    nr::__NR_sendto,
    nr::__NR_set_robust_list,
    nr::__NR_set_tid_address,
    nr::__NR_setfsgid,
    nr::__NR_setfsuid,
    nr::__NR_setgid,
    nr::__NR_setgroups,
    nr::__NR_setitimer,
    nr::__NR_setpgid,
    nr::__NR_setpriority,
    nr::__NR_setregid,
    nr::__NR_setresgid,
    nr::__NR_setresuid,
    nr::__NR_setreuid,
    nr::__NR_setrlimit,
    nr::__NR_setsid,
    nr::__NR_setsockopt,
    nr::__NR_setuid,
    nr::__NR_setxattr,
    nr::__NR_setxattrat,
    nr::__NR_shmat,
    nr::__NR_shmctl,
    nr::__NR_shmdt,
    nr::__NR_shmget,
    nr::__NR_shutdown,
    nr::__NR_sigaltstack,
    nr::__NR_signalfd4,
    nr::__NR_socket,
    nr::__NR_socketpair,
    nr::__NR_splice,
    nr::__NR_statfs,
    nr::__NR_statmount,
    nr::__NR_statx,
    nr::__NR_symlinkat,
    nr::__NR_sync,
    nr::__NR_sync_file_range,
    nr::__NR_syncfs,
    nr::__NR_sysinfo,
    nr::__NR_tee,
    nr::__NR_tgkill,
    nr::__NR_timer_create,
    nr::__NR_timer_delete,
    nr::__NR_timer_getoverrun,
    nr::__NR_timer_gettime,
    nr::__NR_timer_settime,
    nr::__NR_timerfd_create,
    nr::__NR_timerfd_gettime,
    nr::__NR_timerfd_settime,
    nr::__NR_times,
    nr::__NR_tkill,
    nr::__NR_truncate,
    nr::__NR_umask,
    nr::__NR_uname,
    nr::__NR_unlinkat,
    nr::__NR_utimensat,
    nr::__NR_vmsplice,
    nr::__NR_wait4,
    nr::__NR_waitid,
    nr::__NR_write,
    nr::__NR_writev,
];

/// The older calls x86_64 keeps beside their `*at` and `*2` successors,
/// and its own: all in Docker's list.
#[cfg(target_arch = "x86_64")]
const ALLOWED_X86_64: &[u32] = &[
    nr::__NR_access,
    nr::__NR_alarm,
    nr::__NR_arch_prctl,
    nr::__NR_chmod,
    nr::__NR_chown,
    nr::__NR_creat,
    nr::__NR_dup2,
    nr::__NR_epoll_create,
    nr::__NR_epoll_ctl_old,
    nr::__NR_epoll_wait,
    nr::__NR_epoll_wait_old,
    nr::__NR_eventfd,
    nr::__NR_fork,
    nr::__NR_futimesat,
    nr::__NR_get_thread_area,
    nr::__NR_getdents,
    nr::__NR_getpgrp,
    nr::__NR_inotify_init,
    nr::__NR_lchown,
    nr::__NR_link,
    nr::__NR_lstat,
    nr::__NR_mkdir,
    nr::__NR_mknod,
    nr::__NR_modify_ldt,
    nr::__NR_open,
    nr::__NR_pause,
    nr::__NR_pipe,
    nr::__NR_poll,
    nr::__NR_readlink,
    nr::__NR_rename,
    nr::__NR_rmdir,
    nr::__NR_select,
    nr::__NR_set_thread_area,
    nr::__NR_signalfd,
    nr::__NR_stat,
    nr::__NR_symlink,
    nr::__NR_time,
    nr::__NR_unlink,
    nr::__NR_uretprobe,
    nr::__NR_utime,
    nr::__NR_utimes,
    nr::__NR_vfork,
];

#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_X86_64: &[u32] = &[];

/// Calls that answer `EPERM`, grouped by what Docker wants for them.
const REFUSED: &[u32] = &[
    // CAP_SYS_ADMIN: mounts, namespaces, host and domain names, BPF and
    // perf, quotas, fanotify, the kernel log, LSM attributes.
    nr::__NR_bpf,
    nr::__NR_fanotify_init,
    nr::__NR_fsconfig,
    nr::__NR_fsmount,
    nr::__NR_fsopen,
    nr::__NR_fspick,
    nr::__NR_lookup_dcookie,
    nr::__NR_lsm_get_self_attr,
    nr::__NR_lsm_list_modules,
    nr::__NR_lsm_set_self_attr,
    nr::__NR_mount,
    nr::__NR_mount_setattr,
    nr::__NR_move_mount,
    nr::__NR_open_tree,
    nr::__NR_open_tree_attr,
    nr::__NR_perf_event_open,
    nr::__NR_pivot_root,
    nr::__NR_quotactl,
    nr::__NR_quotactl_fd,
    nr::__NR_setdomainname,
    nr::__NR_sethostname,
    nr::__NR_setns,
    nr::__NR_syslog,
    nr::__NR_umount2,
    nr::__NR_unshare,
    // CAP_SYS_BOOT.
    nr::__NR_kexec_file_load,
    nr::__NR_kexec_load,
    nr::__NR_reboot,
    // CAP_SYS_MODULE.
    nr::__NR_delete_module,
    nr::__NR_finit_module,
    nr::__NR_init_module,
    // CAP_SYS_PACCT.
    nr::__NR_acct,
    // CAP_SYS_PTRACE: other processes' descriptors and memory.
    nr::__NR_kcmp,
    nr::__NR_pidfd_getfd,
    nr::__NR_process_madvise,
    // CAP_SYS_TIME: the clock is the host's.
    nr::__NR_clock_settime,
    nr::__NR_settimeofday,
    // CAP_SYS_TTY_CONFIG.
    nr::__NR_vhangup,
    // CAP_SYS_NICE: NUMA memory policy.
    nr::__NR_get_mempolicy,
    nr::__NR_mbind,
    nr::__NR_migrate_pages,
    nr::__NR_move_pages,
    nr::__NR_set_mempolicy,
    nr::__NR_set_mempolicy_home_node,
    // CAP_DAC_READ_SEARCH: opening any file by its handle.
    nr::__NR_open_by_handle_at,
    // No one: keyrings are not namespaced, swap is the host's,
    // userfaultfd stalls the kernel at will (a staple of exploits), and
    // io_uring runs operations seccomp never sees.
    nr::__NR_add_key,
    nr::__NR_io_uring_enter,
    nr::__NR_io_uring_register,
    nr::__NR_io_uring_setup,
    nr::__NR_keyctl,
    nr::__NR_request_key,
    nr::__NR_swapoff,
    nr::__NR_swapon,
    nr::__NR_userfaultfd,
    // CAP_SYS_RAWIO: I/O ports.
    #[cfg(target_arch = "x86_64")]
    nr::__NR_ioperm,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_iopl,
];

/// `clone` flags that make new namespaces: Docker wants CAP_SYS_ADMIN.
const NAMESPACE_FLAGS: &[u32] = &[
    nr::CLONE_NEWNS,
    nr::CLONE_NEWUTS,
    nr::CLONE_NEWIPC,
    nr::CLONE_NEWUSER,
    nr::CLONE_NEWPID,
    nr::CLONE_NEWNET,
    nr::CLONE_NEWCGROUP,
];

/// `personality` values Docker allows: Linux, its 32-bit flavour, each
/// with a 2.6-style version number (UNAME26), and the query 0xffffffff.
const PERSONALITIES: &[u32] = &[0x0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `AF_VSOCK`: sockets to the host's hypervisor.
const AF_VSOCK: u32 = 40;

fn arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::Architecture)
    }
}

fn build_error(e: impl std::fmt::Display) -> SeccompError {
    SeccompError::Build(e.to_string())
}

fn condition(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, len, op, value).map_err(build_error)
}

/// The refusals that depend on arguments: each rule matches (and refuses)
/// a call the allow list lets through by number. `socket`'s family and
/// `personality`'s persona are C `int`s, so only their low 32 bits are
/// compared, as the kernel reads them (a 64-bit comparison, as Docker
/// makes, is passed by setting a high bit).
fn conditional_refusals() -> Result<BTreeMap<u32, Vec<SeccompRule>>, SeccompError> {
    let clone = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::from(flag);
            let any = condition(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![any]).map_err(build_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vsock = condition(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        u64::from(AF_VSOCK),
    )?;
    let other_persona = PERSONALITIES
        .iter()
        .map(|&value| {
            condition(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                u64::from(value),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok([
        (nr::__NR_clone, clone),
        (
            nr::__NR_socket,
            vec![SeccompRule::new(vec![vsock]).map_err(build_error)?],
        ),
        (
            nr::__NR_personality,
            vec![SeccompRule::new(other_persona).map_err(build_error)?],
        ),
    ]
    .into_iter()
    .collect())
}

fn compile(
    rules: BTreeMap<u32, Vec<SeccompRule>>,
    on_mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let rules = rules
        .into_iter()
        .map(|(call, rules)| (i64::from(call), rules))
        .collect();
    let filter = SeccompFilter::new(rules, on_mismatch, on_match, arch()?).map_err(build_error)?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build_error(e))
}

/// The compiled filters, in installation order: the allow list, then the
/// refusals.
pub fn default_filters() -> Result<Vec<BpfProgram>, SeccompError> {
    let allow = compile(
        ALLOWED
            .iter()
            .chain(ALLOWED_X86_64)
            .map(|&call| (call, Vec::new()))
            .collect(),
        SeccompAction::Errno(ENOSYS),
        SeccompAction::Allow,
    )?;
    let mut refusals = conditional_refusals()?;
    refusals.extend(REFUSED.iter().map(|&call| (call, Vec::new())));
    let refuse = compile(refusals, SeccompAction::Allow, SeccompAction::Errno(EPERM))?;
    Ok(vec![allow, refuse])
}

/// Installs the default filters on the calling thread; they are inherited
/// by everything it runs. Requires `no_new_privs` or CAP_SYS_ADMIN.
pub fn install_default() -> Result<(), SeccompError> {
    for program in default_filters()? {
        seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The compiled programs are run here by a small BPF interpreter that
    //! follows the kernel: its answer for each call, how answers of
    //! several filters combine, and whether an answer depends on the
    //! arguments (what decides the kernel's cache of allowed calls). The
    //! integration tests check the same answers on the real kernel.

    use super::*;
    use seccompiler::sock_filter;

    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const ALLOW: u32 = RET_ALLOW;
    const REFUSE: u32 = RET_ERRNO | EPERM;
    const NOSYS: u32 = RET_ERRNO | ENOSYS;

    #[cfg(target_arch = "x86_64")]
    const NATIVE: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const NATIVE: u32 = 0xc000_00b7;
    const I386: u32 = 0x4000_0003;
    /// x86_64's x32 ABI: native arch, numbers with bit 30 set.
    const X32_BIT: u32 = 0x4000_0000;

    struct Call {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    fn call(nr: u32, args: &[u64]) -> Call {
        let mut all = [0; 6];
        all[..args.len()].copy_from_slice(args);
        Call {
            nr,
            arch: NATIVE,
            args: all,
        }
    }

    /// One program's answer, and whether it read an argument on the way.
    fn run(program: &[sock_filter], call: &Call) -> (u32, bool) {
        let (mut acc, mut pc, mut read_args) = (0u32, 0usize, false);
        loop {
            let ins = &program[pc];
            let (k, jt, jf) = (ins.k, usize::from(ins.jt), usize::from(ins.jf));
            pc += 1;
            match ins.code {
                // BPF_LD | BPF_W | BPF_ABS: a word of `struct seccomp_data`.
                0x20 => {
                    acc = match k {
                        0 => call.nr,
                        4 => call.arch,
                        16..=63 => {
                            read_args = true;
                            let arg = call.args[(k as usize - 16) / 8];
                            // Little-endian: the low half comes first.
                            if (k - 16) % 8 == 0 {
                                arg as u32
                            } else {
                                (arg >> 32) as u32
                            }
                        }
                        other => panic!("load from offset {other}"),
                    }
                }
                0x05 => pc += k as usize,
                0x15 => pc += if acc == k { jt } else { jf },
                0x25 => pc += if acc > k { jt } else { jf },
                0x35 => pc += if acc >= k { jt } else { jf },
                0x45 => pc += if acc & k != 0 { jt } else { jf },
                0x54 => acc &= k,
                0x06 => return (k, read_args),
                code => panic!("instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    /// The answer of all the filters, as the kernel combines them: the
    /// most restrictive action wins, and among equals the most recently
    /// installed filter's.
    fn decide(filters: &[BpfProgram], call: &Call) -> (u32, bool) {
        let mut answer = RET_ALLOW;
        let mut read_args = false;
        for program in filters.iter().rev() {
            let (ret, read) = run(program, call);
            read_args |= read;
            if ((ret & 0xffff_0000) as i32) < ((answer & 0xffff_0000) as i32) {
                answer = ret;
            }
        }
        (answer, read_args)
    }

    fn answer(filters: &[BpfProgram], nr: u32, args: &[u64]) -> u32 {
        decide(filters, &call(nr, args)).0
    }

    /// Arguments of every shape: a fixed answer must not change with them.
    const ARGUMENTS: &[[u64; 6]] = &[
        [0; 6],
        [u64::MAX; 6],
        [1, 2, 3, 4, 5, 6],
        [0x8000_0000, 0xffff_ffff, 0x1_0000_0000, 40, 0x7e02_0000, 8],
    ];

    fn allowed() -> Vec<u32> {
        ALLOWED.iter().chain(ALLOWED_X86_64).copied().collect()
    }

    const CONDITIONAL: [u32; 3] = [nr::__NR_clone, nr::__NR_socket, nr::__NR_personality];

    #[test]
    fn the_filters_fit_the_kernel_limit_with_room_to_spare() {
        let filters = default_filters().unwrap();
        let lengths: Vec<usize> = filters.iter().map(Vec::len).collect();
        // BPF programs are limited to 4096 instructions each. Five per
        // listed call (seccompiler's layout), plus the architecture check
        // and the argument tests of clone, socket and personality.
        assert!(lengths.iter().all(|&len| len < 4096), "{lengths:?}");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(lengths, [1550, 372], "the filter's length changed");
    }

    #[test]
    fn the_lists_do_not_overlap_or_repeat() {
        let mut all = allowed();
        all.extend(REFUSED);
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "a call is listed twice");
        assert!(!allowed().contains(&nr::__NR_clone3));
        assert!(!REFUSED.contains(&nr::__NR_clone3));
    }

    #[test]
    fn allowed_calls_pass_whatever_their_arguments_and_only_three_read_them() {
        let filters = default_filters().unwrap();
        for nr in allowed().into_iter().filter(|nr| !CONDITIONAL.contains(nr)) {
            for args in ARGUMENTS {
                let (answer, read_args) = decide(&filters, &call(nr, args));
                assert_eq!(answer, ALLOW, "call {nr} with {args:?}");
                // What the kernel requires to cache the call as allowed.
                assert!(!read_args, "call {nr} depends on its arguments");
            }
        }
        for nr in CONDITIONAL {
            assert!(decide(&filters, &call(nr, &[])).1, "call {nr}");
        }
    }

    #[test]
    fn refused_calls_answer_eperm() {
        let filters = default_filters().unwrap();
        for &nr in REFUSED {
            for args in ARGUMENTS {
                assert_eq!(answer(&filters, nr, args), REFUSE, "call {nr}");
            }
        }
        for nr in [
            nr::__NR_mount,
            nr::__NR_unshare,
            nr::__NR_setns,
            nr::__NR_bpf,
            nr::__NR_add_key,
            nr::__NR_kexec_load,
            nr::__NR_init_module,
            nr::__NR_io_uring_setup,
        ] {
            assert_eq!(answer(&filters, nr, &[]), REFUSE, "call {nr}");
        }
    }

    #[test]
    fn every_other_call_answers_enosys_including_x32_and_clone3() {
        let filters = default_filters().unwrap();
        let listed: Vec<u32> = allowed()
            .into_iter()
            .chain(REFUSED.iter().copied())
            .collect();
        let unknown: Vec<u32> = (0..1024).filter(|nr| !listed.contains(nr)).collect();
        assert!(unknown.contains(&nr::__NR_clone3));
        // Newer than Docker's profile (Linux 6.17).
        assert!(unknown.contains(&nr::__NR_file_getattr));
        for nr in unknown {
            assert_eq!(answer(&filters, nr, &[]), NOSYS, "call {nr}");
        }
        // A deny list matching numbers would let x32 calls by.
        for nr in listed {
            assert_eq!(answer(&filters, nr | X32_BIT, &[]), NOSYS, "x32 call {nr}");
        }
    }

    #[test]
    fn calls_through_another_architecture_kill_the_process() {
        let filters = default_filters().unwrap();
        let mut i386 = call(nr::__NR_getpid, &[]);
        i386.arch = I386;
        assert_eq!(decide(&filters, &i386).0, RET_KILL_PROCESS);
    }

    #[test]
    fn clone_may_not_make_namespaces() {
        let filters = default_filters().unwrap();
        let sigchld = 17;
        let thread = u64::from(
            nr::CLONE_VM
                | nr::CLONE_FS
                | nr::CLONE_FILES
                | nr::CLONE_SIGHAND
                | nr::CLONE_THREAD
                | nr::CLONE_SYSVSEM
                | nr::CLONE_SETTLS
                | nr::CLONE_PARENT_SETTID
                | nr::CLONE_CHILD_CLEARTID,
        );
        let vfork = u64::from(nr::CLONE_VM | nr::CLONE_VFORK) | sigchld;
        for flags in [sigchld, thread, vfork, u64::from(nr::CLONE_PIDFD) | sigchld] {
            assert_eq!(
                answer(&filters, nr::__NR_clone, &[flags]),
                ALLOW,
                "{flags:#x}"
            );
        }
        for &flag in NAMESPACE_FLAGS {
            for flags in [
                u64::from(flag),
                u64::from(flag) | sigchld,
                u64::from(flag) | thread,
            ] {
                assert_eq!(
                    answer(&filters, nr::__NR_clone, &[flags]),
                    REFUSE,
                    "{flags:#x}"
                );
            }
        }
        // Its flags are in memory: it answers as if it did not exist.
        assert_eq!(answer(&filters, nr::__NR_clone3, &[0, 88]), NOSYS);
    }

    #[test]
    fn socket_refuses_vsock_only() {
        let filters = default_filters().unwrap();
        // AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET.
        for family in [1, 2, 10, 16, 17] {
            assert_eq!(answer(&filters, nr::__NR_socket, &[family, 1, 0]), ALLOW);
        }
        assert_eq!(answer(&filters, nr::__NR_socket, &[40, 1, 0]), REFUSE);
        // The kernel reads an int: high bits do not hide the family.
        assert_eq!(
            answer(&filters, nr::__NR_socket, &[0x1_0000_0028, 1, 0]),
            REFUSE
        );
    }

    #[test]
    fn personality_takes_dockers_values_only() {
        let filters = default_filters().unwrap();
        for &persona in PERSONALITIES {
            let persona = u64::from(persona);
            assert_eq!(answer(&filters, nr::__NR_personality, &[persona]), ALLOW);
        }
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, PER_BSD.
        for persona in [0x0004_0000, 0x0040_0000, 0x6] {
            assert_eq!(
                answer(&filters, nr::__NR_personality, &[persona]),
                REFUSE,
                "{persona:#x}"
            );
        }
    }
}
