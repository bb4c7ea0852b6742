//! [`ReadStream`]: bytes read from a workspace (a file, a patch) as the
//! consumer takes them, so that nothing a workspace holds has to fit in
//! berth's memory. A stream that cannot go on ends with an error, never
//! early: a reader always knows whether it got everything.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

/// Bytes read from a workspace, in order, pulled as they are consumed.
pub struct ReadStream {
    inner: Pin<Box<dyn AsyncRead + Send>>,
}

impl ReadStream {
    pub fn new(reader: impl AsyncRead + Send + 'static) -> Self {
        ReadStream {
            inner: Box::pin(reader),
        }
    }

    /// Everything, for a caller that needs the bytes at once. More than
    /// `limit` bytes is an error of kind [`io::ErrorKind::FileTooLarge`]
    /// (the caller names what was read), and no more than `limit + 1`
    /// bytes are ever held.
    pub async fn read_all(self, limit: u64) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .await?;
        if data.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("more than {limit} bytes"),
            ));
        }
        Ok(data)
    }
}

impl ReadStream {
    /// A stream of what a task sends through the [`ReadSender`], holding
    /// at most a couple of chunks. A sender dropped before
    /// [`ReadSender::finish`] makes the stream end with an error.
    pub fn channel() -> (ReadSender, ReadStream) {
        let (tx, rx) = mpsc::channel(2);
        let piped = Piped {
            rx,
            chunk: Vec::new(),
            at: 0,
            ended: false,
        };
        (ReadSender { tx }, ReadStream::new(piped))
    }
}

/// The sending side of [`ReadStream::channel`].
#[derive(Debug)]
pub struct ReadSender {
    tx: mpsc::Sender<Piece>,
}

#[derive(Debug)]
enum Piece {
    Data(Vec<u8>),
    Failed(io::Error),
    End,
}

impl ReadSender {
    /// Sends the next bytes, waiting while the reader is behind; false
    /// when the reader is gone.
    pub async fn send(&self, data: Vec<u8>) -> bool {
        self.tx.send(Piece::Data(data)).await.is_ok()
    }

    /// Ends the stream with an error.
    pub async fn fail(self, err: io::Error) {
        let _ = self.tx.send(Piece::Failed(err)).await;
    }

    /// Ends the stream: everything was sent.
    pub async fn finish(self) {
        let _ = self.tx.send(Piece::End).await;
    }
}

struct Piped {
    rx: mpsc::Receiver<Piece>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
}

impl AsyncRead for Piped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.chunk.len() {
                let n = buf.remaining().min(this.chunk.len() - this.at);
                buf.put_slice(&this.chunk[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.rx.poll_recv(cx)) {
                Some(Piece::Data(data)) => {
                    this.chunk = data;
                    this.at = 0;
                }
                Some(Piece::End) => this.ended = true,
                Some(Piece::Failed(err)) => return Poll::Ready(Err(err)),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream was cut off before its end",
                    )));
                }
            }
        }
    }
}

impl From<Vec<u8>> for ReadStream {
    fn from(data: Vec<u8>) -> Self {
        ReadStream::new(io::Cursor::new(data))
    }
}

impl AsyncRead for ReadStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl std::fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadStream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_everything_refuses_more_than_the_limit_and_says_so() {
        let stream = ReadStream::from(vec![7u8; 10]);
        assert_eq!(stream.read_all(10).await.unwrap(), vec![7u8; 10]);
        let err = ReadStream::from(vec![7u8; 11])
            .read_all(10)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("more than 10 bytes"), "{err}");
    }

    #[tokio::test]
    async fn a_channel_that_stops_before_its_end_is_an_error_not_a_short_stream() {
        let (tx, stream) = ReadStream::channel();
        tokio::spawn(async move {
            assert!(tx.send(b"part".to_vec()).await);
            tx.finish().await;
        });
        assert_eq!(stream.read_all(100).await.unwrap(), b"part");

        let (tx, stream) = ReadStream::channel();
        tokio::spawn(async move {
            assert!(tx.send(b"part".to_vec()).await);
            drop(tx);
        });
        let err = stream.read_all(100).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (tx, stream) = ReadStream::channel();
        tokio::spawn(tx.fail(io::Error::other("git failed")));
        let err = stream.read_all(100).await.unwrap_err();
        assert_eq!(err.to_string(), "git failed");
    }
}
