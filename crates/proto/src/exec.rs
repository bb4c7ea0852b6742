//! Running a command: the request, the streamed events and the exit status.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// What to run: an argv vector run directly, or a string run by `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Argv(Vec<String>),
    Shell(String),
}

impl Command {
    /// The argv that runs this command.
    pub fn to_argv(&self) -> Vec<String> {
        match self {
            Command::Argv(argv) => argv.clone(),
            Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
        }
    }

    /// A short human-readable form, for logs and progress lines.
    pub fn display(&self) -> String {
        match self {
            Command::Argv(argv) => argv.join(" "),
            Command::Shell(script) => script.clone(),
        }
    }
}

/// A request to run one command in a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Command,
    /// Working directory relative to the workspace root; the root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to (and overriding) the workspace's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Bytes written to the command's stdin, which is then closed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_base64"
    )]
    pub stdin: Option<Vec<u8>>,
    /// Time limit in milliseconds; the whole process tree is ended past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes kept per stream; anything beyond is counted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limit: Option<u64>,
}

impl ExecRequest {
    pub fn new(command: Command) -> Self {
        ExecRequest {
            command,
            cwd: None,
            env: BTreeMap::new(),
            stdin: None,
            timeout_ms: None,
            output_limit: None,
        }
    }

    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(Command::Shell(script.into()))
    }

    pub fn argv<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A chunk of output. On the wire it is a string when the bytes are UTF-8
/// and `{"base64": "..."}` otherwise, so no byte is ever lost.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output(pub Vec<u8>);

impl Serialize for Output {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                #[derive(Serialize)]
                struct Encoded {
                    base64: String,
                }
                Encoded {
                    base64: BASE64.encode(&self.0),
                }
                .serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Output {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Text(String),
            Encoded { base64: String },
        }
        match Wire::deserialize(deserializer)? {
            Wire::Text(text) => Ok(Output(text.into_bytes())),
            Wire::Encoded { base64 } => BASE64
                .decode(base64)
                .map(Output)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// One event of a running command. `Exit` is always the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Stdout { data: Output },
    Stderr { data: Output },
    Exit(ExitStatus),
}

impl ExecEvent {
    pub fn output(stream: Stream, data: Vec<u8>) -> Self {
        match stream {
            Stream::Stdout => ExecEvent::Stdout { data: Output(data) },
            Stream::Stderr => ExecEvent::Stderr { data: Output(data) },
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when the command exited normally.
    pub code: Option<i32>,
    /// The signal that ended the command, when it was killed by one.
    pub signal: Option<i32>,
    /// The command ran past its timeout and was ended.
    #[serde(default)]
    pub timed_out: bool,
    /// The command was cancelled (explicitly or by its client going away).
    #[serde(default)]
    pub cancelled: bool,
    /// Bytes of stdout beyond the output limit, not delivered.
    #[serde(default)]
    pub stdout_dropped: u64,
    /// Bytes of stderr beyond the output limit, not delivered.
    #[serde(default)]
    pub stderr_dropped: u64,
    /// Wall-clock time from start to exit, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
}

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out && !self.cancelled
    }
}

mod optional_base64 {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_str(&BASE64.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| BASE64.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_text_when_utf8_and_base64_otherwise() {
        let text = serde_json::to_string(&Output(b"hi\n".to_vec())).unwrap();
        assert_eq!(text, r#""hi\n""#);
        let binary = serde_json::to_string(&Output(vec![0xff, 0x00])).unwrap();
        assert_eq!(binary, r#"{"base64":"/wA="}"#);
        for wire in [text, binary] {
            let back: Output = serde_json::from_str(&wire).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), wire);
        }
    }

    #[test]
    fn exec_request_accepts_argv_or_shell_and_base64_stdin() {
        let req: ExecRequest =
            serde_json::from_str(r#"{"command":["ls","-l"],"stdin":"aGk=","timeout_ms":5}"#)
                .unwrap();
        assert_eq!(req.command.to_argv(), ["ls", "-l"]);
        assert_eq!(req.stdin.as_deref(), Some(&b"hi"[..]));
        let req: ExecRequest = serde_json::from_str(r#"{"command":"echo hi"}"#).unwrap();
        assert_eq!(req.command.to_argv(), ["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn shell_code_reports_signals_like_a_shell() {
        let killed = ExitStatus {
            signal: Some(9),
            ..Default::default()
        };
        assert_eq!(killed.shell_code(), 137);
    }
}
