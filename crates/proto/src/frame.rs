//! Framing: how messages travel over the agent's unix socket.
//!
//! Every frame is
//!
//! ```text
//! [u32 BE header length][u32 BE payload length][header: JSON][payload: raw bytes]
//! ```
//!
//! The header is `{"id": <u64>, "msg": {"type": "...", ...}}`: the id of the
//! operation the frame belongs to and one message (see [`crate::message`]).
//! The payload carries bulk bytes (command output, stdin, file contents)
//! as they are, so they are never base64-encoded; it is empty for most
//! messages. Headers are limited to [`MAX_HEADER`] bytes and payloads to
//! [`MAX_PAYLOAD`] bytes; a decoder refuses a larger frame from its length
//! prefix alone, before buffering any of it, and the connection is then
//! closed because the stream can no longer be trusted.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The length prefix: header length then payload length, both u32 BE.
pub const PREFIX_LEN: usize = 8;
/// The largest header accepted, in bytes.
pub const MAX_HEADER: usize = 1 << 20;
/// The largest payload accepted, in bytes; senders split larger data.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// One frame: the operation id, a message and its raw payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    pub id: u64,
    pub message: M,
    pub payload: Vec<u8>,
}

impl<M> Frame<M> {
    pub fn new(id: u64, message: M) -> Self {
        Frame {
            id,
            message,
            payload: Vec::new(),
        }
    }

    pub fn with_payload(id: u64, message: M, payload: Vec<u8>) -> Self {
        Frame {
            id,
            message,
            payload,
        }
    }
}

#[derive(Serialize)]
struct HeaderOut<'a, M> {
    id: u64,
    msg: &'a M,
}

#[derive(Deserialize)]
struct HeaderIn<M> {
    id: u64,
    msg: M,
}

/// Just the id, to answer a frame whose message could not be understood.
#[derive(Deserialize)]
struct HeaderId {
    id: u64,
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug)]
pub enum FrameError {
    /// The header is longer than [`MAX_HEADER`]; the stream is unusable.
    HeaderTooLarge { len: usize },
    /// The payload is longer than [`MAX_PAYLOAD`]; the stream is unusable.
    PayloadTooLarge { len: usize },
    /// The header is not a valid message. The frame was consumed, so the
    /// stream can go on; `id` is the frame's id when it could be read.
    Message {
        id: Option<u64>,
        source: serde_json::Error,
    },
}

impl FrameError {
    /// Whether the byte stream is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Message { .. })
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::HeaderTooLarge { len } => write!(
                f,
                "frame header of {len} bytes exceeds the limit of {MAX_HEADER} bytes"
            ),
            FrameError::PayloadTooLarge { len } => write!(
                f,
                "frame payload of {len} bytes exceeds the limit of {MAX_PAYLOAD} bytes"
            ),
            FrameError::Message {
                id: Some(id),
                source,
            } => {
                write!(f, "invalid message in frame {id}: {source}")
            }
            FrameError::Message { id: None, source } => {
                write!(f, "invalid frame header: {source}")
            }
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Message { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Encodes one frame, appending it to `out`.
pub fn encode_into<M: Serialize>(
    out: &mut Vec<u8>,
    id: u64,
    message: &M,
    payload: &[u8],
) -> Result<(), FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge { len: payload.len() });
    }
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX_LEN]);
    serde_json::to_writer(&mut *out, &HeaderOut { id, msg: message }).map_err(|source| {
        FrameError::Message {
            id: Some(id),
            source,
        }
    })?;
    let header_len = out.len() - start - PREFIX_LEN;
    if header_len > MAX_HEADER {
        out.truncate(start);
        return Err(FrameError::HeaderTooLarge { len: header_len });
    }
    // Both lengths were checked against limits far below u32::MAX.
    out[start..start + 4].copy_from_slice(&(header_len as u32).to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Encodes one frame into a new buffer.
pub fn encode<M: Serialize>(frame: &Frame<M>) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(PREFIX_LEN + 64 + frame.payload.len());
    encode_into(&mut out, frame.id, &frame.message, &frame.payload)?;
    Ok(out)
}

