//! Errors: [`ApiError`], the one HTTP error type every route answers with, and
//! [`Error`], what can go wrong starting or running the gateway.
//!
//! Every HTTP error has the same JSON body (DESIGN §11):
//!
//! ```json
//! {"code": "INVALID_REQUEST", "message": "request body is not valid JSON: …"}
//! ```
//!
//! `code` and `message` are always there; `retryable` appears when it is true and
//! `cause` when the remote handler gave one.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `INVALID_REQUEST` | bad JSON, bad event type or target, bad header or query |
//! | 401 | `AUTH_FAILURE` | missing or wrong bearer token |
//! | 403 | `AUTH_FAILURE` | the NATS server refused the gateway's publish: its NATS user's permissions deny the subject |
//! | 404 | `NOT_FOUND` | no such route |
//! | 405 | `METHOD_NOT_ALLOWED` | the route exists, the method does not |
//! | 409 | `CONFLICT` | the action does not fit the run's state (cancel an ended run, retry one that has not failed, approve a step that does not wait) |
//! | 413 | `PAYLOAD_TOO_LARGE` | body over `max_body_bytes`, or the envelope over 1 MiB |
//! | 404 | `NOT_FOUND` | the bus found no such thing, or no run has the id |
//! | 500 | `INTERNAL` | a bus error of no other kind (e.g. a resource configured in conflict) |
//! | 502 | `CODEC_FAILURE` | the service answered with something that is not an envelope, or its stream broke the frame protocol |
//! | 503 | `TRANSPORT_FAILURE` | the publish was not acked (stream missing, NATS down), the connection to NATS was lost while waiting for a reply (retryable), another NATS, JetStream or KV failure |
//! | 503 | `AGENT_UNAVAILABLE` | nothing serves the invoke target (no responders), or the call was rejected (circuit open, limit reached) |
//! | 503 | `NOT_READY` | `/readyz`: NATS or a resource is missing |
//! | 504 | `AGENT_TIMEOUT` | no invoke reply in time |
//! | per code | the handler's | the service answered `agent.response.error`: status from [`ErrorCode::status`] |
//!
//! The code, message and `retryable` of a bus error are not decided here: they are
//! the bus's [`ErrorPayload`] for it (`From<&weft_bus::Error> for ErrorPayload`, the
//! same payload an agent's tool call reports). The gateway only picks the status for
//! the code.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use weft_bus::envelope::EnvelopeError;
use weft_bus::subject::SubjectError;
use weft_bus::{ErrorCode, ErrorPayload};

/// An HTTP error: a status, a machine-readable `code` and a `message` a person can act
/// on, answered as the JSON body `{code, message}` (see the [module docs](self) for the
/// table). Handlers return `Result<_, ApiError>` and use `?`: bus errors, bad subject
/// names, envelope errors and axum's path and query rejections convert into it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `INVALID_REQUEST`: bad JSON, bad event type or target, bad header or query.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401 `AUTH_FAILURE`: missing or wrong bearer token. Sent with
    /// `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// 404 `NOT_FOUND`: no route for the path.
    #[error("{0}")]
    NotFound(String),
    /// 405 `METHOD_NOT_ALLOWED`: the path exists, not with this method (the `Allow`
    /// header lists the methods).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 413 `PAYLOAD_TOO_LARGE`: the body or the envelope is over its limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 409 `CONFLICT`: the action does not fit the resource's state (a cancel of a run
    /// that ended, an approval of a step that does not wait for one).
    #[error("{0}")]
    Conflict(String),
    /// 503 `NOT_READY`: readiness failed; the message says what is missing.
    #[error("{0}")]
    NotReady(String),
    /// An error from the bus. Its code, message and `retryable` are the bus's
    /// [`ErrorPayload`] for it (a remote handler's error keeps its own); the status
    /// follows the code. Boxed to keep `Result<_, ApiError>` small.
    #[error(transparent)]
    Bus(Box<weft_bus::Error>),
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `INVALID_REQUEST`, `AGENT_TIMEOUT`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Whether trying again may succeed; omitted when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    /// Underlying cause a remote handler gave; omitted when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl ApiError {
    /// The HTTP status this error is answered with. A bus error's status follows its
    /// code ([`ApiError::code`]): a remote handler's code maps by
    /// [`ErrorCode::status`] (a NATS micro `SERVICE_ERROR_<n>` keeps `n`), a code the
    /// gateway met itself by the table in the [module docs](self).
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Bus(e) => match e.remote() {
                Some(r) => remote_status(&r.code),
                None => local_status(&ErrorPayload::from(e.as_ref()).code),
            },
        }
    }

    /// The `code` of the body, e.g. `INVALID_REQUEST`. A bus error's code is the one
    /// the bus gives it (`From<&weft_bus::Error> for ErrorPayload`): a remote
    /// handler's own code, else one by [`ErrorKind`](weft_bus::ErrorKind).
    pub fn code(&self) -> String {
        let code = match self {
            ApiError::InvalidRequest(_) => ErrorCode::InvalidRequest.as_str(),
            ApiError::Unauthorized(_) => ErrorCode::AuthFailure.as_str(),
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::NotReady(_) => "NOT_READY",
            ApiError::Bus(e) => return ErrorPayload::from(e.as_ref()).code.as_str().to_owned(),
        };
        code.to_owned()
    }

    /// The body this error is answered with. A bus error's body is its
    /// [`ErrorPayload`] as the bus makes it (a remote handler's is passed on as it
    /// came).
    pub fn body(&self) -> ErrorBody {
        match self {
            ApiError::Bus(e) => {
                let payload = ErrorPayload::from(e.as_ref());
                ErrorBody {
                    code: payload.code.as_str().to_owned(),
                    message: payload.message,
                    retryable: payload.retryable,
                    cause: payload.cause,
                }
            }
            other => ErrorBody {
                code: other.code(),
                message: other.to_string(),
                retryable: matches!(other, ApiError::NotReady(_)),
                cause: None,
            },
        }
    }
}

