//! `POST /v1/events/{event_type}`: publish an event (DESIGN §6, §11).
//!
//! The body is the payload (any JSON; empty means `null`). The gateway builds an event
//! envelope (`channel: http`, header fields mapped as in
//! [`HttpContext`]), publishes it durably to
//! `P.events.<event_type>` and answers **202** only after the JetStream ack:
//!
//! ```json
//! {"event_id": "0190…", "stream": "WEFT_EVENTS", "sequence": 42, "duplicate": false}
//! ```
//!
//! Errors: 400 `INVALID_REQUEST` (bad JSON, bad event type naming the bad token, bad
//! header), 413 `PAYLOAD_TOO_LARGE`, 503 `TRANSPORT_FAILURE` when no ack comes (the
//! events stream is missing or NATS is down; retryable).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use weft_bus::{Envelope, EventType};

use super::{HttpContext, JsonPayload};
use crate::AppState;
use crate::error::ApiError;

/// The 202 body of `POST /v1/events/{event_type}`: what JetStream acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The event's id (UUIDv7), also its `Nats-Msg-Id`.
    pub event_id: String,
    /// The stream that stored it, e.g. `WEFT_EVENTS`.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// True when an event with this id was already stored inside the duplicate window.
    pub duplicate: bool,
}

/// Handler of `POST /v1/events/{event_type}` (see the [module docs](self)).
///
/// # Errors
/// [`ApiError`]: 400, 413 or 503 as listed in the module docs.
#[utoipa::path(
    post,
    path = "/v1/events/{event_type}",
    tag = "events",
    summary = "Publish an event durably",
    description = "The body is the event's payload (any JSON; empty means null). Answers once JetStream stored it. Headers traceparent, X-Session-Id, X-Tenant-Id and X-User-Id map onto the envelope.",
    params(("event_type" = String, Path, description = "dot-separated tokens, e.g. ticket.created")),
    request_body(content = serde_json::Value, description = "the payload"),
    responses(
        (status = 202, description = "stored", body = Accepted),
        (status = 400, description = "bad event type, body or header", body = crate::error::ErrorBody),
        (status = 401, description = "missing or wrong token", body = crate::error::ErrorBody),
        (status = 413, description = "body over the limit", body = crate::error::ErrorBody),
        (status = 503, description = "JetStream unavailable", body = crate::error::ErrorBody),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonPayload(payload): JsonPayload,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let Path(raw) = path?;
    let event_type: EventType = raw.parse()?;
    let mut env = Envelope::event(&event_type, payload);
    HttpContext::from_headers(&headers)?.apply(&mut env);
    // Refuse an envelope over the bus limit as 413 before anything is sent.
    env.to_bytes()?;
    let published = state.bus().publish_envelope(&env).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            event_id: published.event_id,
            stream: published.stream,
            sequence: published.sequence,
            duplicate: published.duplicate,
        }),
    ))
}
