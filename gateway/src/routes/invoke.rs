//! `POST /v1/invoke/{target}`: request-reply to a service or agent (DESIGN §4, §11).
//!
//! `target` is `service` (its default endpoint) or `service.endpoint`. The body is the
//! request payload (any JSON; empty means `null`). The gateway sends an invoke request
//! envelope (`from: http`, `channel: http`, header fields mapped as in
//! [`HttpContext`]) to `P.invoke.<target>` and answers **200** with
//! the reply's payload as the JSON body.
//!
//! `?timeout_ms=<n>` shortens the wait below the gateway's `invoke_timeout` (it never
//! lengthens it).
//!
//! Errors: 400 `INVALID_REQUEST` (bad JSON, bad target naming the bad token, bad
//! `timeout_ms`), 413 `PAYLOAD_TOO_LARGE`, 503 `AGENT_UNAVAILABLE` when nothing serves
//! the target, 504 `AGENT_TIMEOUT`, 502 `CODEC_FAILURE` when the reply is not an
//! envelope, and a handler's own error (`agent.response.error`) with the status of its
//! code ([`ErrorCode::status`](weft_bus::ErrorCode::status)) and body
//! `{code, message, retryable?, cause?}`.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use weft_bus::{Envelope, Target};

use super::{HTTP_CHANNEL, HttpContext, JsonPayload};
use crate::AppState;
use crate::error::ApiError;

/// The query string of `POST /v1/invoke/{target}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct InvokeQuery {
    /// Wait at most this many milliseconds (1 or more), capped at the gateway's
    /// `invoke_timeout`.
    pub timeout_ms: Option<u64>,
}

/// Handler of `POST /v1/invoke/{target}` (see the [module docs](self)).
///
/// # Errors
/// [`ApiError`]: 400, 413, 502, 503, 504 or the handler's status, as listed in the
/// module docs.
pub async fn invoke(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<InvokeQuery>, QueryRejection>,
    headers: HeaderMap,
    JsonPayload(payload): JsonPayload,
) -> Result<Json<Value>, ApiError> {
    let Path(raw) = path?;
    let Query(query) = query?;
    let target: Target = raw.parse()?;
    let max = state.config().invoke_timeout;
    let timeout = match query.timeout_ms {
        Some(0) => {
            return Err(ApiError::InvalidRequest(
                "timeout_ms must be at least 1".into(),
            ));
        }
        Some(ms) => Duration::from_millis(ms).min(max),
        None => max,
    };
    let mut env = Envelope::request(target.to_string(), payload);
    HttpContext::from_headers(&headers)?.apply(&mut env);
    env.from = Some(HTTP_CHANNEL.to_owned());
    // Refuse an envelope over the bus limit as 413 before anything is sent.
    env.to_bytes()?;
    let reply = state.bus().request(&target, env, timeout).await?;
    Ok(Json(reply.payload.unwrap_or(Value::Null)))
}
