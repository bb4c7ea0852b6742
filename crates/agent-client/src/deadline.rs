//! How long the client waits for an agent. A workspace's agent can stop
//! answering (stopped, wedged, starved of CPU or memory); the provider's
//! calls must then fail, naming what did not come, instead of waiting
//! forever.

use std::time::Duration;

/// The variable that sets [`Deadlines::answer`], in seconds.
pub const ANSWER_ENV: &str = "BERTH_AGENT_TIMEOUT";

/// How long to wait for each kind of answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// For any answer that should come at once: the handshake, each frame
    /// of a file operation, info, the start of a command, session or
    /// terminal, a session's close.
    pub answer: Duration,
    /// For info with interpreter detection, which runs a probe per
    /// interpreter.
    pub detect: Duration,
    /// Beyond a command's own timeout, for the agent to end it and report
    /// its exit (the agent's grace period between SIGTERM and SIGKILL is
    /// 2 s by default).
    pub exec_grace: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            answer: Duration::from_secs(10),
            detect: Duration::from_secs(60),
            exec_grace: Duration::from_secs(5),
        }
    }
}

impl Deadlines {
    /// The defaults, with [`Deadlines::answer`] from `BERTH_AGENT_TIMEOUT`
    /// (seconds) when it is set to a positive number.
    pub fn from_env() -> Self {
        let mut deadlines = Deadlines::default();
        if let Some(answer) = std::env::var(ANSWER_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
        {
            deadlines.answer = Duration::from_secs_f64(answer);
        }
        deadlines
    }

    /// How long a command with `timeout` may take, all told, before its
    /// agent is taken for unresponsive; `None` for a command without one,
    /// which may run for as long as it likes.
    pub fn exec(&self, timeout: Option<Duration>) -> Option<Duration> {
        timeout.map(|t| t + self.exec_grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentClient, ClientError};
    use berth_proto::frame::{self, FrameDecoder};
    use berth_proto::{AgentMessage, ClientMessage, ExecRequest, Frame, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};
    use tokio_util::sync::CancellationToken;

    const DEADLINES: Deadlines = Deadlines {
        answer: Duration::from_secs(3),
        detect: Duration::from_secs(7),
        exec_grace: Duration::from_secs(5),
    };

    /// A wedged agent: accepts, answers the hello when `greet`, then reads
    /// whatever comes and never answers again.
    /// How far a wedged agent goes before it stops answering.
    #[derive(Clone, Copy, PartialEq)]
    enum Wedged {
        BeforeHello,
        AfterHello,
        /// Answers each command's start, then nothing.
        AfterStart,
        /// Answers each command's start and every request for its info,
        /// but never ends a command: an agent alive, its command silent.
        Alive,
    }

    /// A wedged agent: accepts every connection, answers as far as `at`
    /// says, reads whatever comes and never answers again.
    async fn wedged(listener: UnixListener, at: Wedged) {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_wedged(stream, at));
        }
    }

