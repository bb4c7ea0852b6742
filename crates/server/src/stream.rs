//! Streamed responses: choosing between one JSON answer, newline-delimited
//! JSON and server-sent events, and running a provider operation whose
//! progress is streamed while the operation itself outlives the client.

use crate::error::{ApiError, ErrorBody};
use crate::workspaces::ProgressSender;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::{ExecStream, Output, ProvisionEvent, WorkspaceId};
use berth_provider::ServiceError;
use futures::{Stream, StreamExt as _, stream};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

pub const NDJSON: &str = "application/x-ndjson";
pub const EVENT_STREAM: &str = "text/event-stream";

/// Provisioning events buffered for a slow client before provisioning waits.
const PROGRESS_BUFFER: usize = 256;

/// Bytes read from a workspace per body chunk.
const READ_CHUNK: usize = 256 * 1024;

/// A body that sends what is read from a workspace (a file, a patch) as
/// it comes, reading no further than the client takes. A read that fails
/// midway cuts the body short, which the client sees as an incomplete
/// response, never as a shorter file.
pub fn read_body(stream: berth_core::ReadStream) -> Body {
    Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        stream, READ_CHUNK,
    ))
}

/// How a response is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document when the operation is done.
    Json,
    /// One JSON document per line, as events happen.
    NdJson,
    /// Server-sent events, as events happen.
    Sse,
}

/// The format asked for by the `Accept` header (media types in the order
/// given; quality values are not weighed), or by `?stream=true` (NDJSON).
pub fn negotiate(headers: &HeaderMap, stream_query: bool) -> Format {
    let accepted = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|item| item.split(';').next().unwrap_or_default().trim());
    for media in accepted {
        if media.eq_ignore_ascii_case(NDJSON) {
            return Format::NdJson;
        }
        if media.eq_ignore_ascii_case(EVENT_STREAM) {
            return Format::Sse;
        }
    }
    if stream_query {
        Format::NdJson
    } else {
        Format::Json
    }
}

/// The answer to a command run in a workspace (by exec or in a session):
/// its events as they come in a streamed `format`, or, for
/// [`Format::Json`], one [`crate::v1::ExecResponse`] once it is done.
/// `guard` lives as long as the answer is being made: dropping it (the
/// client went away) may cancel the command.
pub async fn command<G: Send + 'static>(
    format: Format,
    workspace: WorkspaceId,
    mut events: ExecStream,
    guard: G,
) -> Result<Response, ApiError> {
    if format != Format::Json {
        let events = stream::unfold((events, guard), |(mut events, guard)| async move {
            let event = events.recv().await?;
            Some((event, (events, guard)))
        });
        return Ok(streamed(format, events));
    }
    let done = berth_core::output::collect(&mut events)
        .await
        .map_err(|e| ServiceError::runtime(&workspace, e.into()))?;
    drop(guard);
    Ok(axum::Json(crate::v1::ExecResponse {
        stdout: Output(done.stdout),
        stderr: Output(done.stderr),
        exit: done.exit,
    })
    .into_response())
}

/// A streamed response of serialisable items. In SSE each item's `type`
/// field names its event.
pub fn streamed<S, T>(format: Format, items: S) -> Response
where
    S: Stream<Item = T> + Send + 'static,
    T: Serialize + Send + 'static,
{
    match format {
        Format::Sse => {
            let events = items.map(|item| {
                let value = serde_json::to_value(&item).unwrap_or_else(encode_failure);
                let mut event = Event::default();
                if let Some(kind) = value.get("type").and_then(|kind| kind.as_str()) {
                    event = event.event(kind);
                }
                Ok::<_, Infallible>(event.data(value.to_string()))
            });
            Sse::new(events)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        Format::NdJson | Format::Json => {
            let lines = items.map(|item| {
                let mut line = serde_json::to_vec(&item)
                    .unwrap_or_else(|e| encode_failure(e).to_string().into_bytes());
                line.push(b'\n');
                Ok::<_, Infallible>(line)
            });
            let mut response = Body::from_stream(lines).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    }
}

fn encode_failure(err: serde_json::Error) -> serde_json::Value {
    serde_json::json!(ErrorLine::new(ApiError::new(
        "internal",
        format!("cannot encode an event: {err}")
    )))
}

/// The last item of a progress stream whose operation failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorLine {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub error: ErrorBody,
}

impl ErrorLine {
    pub fn new(err: ApiError) -> Self {
        ErrorLine {
            kind: "error".into(),
            error: err.body().error,
        }
    }
}

/// One line of a progress stream: a provisioning event, or the error that
/// ended the operation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ProgressLine {
    Event(ProvisionEvent),
    Error(ErrorLine),
}

/// Runs a provider operation in its own task, so that it completes even if
/// the client goes away, and answers as `format` asks: its result as JSON
/// (through `respond`), or its progress as a stream.
///
/// A stream starts only once the operation has made progress; an operation
/// refused before that (a bad spec, an unknown id) gets an ordinary error
/// response with its status. An operation that fails later ends its stream
/// with an `error` line.
pub async fn with_progress<T, Fut>(
    format: Format,
    operation: impl FnOnce(ProgressSender) -> Fut,
    respond: impl FnOnce(T) -> Response,
) -> Response
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    if format == Format::Json {
        return match tokio::spawn(operation(None)).await {
            Ok(Ok(value)) => respond(value),
            Ok(Err(err)) => err.into_response(),
            Err(err) => task_failed(err).into_response(),
        };
    }
    let (sender, mut receiver) = mpsc::channel(PROGRESS_BUFFER);
    let task = tokio::spawn(operation(Some(sender)));
    let Some(first) = receiver.recv().await else {
        // The operation ended without a word: answer with its outcome.
        return match task.await {
            Ok(Ok(_)) => streamed(format, stream::empty::<ProgressLine>()),
            Ok(Err(err)) => err.into_response(),
            Err(err) => task_failed(err).into_response(),
        };
    };
    let events = stream::once(async move { first })
        .chain(ReceiverStream::new(receiver))
        .map(ProgressLine::Event);
    let outcome = stream::once(async move {
        match task.await {
            Ok(Ok(_)) => None,
            Ok(Err(err)) => Some(ProgressLine::Error(ErrorLine::new(err))),
            Err(err) => Some(ProgressLine::Error(ErrorLine::new(task_failed(err)))),
        }
    })
    .filter_map(|line| async move { line });
    streamed(format, events.chain(outcome))
}

fn task_failed(err: tokio::task::JoinError) -> ApiError {
    ApiError::new("internal", format!("the operation's task failed: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        assert_eq!(negotiate(&HeaderMap::new(), false), Format::Json);
        assert_eq!(negotiate(&HeaderMap::new(), true), Format::NdJson);
        assert_eq!(negotiate(&accept("application/json"), false), Format::Json);
        assert_eq!(
            negotiate(&accept("application/x-ndjson; charset=utf-8"), false),
            Format::NdJson
        );
        assert_eq!(
            negotiate(&accept("text/html, text/event-stream;q=0.9"), false),
            Format::Sse
        );
        assert_eq!(negotiate(&accept("text/event-stream"), true), Format::Sse);
    }
}
