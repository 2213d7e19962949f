//! Tracing middleware: one HTTP server span per request, following the OpenTelemetry
//! HTTP semantic conventions (stable), a child of the caller's W3C `traceparent` when
//! it sends one, so the bus hops under it (publish, invoke) join the caller's trace
//! (DESIGN §7).
//!
//! The span is named `{method} {route}` (the route template, never the raw path:
//! `POST /v1/events/{event_type}`), kind SERVER, with `http.request.method`,
//! `http.route`, `url.path`, `url.scheme`, `server.address` and `server.port` (from the
//! `Host` header, else the gateway's own address), `client.address` and
//! `client.port` (the peer), `network.protocol.version`, `user_agent.original` when
//! sent, and `http.response.status_code` (an integer). A 5xx answer marks the span
//! failed (status ERROR, `error.type` = the status code). Health and metrics routes
//! (`/healthz`, `/readyz`, `/metrics`) get no span: probes would flood a tracing
//! backend with traces of their own.

use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Version, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use opentelemetry::propagation::Extractor;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::AppState;

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The address of the peer of a connection, as the span's `client.address` and
/// `client.port`: axum's connect info, for plain and TLS listeners alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Routes that get no span.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Middleware (for [`axum::middleware::from_fn_with_state`]) running each request but
/// health and metrics probes inside an HTTP server span (see the module docs).
pub async fn http_span(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| crate::metrics::UNMATCHED_ROUTE.to_owned());
    if UNTRACED.contains(&route.as_str()) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let (server_address, server_port) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(split_host)
        .unwrap_or_else(|| {
            let addr = state.config().addr;
            (addr.ip().to_string(), i64::from(addr.port()))
        });
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.0);
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        url.path = %request.uri().path(),
        url.scheme = if state.config().tls.is_some() { "https" } else { "http" },
        server.address = %server_address,
        server.port = server_port,
        client.address = peer.map(|p| tracing::field::display(p.ip())),
        client.port = peer.map(|p| i64::from(p.port())),
        network.protocol.version = protocol_version(request.version()),
        user_agent.original = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
    // Handlers that run on other tasks (the MCP server's) take their parent from here.
    let mut request = request;
    request.extensions_mut().insert(span.context());
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_attribute("error.type", status.as_str().to_owned());
        span.set_status(opentelemetry::trace::Status::error(
            status.canonical_reason().unwrap_or("server error"),
        ));
    }
    response
}

/// `host[:port]` of a `Host` header, the port an integer (80 when absent).
fn split_host(host: &str) -> Option<(String, i64)> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => {
            (name, port.parse().ok()?)
        }
        _ => (host, 80),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    (!name.is_empty()).then(|| (name.to_owned(), port))
}

/// `network.protocol.version`: `1.1`, `2`…
fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn host_headers_split_into_address_and_port() {
        assert_eq!(
            split_host("127.0.0.1:8080"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(split_host("example.com"), Some(("example.com".into(), 80)));
        assert_eq!(split_host("[::1]:9000"), Some(("::1".into(), 9000)));
        assert_eq!(split_host("example.com:x"), None);
    }
}