    async fn serve_wedged(mut stream: UnixStream, at: Wedged) {
        let mut buf = vec![0u8; 4096];
        let mut decoder = FrameDecoder::new();
        if at == Wedged::BeforeHello {
            while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            return;
        }
        loop {
            while let Ok(Some(frame)) = decoder.next_frame::<ClientMessage>() {
                let answer = match frame.message {
                    ClientMessage::Hello { .. } => AgentMessage::Hello {
                        version: PROTOCOL_VERSION,
                        agent: "wedged".into(),
                    },
                    ClientMessage::Exec { .. } if at != Wedged::AfterHello => {
                        AgentMessage::Started { pid: 7 }
                    }
                    ClientMessage::Info { .. } if at == Wedged::Alive => AgentMessage::Info {
                        info: berth_proto::AgentInfo {
                            version: "alive".into(),
                            protocol: PROTOCOL_VERSION,
                            pid: 1,
                            uptime_ms: 0,
                            root: "/workspace".into(),
                            interpreters: Vec::new(),
                            resources: Default::default(),
                            nice: 0,
                        },
                    },
                    _ => continue,
                };
                let bytes = frame::encode(&Frame::new(frame.id, answer)).unwrap();
                stream.write_all(&bytes).await.unwrap();
            }
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => decoder.feed(&buf[..n]),
                _ => return,
            }
        }
    }

    async fn wedged_agent(at: Wedged) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        tokio::spawn(wedged(UnixListener::bind(&socket).unwrap(), at));
        (dir, socket)
    }

    fn timed_out(err: ClientError) -> (&'static str, Duration) {
        match err {
            ClientError::Timeout { operation, after } => (operation, after),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_never_answers_the_hello_is_a_timeout() {
        let (_dir, socket) = wedged_agent(Wedged::BeforeHello).await;
        let began = tokio::time::Instant::now();
        let err = AgentClient::connect_with(&socket, Duration::from_secs(1), DEADLINES)
            .await
            .unwrap_err();
        assert_eq!(timed_out(err), ("hello", DEADLINES.answer));
        assert_eq!(began.elapsed(), DEADLINES.answer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wedged_agent_fails_each_operation_with_a_timeout_naming_it() {
        let (_dir, socket) = wedged_agent(Wedged::AfterHello).await;
        let client = AgentClient::connect_with(&socket, Duration::from_secs(1), DEADLINES)
            .await
            .unwrap();
        let path = berth_proto::WorkspacePath::parse("a").unwrap();

        let began = tokio::time::Instant::now();
        let err = client.read_file(&path).await.unwrap_err();
        assert_eq!(timed_out(err), ("read_file", DEADLINES.answer));
        assert_eq!(began.elapsed(), DEADLINES.answer);

        let err = client.list_dir(&path).await.unwrap_err();
        assert_eq!(timed_out(err), ("list_dir", DEADLINES.answer));
        let err = client.write_file(&path, b"x", None).await.unwrap_err();
        assert_eq!(timed_out(err), ("write_file", DEADLINES.answer));
        let err = client.info(false).await.unwrap_err();
        assert_eq!(timed_out(err), ("info", DEADLINES.answer));
        let err = client.info(true).await.unwrap_err();
        assert_eq!(timed_out(err), ("detect", DEADLINES.detect));
        let err = client
            .session(berth_proto::SessionParams::default())
            .await
            .unwrap_err();
        assert_eq!(timed_out(err), ("open_session", DEADLINES.answer));

        // A command gets the answer deadline to start, or less when its
        // own timeout and the grace for ending it are due sooner.
        for (grace, waited) in [
            (Duration::from_secs(5), DEADLINES.answer),
            (Duration::from_secs(1), Duration::from_millis(1500)),
        ] {
            let deadlines = Deadlines {
                exec_grace: grace,
                ..DEADLINES
            };
            let client = AgentClient::connect_with(&socket, Duration::from_secs(1), deadlines)
                .await
                .unwrap();
            let mut request = ExecRequest::shell("true");
            request.timeout_ms = Some(500);
            let began = tokio::time::Instant::now();
            let err = client
                .exec(request, CancellationToken::new())
                .await
                .unwrap_err();
            assert_eq!(timed_out(err), ("exec", waited));
            assert_eq!(began.elapsed(), waited);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_whose_agent_goes_silent_ends_past_its_timeout_and_grace() {
        let (_dir, socket) = wedged_agent(Wedged::AfterStart).await;
        let client = AgentClient::connect_with(&socket, Duration::from_secs(1), DEADLINES)
            .await
            .unwrap();
        let mut request = ExecRequest::shell("sleep 1000");
        request.timeout_ms = Some(500);
        let began = tokio::time::Instant::now();
        let mut events = client
            .exec(request, CancellationToken::new())
            .await
            .unwrap();
        let (_, stderr, exit) = crate::collect(&mut events).await;
        assert_eq!(
            began.elapsed(),
            Duration::from_millis(500) + DEADLINES.exec_grace
        );
        assert!(exit.timed_out && exit.cancelled, "{exit:?}");
        let stderr = String::from_utf8(stderr).unwrap();
        assert!(
            stderr.contains("the agent did not report the command's end"),
            "{stderr}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_without_a_timeout_whose_agent_goes_silent_ends_once_a_check_goes_unanswered()
    {
        let (_dir, socket) = wedged_agent(Wedged::AfterStart).await;
        let client = AgentClient::connect_with(&socket, Duration::from_secs(1), DEADLINES)
            .await
            .unwrap();
        let began = tokio::time::Instant::now();
        let mut events = client
            .exec(ExecRequest::shell("sleep 1000"), CancellationToken::new())
            .await
            .unwrap();
        let (_, stderr, exit) = crate::collect(&mut events).await;
        // Silence for the answer deadline, then a check unanswered for as
        // long.
        assert_eq!(began.elapsed(), DEADLINES.answer * 2);
        assert!(exit.cancelled && exit.code.is_none(), "{exit:?}");
        let stderr = String::from_utf8(stderr).unwrap();
        assert!(stderr.contains("the agent stopped answering"), "{stderr}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_command_of_an_agent_that_answers_runs_on() {
        let (_dir, socket) = wedged_agent(Wedged::Alive).await;
        let client = AgentClient::connect_with(&socket, Duration::from_secs(1), DEADLINES)
            .await
            .unwrap();
        let mut events = client
            .exec(ExecRequest::shell("sleep 1000"), CancellationToken::new())
            .await
            .unwrap();
        let waited = tokio::time::timeout(DEADLINES.answer * 100, events.recv()).await;
        assert!(waited.is_err(), "the command ended: {waited:?}");
    }
}
