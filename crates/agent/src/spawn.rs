//! Process setup that std cannot express safely: a child that leads a new
//! session with a terminal as its controlling tty. It needs code between
//! fork and exec, which is what `pre_exec` is for; the hook only makes
//! async-signal-safe system calls.
#![expect(
    unsafe_code,
    reason = "a pre_exec hook: only async-signal-safe syscalls between fork and exec"
)]

use std::os::unix::process::CommandExt as _;
use tokio::process::Command;

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
