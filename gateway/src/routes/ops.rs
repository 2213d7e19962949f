//! Operations routes (DESIGN §7, §11): `GET /metrics`, `GET /healthz`, `GET /readyz`,
//! and the JSON answers for unknown routes (404) and wrong methods (405).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// Content type of `GET /metrics`: the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long each readiness check may take.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics`: every metric of the process (bus, gateway and whatever else
/// registered into [`weft_bus::metrics::registry`]) in the Prometheus text format.
pub async fn metrics() -> Response {
    // Register the gateway's metrics even before the first request finishes.
    crate::metrics::http();
    let mut response = weft_bus::metrics::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    response
}

/// `GET /healthz`: liveness. Always 200 `{"status":"ok"}` while the process serves
/// HTTP; never needs the auth token.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: readiness. 200 `{"status":"ready"}` when NATS is connected and the
/// events stream and the registry bucket exist.
///
/// # Errors
/// 503 `NOT_READY` whose message lists everything missing (e.g. `stream WEFT_EVENTS
/// is missing`), with a hint to run `weft up`.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let bus = state.bus();
    if bus.client().connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::NotReady(format!(
            "not ready: not connected to NATS at {}",
            bus.server_url()
        )));
    }
    let names = bus.names();
    let js = bus.jetstream();
    let mut missing = Vec::new();
    match tokio::time::timeout(READY_CHECK_TIMEOUT, js.get_stream(&names.events_stream)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => missing.push(format!("stream {} is missing ({e})", names.events_stream)),
        Err(_) => missing.push(format!(
            "stream {} did not answer within {} s",
            names.events_stream,
            READY_CHECK_TIMEOUT.as_secs()
        )),
    }
    match tokio::time::timeout(
        READY_CHECK_TIMEOUT,
        js.get_key_value(&names.registry_bucket),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => missing.push(format!(
            "KV bucket {} is missing ({e})",
            names.registry_bucket
        )),
        Err(_) => missing.push(format!(
            "KV bucket {} did not answer within {} s",
            names.registry_bucket,
            READY_CHECK_TIMEOUT.as_secs()
        )),
    }
    if !missing.is_empty() {
        return Err(ApiError::NotReady(format!(
            "not ready: {} on {} (run `weft up` to create the mesh's resources)",
            missing.join("; "),
            bus.server_url()
        )));
    }
    Ok(Json(json!({ "status": "ready" })))
}

/// Fallback for paths no route matches: 404 `NOT_FOUND`.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {method} {}; the gateway serves POST /v1/events/{{event_type}}, \
         POST /v1/invoke/{{target}}, /v1/flows and /v1/runs (GET /v1/openapi.json lists \
         them), GET /metrics, GET /healthz and GET /readyz",
        uri.path()
    ))
}

/// Fallback for a known path with a method it does not take: 405
/// `METHOD_NOT_ALLOWED` (the `Allow` header lists the methods it takes).
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}
