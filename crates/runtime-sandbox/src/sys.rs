//! The few kernel calls that have no safe wrapper: forking into new
//! namespaces, dropping bounding capabilities, raising `lo`. Each is
//! called from a single-threaded process (the stage-1 init), which is
//! what makes forking there sound.

#![expect(unsafe_code, reason = "raw clone, fork, prctl and ioctl calls")]

use std::io;

/// Forks into new namespaces (`CLONE_NEW*` flags). Returns the child's pid
/// in the parent and `None` in the child.
///
/// Must only be called while the process has one thread.
pub fn clone_into(flags: libc::c_int) -> io::Result<Option<u32>> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: with a null stack, clone behaves like fork; the caller is
    // single-threaded, so the child's copy of memory is consistent.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Leaves the namespaces given by `flags` for new ones.
pub fn unshare(flags: rustix::thread::UnshareFlags) -> io::Result<()> {
    // SAFETY: called before any other thread exists, so no thread shares
    // the file table or filesystem state being unshared.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Drops every capability not in `keep` (a bit per capability number)
/// from the bounding set, so no later exec can regain it.
pub fn drop_bounding_set(keep: u64) -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if present != 1 || keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: the request names an interface and has room for the flags.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut request) < 0 {
            -1
        } else {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &request)
        }
    };
    let error = io::Error::last_os_error();
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    if result < 0 { Err(error) } else { Ok(()) }
}

/// Forks. Returns the child's pid in the parent and `None` in the child.
///
/// Must only be called while the process has one thread.
pub fn fork() -> io::Result<Option<u32>> {
    // SAFETY: the caller is single-threaded.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Ends the calling process with `signal`, as the process it waited for
/// ended, so that its own parent sees the same end.
pub fn die_by(signal: libc::c_int) -> ! {
    // SAFETY: resetting a disposition and raising a signal take integers.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}