/// An incremental decoder: feed it bytes as they arrive, take frames out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            // Reclaim consumed space before growing, so a long-lived
            // connection's buffer stays about one frame large.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet taken out as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `None` until one has fully arrived.
    pub fn next_frame<M: DeserializeOwned>(&mut self) -> Result<Option<Frame<M>>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some(prefix) = pending.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let header_len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let payload_len = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
        if header_len > MAX_HEADER {
            return Err(FrameError::HeaderTooLarge { len: header_len });
        }
        if payload_len > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge { len: payload_len });
        }
        let total = PREFIX_LEN + header_len + payload_len;
        if pending.len() < total {
            return Ok(None);
        }
        let header = &pending[PREFIX_LEN..PREFIX_LEN + header_len];
        let payload = pending[PREFIX_LEN + header_len..total].to_vec();
        let decoded = serde_json::from_slice::<HeaderIn<M>>(header);
        self.start += total;
        match decoded {
            Ok(HeaderIn { id, msg }) => Ok(Some(Frame {
                id,
                message: msg,
                payload,
            })),
            Err(source) => Err(FrameError::Message {
                id: serde_json::from_slice::<HeaderId>(header)
                    .ok()
                    .map(|h| h.id),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AgentMessage, ClientMessage};
    use crate::{ExecRequest, ExitStatus, Stream};
    use proptest::prelude::*;

    fn roundtrip<M: Serialize + DeserializeOwned + PartialEq + fmt::Debug + Clone>(
        frames: &[Frame<M>],
        chunk: usize,
    ) {
        let mut wire = Vec::new();
        for frame in frames {
            encode_into(&mut wire, frame.id, &frame.message, &frame.payload).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            decoder.feed(piece);
            while let Some(frame) = decoder.next_frame::<M>().unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn frames_roundtrip_whole_and_byte_by_byte() {
        let client = vec![
            Frame::new(
                0,
                ClientMessage::Hello {
                    version: crate::PROTOCOL_VERSION,
                    client: "test".into(),
                },
            ),
            Frame::new(
                7,
                ClientMessage::Exec {
                    request: ExecRequest::shell("echo hi"),
                    stream_stdin: true,
                },
            ),
            Frame::with_payload(7, ClientMessage::Stdin, vec![0, 159, 146, 150, 255]),
            Frame::new(7, ClientMessage::CloseStdin),
        ];
        let agent = vec![
            Frame::with_payload(
                7,
                AgentMessage::Output {
                    stream: Stream::Stderr,
                },
                b"no newline".to_vec(),
            ),
            Frame::new(
                7,
                AgentMessage::Exit(ExitStatus {
                    code: Some(3),
                    stdout_dropped: 12,
                    ..Default::default()
                }),
            ),
        ];
        for chunk in [1, 3, 1 << 16] {
            roundtrip(&client, chunk);
            roundtrip(&agent, chunk);
        }
    }

    #[test]
    fn header_is_json_and_payload_is_raw() {
        let wire = encode(&Frame::with_payload(
            5,
            AgentMessage::Output {
                stream: Stream::Stdout,
            },
            vec![0xff, 0x00],
        ))
        .unwrap();
        let header_len = u32::from_be_bytes(wire[0..4].try_into().unwrap()) as usize;
        assert_eq!(&wire[4..8], &2u32.to_be_bytes());
        let header = std::str::from_utf8(&wire[8..8 + header_len]).unwrap();
        assert_eq!(
            header,
            r#"{"id":5,"msg":{"type":"output","stream":"stdout"}}"#
        );
        assert_eq!(&wire[8 + header_len..], &[0xff, 0x00]);
    }

    #[test]
    fn oversized_frames_are_refused_from_the_prefix() {
        let mut decoder = FrameDecoder::new();
        let mut prefix = ((MAX_HEADER + 1) as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(&0u32.to_be_bytes());
        decoder.feed(&prefix);
        let err = decoder.next_frame::<ClientMessage>().unwrap_err();
        assert!(err.is_fatal());
        assert!(err.to_string().contains("exceeds the limit"), "{err}");

        let mut decoder = FrameDecoder::new();
        let mut prefix = 2u32.to_be_bytes().to_vec();
        prefix.extend_from_slice(&u32::MAX.to_be_bytes());
        decoder.feed(&prefix);
        assert!(matches!(
            decoder.next_frame::<ClientMessage>(),
            Err(FrameError::PayloadTooLarge { .. })
        ));

        let big = vec![0; MAX_PAYLOAD + 1];
        assert!(matches!(
            encode(&Frame::with_payload(1, ClientMessage::Stdin, big)),
            Err(FrameError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn an_unknown_message_is_skipped_and_names_its_id() {
        let mut wire = Vec::new();
        let header = br#"{"id":9,"msg":{"type":"teleport"}}"#;
        wire.extend_from_slice(&(header.len() as u32).to_be_bytes());
        wire.extend_from_slice(&0u32.to_be_bytes());
        wire.extend_from_slice(header);
        encode_into(&mut wire, 10, &ClientMessage::Cancel, &[]).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.feed(&wire);
        match decoder.next_frame::<ClientMessage>() {
            Err(err @ FrameError::Message { id: Some(9), .. }) => assert!(!err.is_fatal()),
            other => panic!("expected a message error for frame 9, got {other:?}"),
        }
        let next = decoder.next_frame::<ClientMessage>().unwrap().unwrap();
        assert_eq!((next.id, next.message), (10, ClientMessage::Cancel));
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)
        ) {
            let mut decoder = FrameDecoder::new();
            'feed: for chunk in &chunks {
                decoder.feed(chunk);
                loop {
                    match decoder.next_frame::<ClientMessage>() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(err) if err.is_fatal() => break 'feed,
                        Err(_) => {}
                    }
                }
            }
        }

        #[test]
        fn decoder_survives_well_framed_garbage(
            frames in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..48), proptest::collection::vec(any::<u8>(), 0..16)),
                0..16,
            ),
            chunk in 1usize..32,
        ) {
            // Valid prefixes around random headers reach the JSON parser,
            // which random lengths alone almost never do.
            let mut wire = Vec::new();
            for (header, payload) in &frames {
                wire.extend_from_slice(&(header.len() as u32).to_be_bytes());
                wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                wire.extend_from_slice(header);
                wire.extend_from_slice(payload);
            }
            let mut decoder = FrameDecoder::new();
            let mut seen = 0;
            for piece in wire.chunks(chunk) {
                decoder.feed(piece);
                loop {
                    match decoder.next_frame::<ClientMessage>() {
                        Ok(Some(_)) | Err(FrameError::Message { .. }) => seen += 1,
                        Ok(None) => break,
                        Err(err) => panic!("well-framed input gave a fatal error: {err}"),
                    }
                }
            }
            prop_assert_eq!(seen, frames.len());
        }

        #[test]
        fn arbitrary_payloads_and_ids_roundtrip(
            id in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            chunk in 1usize..64,
        ) {
            let frames = vec![
                Frame::with_payload(id, ClientMessage::Stdin, payload.clone()),
                Frame::with_payload(id, ClientMessage::Signal { signal: 2 }, Vec::new()),
            ];
            roundtrip(&frames, chunk);
        }
    }
}
