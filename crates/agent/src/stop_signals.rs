//! The signals that stop the agent, SIGTERM and SIGINT, honoured only
//! from outside the workspace. As PID 1 of the workspace's PID namespace
//! the agent receives a signal that a process of the workspace sends only
//! when it handles that signal (the kernel drops the others, SIGKILL and
//! SIGSTOP included), and stopping on it would let any command end the
//! agent that serves the host. A signal from outside the namespace (the
//! runtime, `docker stop`) carries sender pid 0, since its sender has no
//! pid there; one from inside names its sender, and is ignored. An agent
//! that is not PID 1 (run as an ordinary process) shares its namespace
//! with whoever started it, and honours every sender.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::Origin;
use signal_hook_tokio::SignalsInfo;
use tokio_stream::StreamExt as _;

/// The agent's stop signals, handled from the moment this is made.
pub struct StopSignals {
    /// `None` when they cannot be handled: then nothing stops the agent
    /// but SIGKILL, as for a process without handlers.
    signals: Option<SignalsInfo<WithOrigin>>,
    as_init: bool,
}

impl StopSignals {
    pub fn listen() -> StopSignals {
        StopSignals {
            signals: SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT]).ok(),
            as_init: rustix::process::getpid().is_init(),
        }
    }

    /// Waits for a stop signal that the agent honours.
    pub async fn recv(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return std::future::pending().await;
        };
        while let Some(origin) = signals.next().await {
            if !self.as_init || from_outside(&origin) {
                return;
            }
        }
        std::future::pending().await
    }
}

/// Whether a signal came from outside the agent's PID namespace (or from
/// the kernel), rather than from a process of the workspace.
fn from_outside(origin: &Origin) -> bool {
    origin.process.is_none_or(|sender| sender.pid == 0)
}