/// The status of a bus error the gateway met itself (no handler answered it), by
/// its code: [`ErrorCode::status`], except that `CODEC_FAILURE` is 502 here: the
/// service's answer was not a valid envelope or stream, not the client's request.
fn local_status(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::CodecFailure => StatusCode::BAD_GATEWAY,
        other => StatusCode::from_u16(other.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// The status of a remote error code: [`ErrorCode::status`], except that a plain NATS
/// micro error (`SERVICE_ERROR_<n>`) keeps its own code `n` when it is an HTTP error
/// status.
fn remote_status(code: &ErrorCode) -> StatusCode {
    if let ErrorCode::Other(s) = code
        && let Some(n) = s.strip_prefix("SERVICE_ERROR_")
        && let Ok(n) = n.parse::<u16>()
        && (400..=599).contains(&n)
        && let Ok(status) = StatusCode::from_u16(n)
    {
        return status;
    }
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_GATEWAY)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code = %body.code, error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), code = %body.code, error = %self, "request refused");
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<weft_bus::Error> for ApiError {
    fn from(e: weft_bus::Error) -> Self {
        ApiError::Bus(Box::new(e))
    }
}

impl From<SubjectError> for ApiError {
    fn from(e: SubjectError) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl From<EnvelopeError> for ApiError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            other => ApiError::InvalidRequest(other.to_string()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::InvalidRequest(format!("bad path: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::InvalidRequest(format!("bad query string: {}", e.body_text()))
    }
}

/// What can go wrong starting or running a [`Gateway`](crate::Gateway).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A non-loopback address without an auth token and without the insecure flag
    /// (DESIGN §8).
    #[error(
        "refusing to listen on {addr} without an auth token: anyone who can reach it could publish events and invoke services; \
         set an auth token (clients then send `Authorization: Bearer <token>`), bind 127.0.0.1, \
         or allow insecure access explicitly (allow_insecure) if that is really intended"
    )]
    Insecure {
        /// The address that was refused.
        addr: SocketAddr,
    },
    /// A setting makes no sense (empty token, zero body limit or timeout).
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while serving.
    #[error("the gateway's HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_bus::ErrorKind;

    #[test]
    fn bus_errors_map_to_status_and_code() {
        let cases = [
            (ErrorKind::NoResponders, 503, "AGENT_UNAVAILABLE"),
            (ErrorKind::Timeout, 504, "AGENT_TIMEOUT"),
            (ErrorKind::Publish, 503, "TRANSPORT_FAILURE"),
            (ErrorKind::Disconnected, 503, "TRANSPORT_FAILURE"),
            (ErrorKind::Permission, 403, "AUTH_FAILURE"),
            (ErrorKind::InvalidSubject, 400, "INVALID_REQUEST"),
            (ErrorKind::Envelope, 502, "CODEC_FAILURE"),
            (ErrorKind::Stream, 502, "CODEC_FAILURE"),
            (ErrorKind::Rejected, 503, "AGENT_UNAVAILABLE"),
            (ErrorKind::InvalidConfig, 400, "INVALID_REQUEST"),
            (ErrorKind::NotFound, 404, "NOT_FOUND"),
            (ErrorKind::Other, 500, "INTERNAL"),
        ];
        for (kind, status, code) in cases {
            let bus_error = weft_bus::Error::new(kind, "x");
            let payload = ErrorPayload::from(&bus_error);
            let e = ApiError::from(bus_error);
            assert_eq!(e.status().as_u16(), status, "{kind:?}");
            assert_eq!(e.code(), code, "{kind:?}");
            // The gateway answers what the bus makes of the error.
            let body = e.body();
            assert_eq!(body.code, payload.code.as_str(), "{kind:?}");
            assert_eq!(body.message, payload.message, "{kind:?}");
            assert_eq!(body.retryable, payload.retryable, "{kind:?}");
        }
    }

    #[test]
    fn remote_errors_keep_their_code_message_and_cause() {
        let payload = ErrorPayload::invalid_request("no good")
            .with_cause("because")
            .retryable();
        let e = ApiError::from(weft_bus::Error::from_remote("t", payload));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = e.body();
        assert_eq!(body.code, "INVALID_REQUEST");
        assert_eq!(body.message, "no good");
        assert_eq!(body.cause.as_deref(), Some("because"));
        assert!(body.retryable);

        let app = ErrorPayload::new(ErrorCode::Other("QUOTA_EXCEEDED".into()), "spent");
        let e = ApiError::from(weft_bus::Error::from_remote("t", app));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code(), "QUOTA_EXCEEDED");

        let missing = ErrorPayload::new(ErrorCode::Other("NOT_FOUND".into()), "gone");
        let e = ApiError::from(weft_bus::Error::from_remote("t", missing));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.code(), "NOT_FOUND");

        let micro = ErrorPayload::new(ErrorCode::Other("SERVICE_ERROR_404".into()), "nope");
        let e = ApiError::from(weft_bus::Error::from_remote("t", micro));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn bodies_omit_empty_fields() {
        let text = serde_json::to_string(&ApiError::NotFound("no route".into()).body()).unwrap();
        assert_eq!(text, r#"{"code":"NOT_FOUND","message":"no route"}"#);
    }
}
