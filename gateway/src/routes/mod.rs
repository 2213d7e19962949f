//! The routes (DESIGN §11) and what they share: the [`router`], the JSON body extractor
//! [`JsonPayload`] and the mapping of HTTP headers onto envelope fields
//! ([`HttpContext`]).

pub mod agents;
pub mod events;
pub mod flows;
pub mod invoke;
pub mod ops;
pub mod stream;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use serde_json::Value;
use weft_bus::Envelope;

use crate::AppState;
use crate::error::ApiError;
use crate::{auth, metrics};

/// The envelope `channel` (and the invoke `from`) of everything that enters over HTTP.
pub const HTTP_CHANNEL: &str = "http";

/// Builds the gateway's router over `state`:
///
/// | method and path | handler |
/// |---|---|
/// | `POST /v1/events/{event_type}` | [`events::publish`] |
/// | `POST /v1/invoke/{target}` | [`invoke::invoke`] |
/// | `POST /v1/invoke/{target}/stream` | [`stream::invoke_stream`] (Server-Sent Events) |
/// | `GET /v1/flows`, `GET`/`POST /v1/flows/{flow}/runs`, `GET /v1/runs/{id}`, `POST /v1/runs/{id}/{cancel,retry,approve}` | flows and runs ([`flows`]) |
/// | `GET /v1/openapi.json` | the OpenAPI 3.1 document of these `/v1` routes, generated from the handlers ([`openapi`]) |
/// | `/mcp` (`POST`, `GET`, `DELETE`) | the MCP server, Streamable HTTP ([`crate::mcp::server::http_service`]), when the state has one |
/// | `GET /metrics` | [`ops::metrics`] |
/// | `GET /healthz` | [`ops::healthz`] (never needs the token) |
/// | `GET /readyz` | [`ops::readyz`] |
/// | `GET /a2a`, `GET /a2a/{agent}/.well-known/agent-card.json`, `GET /.well-known/agent-card.json` | the A2A directory and cards ([`crate::a2a::server`]; no token needed) |
/// | `POST /a2a/{agent}`, `/a2a/{agent}/{*rest}` | A2A JSON-RPC and HTTP+JSON ([`crate::a2a::server::jsonrpc`], [`crate::a2a::server::rest`]) |
/// | anything else | 404 / 405 with the JSON error body |
///
/// Layers: the bearer-token check ([`auth::require_token`]) on every route but
/// `/healthz`, the body limit (`max_body_bytes`), and the request metrics
/// ([`metrics::track`]) outermost, so refused requests are counted too.
pub fn router(state: AppState) -> Router {
    let max_body = state.config().max_body_bytes;
    let mut routes = Router::new();
    if let Some(mcp) = state.mcp() {
        let loopback = state.config().addr.ip().is_loopback();
        let service = crate::mcp::server::http_service(
            mcp.clone(),
            loopback,
            max_body,
            state.shutdown_token().clone(),
        );
        routes = routes.merge(Router::new().route_service("/mcp", service).layer(
            from_fn_with_state(max_body, crate::mcp::server::json_rpc_body),
        ));
    }
    routes
        .route("/a2a/{agent}", post(crate::a2a::server::jsonrpc))
        .route(
            "/a2a/{agent}/{*rest}",
            axum::routing::any(crate::a2a::server::rest),
        )
        .merge(v1())
        .route("/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(ops::metrics))
        .route("/readyz", get(ops::readyz))
        .method_not_allowed_fallback(ops::method_not_allowed)
        .fallback(ops::not_found)
        .layer(from_fn_with_state(state.clone(), auth::require_token))
        // Added after the auth layer, so liveness probes need no token, and Agent
        // Cards are public (A2A 1.0 §8.2).
        .route("/healthz", get(ops::healthz))
        .route("/a2a", get(crate::a2a::server::directory))
        .route(
            "/a2a/{agent}/.well-known/agent-card.json",
            get(crate::a2a::server::agent_card),
        )
        .route(
            "/.well-known/agent-card.json",
            get(crate::a2a::server::default_card),
        )
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn(metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::trace::http_span,
        ))
        .with_state(state)
}

/// The OpenAPI 3.1 description of the `/v1` API (`GET /v1/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Weft gateway",
        description = "The HTTP API of the Weft gateway (DESIGN §11). Every error has the body {code, message}. With a gateway token, every route needs `Authorization: Bearer <token>`.",
    ),
    tags(
        (name = "events", description = "durable events"),
        (name = "invoke", description = "request-reply to services and agents"),
        (name = "flows", description = "flows and their durable runs"),
        (name = "agents", description = "agents' durable runs"),
    )
)]
pub struct ApiDoc;

/// The `/v1` routes, registered with their documentation ([`ApiDoc`]).
fn v1_parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(utoipa_axum::routes!(events::publish))
        .routes(utoipa_axum::routes!(invoke::invoke))
        .routes(utoipa_axum::routes!(stream::invoke_stream))
        .routes(utoipa_axum::routes!(flows::list_flows))
        .routes(utoipa_axum::routes!(flows::list_runs, flows::start_run))
        .routes(utoipa_axum::routes!(flows::get_run))
        .routes(utoipa_axum::routes!(flows::cancel_run))
        .routes(utoipa_axum::routes!(flows::retry_run))
        .routes(utoipa_axum::routes!(flows::approve_run))
        .routes(utoipa_axum::routes!(agents::list_runs))
        .split_for_parts()
}

fn v1() -> Router<AppState> {
    v1_parts().0
}

