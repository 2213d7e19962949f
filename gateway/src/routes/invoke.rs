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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
#[utoipa::path(
    post,
    path = "/v1/invoke/{target}",
    tag = "invoke",
    summary = "Invoke a service endpoint or an agent (request-reply)",
    description = "The body is the request payload; the answer is the reply's payload.",
    params(("target" = String, Path, description = "service or service.endpoint, e.g. tickets.classify"), InvokeQuery),
    request_body(content = serde_json::Value, description = "the request payload"),
    responses(
        (status = 200, description = "the reply's payload", body = serde_json::Value),
        (status = 400, description = "bad target, body, header or query", body = crate::error::ErrorBody),
        (status = 401, description = "missing or wrong token", body = crate::error::ErrorBody),
        (status = 413, description = "body over the limit", body = crate::error::ErrorBody),
        (status = 502, description = "a reply that is not an envelope", body = crate::error::ErrorBody),
        (status = 503, description = "nothing serves the target", body = crate::error::ErrorBody),
        (status = 504, description = "no reply in time", body = crate::error::ErrorBody),
    )
)]
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
    let timeout = timeout_param(
        "timeout_ms",
        query.timeout_ms,
        state.config().invoke_timeout,
    )?;
    let env = request_envelope(&target, payload, &headers)?;
    let reply = state.bus().request(&target, env, timeout).await?;
    Ok(Json(reply.payload.unwrap_or(Value::Null)))
}

/// The invoke request envelope of an HTTP call to `target` (DESIGN §4, §11):
/// `from: http`, the header fields of [`HttpContext`].
///
/// # Errors
/// 400 for a bad header, 413 when the envelope is over the bus's 1 MiB limit (checked
/// here, before anything is sent).
pub(crate) fn request_envelope(
    target: &Target,
    payload: Value,
    headers: &HeaderMap,
) -> Result<Envelope, ApiError> {
    let mut env = Envelope::request(target.to_string(), payload);
    HttpContext::from_headers(headers)?.apply(&mut env);
    env.from = Some(HTTP_CHANNEL.to_owned());
    env.to_bytes()?;
    Ok(env)
}

/// A timeout query parameter `name` in milliseconds: at least 1, capped at `max`, and
/// `max` when absent.
///
/// # Errors
/// 400 `INVALID_REQUEST` for 0.
pub(crate) fn timeout_param(
    name: &str,
    value: Option<u64>,
    max: Duration,
) -> Result<Duration, ApiError> {
    match value {
        Some(0) => Err(ApiError::InvalidRequest(format!(
            "{name} must be at least 1"
        ))),
        Some(ms) => Ok(Duration::from_millis(ms).min(max)),
        None => Ok(max),
    }
}
