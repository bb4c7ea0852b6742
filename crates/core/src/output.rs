//! The one collector of a command's events: every place that waits for a
//! command's stdout, stderr and exit status reads them through
//! [`collect`] or [`each`], so a stream that ends without `Exit` (its
//! runtime or agent went away) is always the same typed error,
//! [`MissingExit`].

use crate::{ExecEvent, ExitStatus, Stream};
use tokio::sync::mpsc;

/// A finished command's output and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitStatus,
}

/// A command's events ended without its exit status: whatever ran it went
/// away before the command ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the command's output ended without an exit status")]
pub struct MissingExit;

/// One step of a command's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A chunk of output, in the order it came.
    Output(Stream, Vec<u8>),
    /// How the command ended: the last step.
    Exit(ExitStatus),
}

/// The next step of a command's events, for a reader that awaits between
/// chunks (writing them to a log, say).
pub async fn next(events: &mut mpsc::Receiver<ExecEvent>) -> Result<Step, MissingExit> {
    match events.recv().await.ok_or(MissingExit)? {
        ExecEvent::Stdout { data } => Ok(Step::Output(Stream::Stdout, data.0)),
        ExecEvent::Stderr { data } => Ok(Step::Output(Stream::Stderr, data.0)),
        ExecEvent::Exit(exit) => Ok(Step::Exit(exit)),
    }
}

/// Hands each chunk of a command's output to `chunk` in the order it came,
/// and returns how the command ended.
pub async fn each(
    events: &mut mpsc::Receiver<ExecEvent>,
    mut chunk: impl FnMut(Stream, Vec<u8>),
) -> Result<ExitStatus, MissingExit> {
    loop {
        match next(events).await? {
            Step::Output(stream, data) => chunk(stream, data),
            Step::Exit(exit) => return Ok(exit),
        }
    }
}

/// Reads a command's events to the end: its stdout, stderr and exit
/// status.
pub async fn collect(events: &mut mpsc::Receiver<ExecEvent>) -> Result<Collected, MissingExit> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let exit = each(events, |stream, data| match stream {
        Stream::Stdout => stdout.extend(data),
        Stream::Stderr => stderr.extend(data),
    })
    .await?;
    Ok(Collected {
        stdout,
        stderr,
        exit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_gathered_per_stream_up_to_the_exit() {
        let (sender, mut events) = mpsc::channel(8);
        for event in [
            ExecEvent::output(Stream::Stdout, b"a".to_vec()),
            ExecEvent::output(Stream::Stderr, b"e".to_vec()),
            ExecEvent::output(Stream::Stdout, b"b".to_vec()),
            ExecEvent::Exit(ExitStatus {
                code: Some(3),
                ..Default::default()
            }),
        ] {
            sender.send(event).await.unwrap();
        }
        let collected = collect(&mut events).await.unwrap();
        assert_eq!(collected.stdout, b"ab");
        assert_eq!(collected.stderr, b"e");
        assert_eq!(collected.exit.code, Some(3));
    }

    #[tokio::test]
    async fn events_that_end_without_an_exit_are_a_missing_exit() {
        let (sender, mut events) = mpsc::channel(8);
        sender
            .send(ExecEvent::output(Stream::Stdout, b"partial".to_vec()))
            .await
            .unwrap();
        drop(sender);
        let mut seen = Vec::new();
        let ended = each(&mut events, |_, data| seen.extend(data)).await;
        assert_eq!(ended, Err(MissingExit));
        assert_eq!(seen, b"partial", "what came before the end is handed on");
    }
}
