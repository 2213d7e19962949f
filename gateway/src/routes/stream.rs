//! `POST /v1/invoke/{target}/stream`: a streaming invoke answered as Server-Sent
//! Events (DESIGN §4, §11).
//!
//! The request is as for [`POST /v1/invoke/{target}`](super::invoke): `target` is
//! `service` or `service.endpoint`, the body the payload, the headers mapped as in
//! [`HttpContext`](super::HttpContext). The gateway invokes the target with
//! [`Bus::invoke_stream`](weft_bus::Bus::invoke_stream) and waits for the first frame:
//!
//! - an error before the stream starts keeps the gateway's JSON error shape
//!   `{code, message, retryable?, cause?}` and status: 400 (bad target, body, header
//!   or query), 413, 503 `AGENT_UNAVAILABLE` (nothing serves the target), 504
//!   `AGENT_TIMEOUT` (no first frame within the idle timeout), 502 `CODEC_FAILURE` (a
//!   frame is not an envelope, or the frames broke the stream protocol), or the
//!   handler's own error when its stream is a single `agent.response.error` frame (it
//!   failed before it started);
//! - otherwise **200** `text/event-stream`, one event per frame, in `seq` order:
//!
//! ```text
//! event: agent.response.delta
//! id: 2
//! data: {"spec_version":"acp/1.0",…,"frame_type":"response.delta",…,"seq":2,"payload":"so"}
//! ```
//!
//!   The event name is the frame's `event_type`, the id its `seq`, the data the whole
//!   frame envelope as one line of JSON. The last event is `agent.response.final` or
//!   `agent.response.error`. When the bus stream fails midway (idle or overall
//!   timeout, a broken frame sequence), the gateway ends the body with an
//!   `agent.response.error` event of its own: the request's error reply, without
//!   `id`/`seq`, with metadata `weft.origin: "gateway"` and the code of the JSON error
//!   table (`AGENT_TIMEOUT`, `CODEC_FAILURE`, `TRANSPORT_FAILURE`). A comment line is
//!   sent every 15 s while no frame comes, so proxies keep the connection open.
//!
//! Query: `?timeout_ms=` (overall budget; default and cap
//! [`DEFAULT_STREAM_TIMEOUT`], 5 min) and `?idle_timeout_ms=` (longest wait for the
//! next frame; default and cap the gateway's `invoke_timeout`).
//!
//! A client that disconnects cancels the stream: the handler sees
//! [`StreamWriter::is_cancelled`](weft_bus::stream::StreamWriter::is_cancelled).

use std::convert::Infallible;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use weft_bus::stream::{DEFAULT_STREAM_TIMEOUT, Frame, StreamOptions};
use weft_bus::{Envelope, ErrorKind, ErrorPayload, Target};

use super::JsonPayload;
use super::invoke::{request_envelope, timeout_param};
use crate::AppState;
use crate::error::ApiError;

/// Metadata key marking an error event the gateway made itself (value `"gateway"`).
pub const ORIGIN_METADATA_KEY: &str = "weft.origin";

/// The query string of `POST /v1/invoke/{target}/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Overall budget in milliseconds (1 or more), capped at
    /// [`DEFAULT_STREAM_TIMEOUT`].
    pub timeout_ms: Option<u64>,
    /// Longest wait for the next frame in milliseconds (1 or more), capped at the
    /// gateway's `invoke_timeout`.
    pub idle_timeout_ms: Option<u64>,
}

/// Handler of `POST /v1/invoke/{target}/stream` (see the [module docs](self)).
///
/// # Errors
/// [`ApiError`] before the stream starts: 400, 413, 502, 503, 504 or the handler's
/// status, as listed in the module docs.
#[utoipa::path(
    post,
    path = "/v1/invoke/{target}/stream",
    tag = "invoke",
    summary = "Invoke with a streamed reply (Server-Sent Events)",
    description = "One SSE event per frame: the event name is the frame's event_type, the id its seq, the data the frame envelope. The last event is agent.response.final or agent.response.error.",
    params(("target" = String, Path, description = "service or service.endpoint"), StreamQuery),
    request_body(content = serde_json::Value, description = "the request payload"),
    responses(
        (status = 200, description = "the frames", content_type = "text/event-stream", body = String),
        (status = 400, description = "bad target, body, header or query", body = crate::error::ErrorBody),
        (status = 401, description = "missing or wrong token", body = crate::error::ErrorBody),
        (status = 503, description = "nothing serves the target", body = crate::error::ErrorBody),
        (status = 504, description = "no first frame in time", body = crate::error::ErrorBody),
    )
)]
pub async fn invoke_stream(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
    JsonPayload(payload): JsonPayload,
) -> Result<Response, ApiError> {
    let Path(raw) = path?;
    let Query(query) = query?;
    let target: Target = raw.parse()?;
    let options = StreamOptions::default()
        .timeout(timeout_param(
            "timeout_ms",
            query.timeout_ms,
            DEFAULT_STREAM_TIMEOUT,
        )?)
        .idle_timeout(timeout_param(
            "idle_timeout_ms",
            query.idle_timeout_ms,
            state.config().invoke_timeout,
        )?);
    let request = request_envelope(&target, payload, &headers)?;
    let mut frames = state
        .bus()
        .invoke_stream(&target, request.clone(), options)
        .await?;
    let first = match frames.next().await {
        Some(Ok(frame)) => frame,
        Some(Err(e)) => return Err(e.into()),
        None => {
            return Err(weft_bus::Error::new(
                ErrorKind::Stream,
                format!("the stream from {target} ended without a frame"),
            )
            .into());
        }
    };
    if let Some(error) = first.error() {
        // The handler failed before the stream started: an ordinary HTTP error.
        return Err(weft_bus::Error::from_remote(&target.to_string(), error).into());
    }
    let events = futures::stream::once(async move { Ok(first) })
        .chain(frames)
        .map(move |item| Ok::<_, Infallible>(event(&request, item)));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The SSE event of one stream item: a frame, or the gateway's own error frame when
/// the bus stream failed.
fn event(request: &Envelope, item: weft_bus::Result<Frame>) -> Event {
    let envelope = match item {
        Ok(frame) => frame.into_envelope(),
        Err(e) => {
            // The same code, message and `retryable` as the JSON error would have.
            let error = ErrorPayload::from(&e);
            let mut env = request.error_reply(&error);
            env.metadata
                .insert(ORIGIN_METADATA_KEY.to_owned(), json!("gateway"));
            env
        }
    };
    // Event names are validated tokens and ids digits, so neither holds a newline;
    // compact JSON has none either.
    let mut event = Event::default().event(&envelope.event_type);
    if envelope.seq > 0 {
        event = event.id(envelope.seq.to_string());
    }
    event.data(serde_json::to_string(&envelope).unwrap_or_default())
}