/// The OpenAPI document of the `/v1` routes, generated from their handlers.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = v1_parts().1;
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc
    })
}

/// `GET /v1/openapi.json`: [`openapi`] as JSON.
async fn openapi_json() -> axum::Json<&'static utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

/// The request body as JSON: the extractor of every route that takes a payload.
///
/// An empty (or all-whitespace) body is JSON `null`, so `curl -X POST` without `-d`
/// works for payload-less invokes. The `Content-Type` is not checked.
///
/// Rejections are [`ApiError`]s: 413 `PAYLOAD_TOO_LARGE` over the gateway's
/// `max_body_bytes`, 400 `INVALID_REQUEST` for bytes that are not JSON (saying at
/// which line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPayload(pub Value);

impl FromRequest<AppState> for JsonPayload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "request body is larger than the gateway's limit of {} bytes",
                    state.config().max_body_bytes
                ))
            } else {
                ApiError::InvalidRequest(format!("cannot read the request body: {}", r.body_text()))
            }
        })?;
        parse_json(&bytes).map(JsonPayload)
    }
}

/// Parses a request body as JSON; empty means `null`.
fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    // serde_json's message ends with "at line L column C".
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("request body is not valid JSON: {e}")))
}

/// The envelope fields an HTTP request carries in its headers (DESIGN §11):
///
/// | header | envelope field |
/// |---|---|
/// | `traceparent` | `traceparent` (and `trace_id`, from it) |
/// | `X-Session-Id` | `session_id` |
/// | `X-Tenant-Id` | `tenant_id` |
/// | `X-User-Id` | `user_id` |
///
/// Empty headers count as absent. A `traceparent` that is not W3C trace context is
/// ignored, as the W3C recommendation says (a new trace starts downstream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpContext {
    /// From `traceparent`, when valid.
    pub traceparent: Option<String>,
    /// The trace id inside `traceparent` (32 hex digits).
    pub trace_id: Option<String>,
    /// From `X-Session-Id`.
    pub session_id: Option<String>,
    /// From `X-Tenant-Id`.
    pub tenant_id: Option<String>,
    /// From `X-User-Id`.
    pub user_id: Option<String>,
}

impl HttpContext {
    /// Reads the headers.
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] naming a header whose value is not visible ASCII.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| -> Result<Option<String>, ApiError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => {
                    let s = v.to_str().map_err(|_| {
                        ApiError::InvalidRequest(format!(
                            "header {name} has characters outside visible ASCII"
                        ))
                    })?;
                    let s = s.trim();
                    Ok((!s.is_empty()).then(|| s.to_owned()))
                }
            }
        };
        let (traceparent, trace_id) = match text("traceparent")? {
            Some(tp) => match trace_id_of(&tp) {
                Some(id) => (Some(tp), Some(id)),
                None => {
                    tracing::debug!(traceparent = %tp, "ignoring an invalid traceparent header");
                    (None, None)
                }
            },
            None => (None, None),
        };
        Ok(HttpContext {
            traceparent,
            trace_id,
            session_id: text("X-Session-Id")?,
            tenant_id: text("X-Tenant-Id")?,
            user_id: text("X-User-Id")?,
        })
    }

    /// Writes the fields into `env` and sets its `channel` to [`HTTP_CHANNEL`].
    pub fn apply(self, env: &mut Envelope) {
        env.traceparent = self.traceparent;
        env.trace_id = self.trace_id;
        env.session_id = self.session_id;
        env.tenant_id = self.tenant_id;
        env.user_id = self.user_id;
        env.channel = Some(HTTP_CHANNEL.to_owned());
    }
}

/// The trace id of a W3C `traceparent` (`version-traceid-parentid-flags`), if valid.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let [version, trace_id, parent_id, flags, rest @ ..] = parts.as_slice() else {
        return None;
    };
    let valid = hex(version, 2)
        && *version != "ff"
        && (rest.is_empty() || *version != "00")
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| (*trace_id).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_bodies_are_null_and_bad_json_says_where() {
        assert_eq!(parse_json(b"").unwrap(), Value::Null);
        assert_eq!(parse_json(b" \n").unwrap(), Value::Null);
        assert_eq!(parse_json(br#"{"a":1}"#).unwrap()["a"], 1);
        let err = parse_json(b"{\n  \"a\": nope}").unwrap_err().to_string();
        assert!(err.contains("line 2 column"), "{err}");
    }

    #[test]
    fn traceparents_are_checked() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(trace_id_of(bad).is_none(), "{bad:?} accepted");
        }
        // Future versions may carry more fields.
        assert!(trace_id_of("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }

    #[test]
    fn headers_map_to_envelope_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        h.insert("x-session-id", "s-1".parse().unwrap());
        h.insert("x-tenant-id", "".parse().unwrap());
        h.insert("x-user-id", "u-1".parse().unwrap());
        let mut env = Envelope::new("a");
        HttpContext::from_headers(&h).unwrap().apply(&mut env);
        assert_eq!(env.session_id.as_deref(), Some("s-1"));
        assert_eq!(env.tenant_id, None);
        assert_eq!(env.user_id.as_deref(), Some("u-1"));
        assert_eq!(env.channel.as_deref(), Some("http"));
        assert_eq!(
            env.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );

        let mut h = HeaderMap::new();
        h.insert(
            "x-user-id",
            axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        let err = HttpContext::from_headers(&h).unwrap_err().to_string();
        assert!(err.contains("X-User-Id"), "{err}");
    }
}
