//! Process setup that std cannot express safely: a child that gets an
//! extra descriptor at a fixed number (a session's status pipe on fd 3),
//! and a child that leads a new session with a terminal as its
//! controlling tty. Both need code between fork and exec, which is what
//! `pre_exec` is for; the hooks only make async-signal-safe system calls.
#![expect(
    unsafe_code,
    reason = "pre_exec hooks: only async-signal-safe syscalls between fork and exec"
)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use tokio::process::Command;

/// Makes `fd` the child's descriptor 3, open across exec.
pub fn pass_as_fd3(command: &mut Command, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: the hook only calls dup2/fcntl on descriptors that are open
    // in the child (inherited from the parent), and allocates nothing.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            let source = rustix::fd::BorrowedFd::borrow_raw(raw);
            if raw == 3 {
                // dup2 onto itself keeps close-on-exec; clear it instead.
                rustix::io::fcntl_setfd(source, rustix::io::FdFlags::empty())?;
            } else {
                let mut three = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(3));
                rustix::io::dup2(source, &mut three)?;
            }
            Ok(())
        });
    }
}

/// Makes the child lead a new session whose controlling terminal is its
/// stdin (which must be a terminal).
pub fn controlling_terminal(command: &mut Command) {
    // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe and the
    // hook allocates nothing.
    unsafe {
        command.as_std_mut().pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
}
