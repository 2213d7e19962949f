//! # weft-gateway
//!
//! The HTTP gateway of Weft (DESIGN §11): one [axum] server that bridges HTTP, MCP
//! ([`mcp`], both ways) and A2A ([`a2a`], both ways) onto the bus, so one port and one
//! auth setting cover every bridge.
//!
//! ## Routes
//!
//! | method and path | what | success | errors |
//! |---|---|---|---|
//! | `POST /v1/events/{event_type}` | publish an event; body = payload JSON ([`routes::events`]) | 202 `{event_id, stream, sequence, duplicate}` after the JetStream ack | 400, 401, 413, 503 |
//! | `POST /v1/invoke/{target}` | request-reply to `service` or `service.endpoint`; body = payload JSON; optional `?timeout_ms=` ([`routes::invoke`]) | 200, body = the reply's payload | 400, 401, 413, 502, 503, 504, or the handler's own error |
//! | `POST /v1/invoke/{target}/stream` | streaming invoke; same request; optional `?timeout_ms=`, `?idle_timeout_ms=` ([`routes::stream`]) | 200 `text/event-stream`, one event per frame (event name = the frame's `event_type`, data = the frame envelope) | before the stream starts: as above |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document of the `/v1` routes, generated from their handlers with utoipa ([`routes::openapi`]) | 200 JSON | 401 |
//! | `POST`/`GET`/`DELETE /mcp` | MCP over Streamable HTTP: the registry's endpoints as tools ([`mcp::server`], `docs/mcp.md`) | 200 (JSON or `text/event-stream`), 202 for notifications | 400 / 413 with a JSON-RPC error, 401, 403 (DNS-rebinding check) |
//! | `GET /a2a`, `GET /a2a/{agent}/.well-known/agent-card.json`, `GET /.well-known/agent-card.json` | the A2A directory and Agent Cards, public ([`a2a`], `docs/a2a.md`) | 200 JSON | 404, 503 |
//! | `POST /a2a/{agent}`, `/a2a/{agent}/…` | A2A JSON-RPC (1.0 and 0.3) and HTTP+JSON ([`a2a::server`]) | 200 (JSON-RPC errors inside), SSE for streams | 401, 404, 413 |
//! | `GET /metrics` | Prometheus text, `text/plain; version=0.0.4` ([`metrics`]) | 200 | 401 |
//! | `GET /healthz` | liveness; never needs the token | 200 `{"status":"ok"}` | — |
//! | `GET /readyz` | readiness: NATS connected, events stream and registry bucket present | 200 `{"status":"ready"}` | 401, 503 `NOT_READY` |
//! | anything else | | | 404 `NOT_FOUND`, 405 `METHOD_NOT_ALLOWED` |
//!
//! Every error has the body `{code, message}` (plus `retryable` when true and `cause`
//! when a handler gave one); [`ApiError`] lists the codes.
//!
//! HTTP headers `traceparent`, `X-Session-Id`, `X-Tenant-Id` and `X-User-Id` map to
//! the envelope's `traceparent` (and `trace_id`), `session_id`, `tenant_id` and
//! `user_id`; the envelope's `channel` is `http` ([`routes::HttpContext`]).
//!
//! ## Security (DESIGN §8)
//!
//! The gateway binds `127.0.0.1:8080` by default. With
//! [`GatewayConfig::auth_token`] set, every route but `/healthz` requires
//! `Authorization: Bearer <token>` (401 `AUTH_FAILURE` otherwise). Binding a
//! non-loopback address without a token is refused unless
//! [`GatewayConfig::allow_insecure`] is set. With [`GatewayConfig::tls`] set the gateway
//! serves HTTPS (rustls, [`tls`]) on the same routes.
//!
//! ## Registry
//!
//! While [`Gateway::serve`] runs, the gateway keeps a registry entry
//! `gateway.gateway.<instance>` (metadata `addr`, `url`, `auth`) alive, and deletes it
//! when it stops cleanly.
//!
//! # Examples
//!
//! Run a gateway until Ctrl-C, with graceful shutdown:
//!
//! ```no_run
//! use weft_gateway::{Gateway, GatewayConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = weft_bus::ConnectOptions::from_env()?.connect().await?;
//! let config = GatewayConfig {
//!     addr: "127.0.0.1:8080".parse()?,
//!     ..Default::default()
//! };
//! let gateway = Gateway::bind(bus, config).await?;
//! println!("gateway listening on http://{}", gateway.local_addr());
//! gateway
//!     .serve(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

pub mod a2a;
pub mod auth;
pub mod config;
pub mod error;
pub mod mcp;
pub mod metrics;
pub mod routes;
pub mod tls;
pub mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_bus::Bus;
use weft_bus::registry::{Kind, Registered, Registration, Registry};

pub use config::{GatewayConfig, TlsConfig};
pub use error::{ApiError, Error, ErrorBody};
pub use mcp::McpServer;
pub use routes::router;

/// Registry name of every gateway instance (kind [`Kind::Gateway`]).
pub const REGISTRY_NAME: &str = "gateway";

/// What every handler shares: the bus, the configuration and the MCP server. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    bus: Bus,
    config: Arc<GatewayConfig>,
    mcp: Option<McpServer>,
    a2a: Option<a2a::A2aServer>,
    /// Cancelled when the gateway stops: ends the MCP sessions' open streams, so a
    /// graceful shutdown does not wait for them.
    shutdown: CancellationToken,
}

impl AppState {
    /// State over `bus` with `config`, without `/mcp` (see [`AppState::with_mcp`]).
    pub fn new(bus: Bus, config: GatewayConfig) -> Self {
        AppState {
            bus,
            config: Arc::new(config),
            mcp: None,
            a2a: None,
            shutdown: CancellationToken::new(),
        }
    }

    /// The same state serving `server` at `/mcp`.
    pub fn with_mcp(mut self, server: McpServer) -> Self {
        self.mcp = Some(server);
        self
    }

    /// The same state serving `server` at `/a2a`.
    pub fn with_a2a(mut self, server: a2a::A2aServer) -> Self {
        self.a2a = Some(server);
        self
    }

    /// The A2A server mounted at `/a2a`, if any.
    pub fn a2a(&self) -> Option<&a2a::A2aServer> {
        self.a2a.as_ref()
    }

    /// The MCP server mounted at `/mcp`, if any.
    pub fn mcp(&self) -> Option<&McpServer> {
        self.mcp.as_ref()
    }

    /// Cancelled when the gateway stops serving.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }
}

/// A gateway whose listener is bound: read [`Gateway::local_addr`], then
/// [`Gateway::serve`] it. See the [crate docs](crate) for the routes and an example.
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The TLS configuration, when serving HTTPS.
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    /// This instance's registry entry (registered while serving); its instance id
    /// owns the A2A tasks this gateway runs.
    registration: Registration,
}

impl Gateway {
    /// Checks `config` ([`GatewayConfig::validate`]), reads its TLS certificate and
    /// key if it has them, and binds its address. Port 0 picks a free port.
    ///
    /// # Errors
    /// [`Error::Insecure`] or [`Error::Config`] from the check; [`Error::Config`]
    /// naming the file when the TLS certificate chain or key cannot be read or used
    /// ([`tls::server_config`]); [`Error::Bind`] when the address cannot be bound (in
    /// use, not local, no permission). Without the registry (resources not created
    /// yet) `/mcp` is left out, with a warning.
    pub async fn bind(bus: Bus, config: GatewayConfig) -> Result<Gateway, Error> {
        config.validate()?;
        let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        let mcp_options = mcp::McpOptions {
            services: config.mcp_services.clone(),
            call_timeout: config.invoke_timeout,
        };
        let mcp = match McpServer::new(&bus, mcp_options).await {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::warn!(error = %e, "serving without /mcp: the registry cannot be watched");
                None
            }
        };
        let registration =
            Registration::new(Kind::Gateway, REGISTRY_NAME, env!("CARGO_PKG_VERSION"));
        let a2a_options = a2a::A2aOptions {
            default_agent: config.a2a_default.clone(),
            auth: config.auth_token.is_some(),
            idle_timeout: config.invoke_timeout,
        };
        let a2a = match a2a::A2aServer::start(&bus, &registration.instance, a2a_options).await {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::warn!(error = %e, "serving without /a2a: the task bucket or the registry cannot be opened");
                None
            }
        };
        let addr = config.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Gateway {
            listener,
            local_addr,
            tls,
            state: AppState {
                mcp,
                a2a,
                ..AppState::new(bus, config)
            },
            registration,
        })
    }

    /// The address the gateway listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL: `https://<local_addr>` with TLS, else `http://<local_addr>`.
    pub fn url(&self) -> String {
        base_url(self.local_addr, self.tls.is_some())
    }

    /// The router this gateway serves (see [`router`]).
    pub fn router(&self) -> axum::Router {
        router(self.state.clone())
    }

    /// Serves HTTP (HTTPS with [`GatewayConfig::tls`]) until `shutdown` completes,
    /// then stops taking connections, lets in-flight requests finish (an invoke may
    /// take up to `invoke_timeout`), and returns.
    ///
    /// While serving, the gateway keeps its registry entry
    /// (`gateway.gateway.<instance>`, metadata `addr`, `url`, `auth`) alive and deletes
    /// it on return. Registering is best effort: without the registry bucket (the mesh's
    /// resources not created yet) the gateway logs a warning and serves anyway, and
    /// `/readyz` reports the bucket missing.
    ///
    /// # Errors
    /// [`Error::Serve`] when the HTTP server fails.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Gateway {
            listener,
            local_addr,
            tls,
            state,
            registration,
        } = self;
        let url = base_url(local_addr, tls.is_some());
        let a2a = state.a2a().cloned();
        let registered = register(&state, registration, local_addr, &url).await;
        tracing::info!(addr = %local_addr, %url, auth = state.config().auth_token.is_some(), "gateway listening");
        let stop = state.shutdown.clone();
        let shutdown = async move {
            shutdown.await;
            stop.cancel();
        };
        let app = router(state);
        let served = match tls {
            Some(config) => {
                axum::serve(
                    tls::TlsListener::new(listener, config),
                    app.into_make_service_with_connect_info::<trace::Peer>(),
                )
                .with_graceful_shutdown(shutdown)
                .await
            }
            None => {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<trace::Peer>(),
                )
                .with_graceful_shutdown(shutdown)
                .await
            }
        };
        if let Some(a2a) = a2a {
            let failed = a2a.shutdown().await;
            if failed > 0 {
                tracing::info!(
                    tasks = failed,
                    "failed the A2A tasks this gateway was running"
                );
            }
        }
        if let Some(r) = registered
            && let Err(e) = r.deregister().await
        {
            tracing::warn!(error = %e, "cannot delete the gateway's registry entry; it expires after the registry TTL");
        }
        tracing::info!(addr = %local_addr, "gateway stopped");
        served.map_err(Error::Serve)
    }
}

/// `https://addr` or `http://addr`.
fn base_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

/// Registers this instance, or logs why it cannot.
async fn register(
    state: &AppState,
    mut registration: Registration,
    addr: SocketAddr,
    url: &str,
) -> Option<Registered> {
    registration.description = "HTTP gateway: events, invoke, MCP, A2A, metrics".into();
    registration
        .metadata
        .insert("addr".into(), json!(addr.to_string()));
    registration.metadata.insert("url".into(), json!(url));
    registration
        .metadata
        .insert("auth".into(), json!(state.config().auth_token.is_some()));
    let result = match Registry::open(state.bus()).await {
        Ok(registry) => registry.register(registration).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "serving without a registry entry");
            None
        }
    }
}

/// A bare metrics endpoint for long-running processes that run no gateway (e.g.
/// `weft flow worker`): `GET /metrics` (Prometheus text) and `GET /healthz` only,
/// without auth, so bind it to loopback or a private interface.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves.
    ///
    /// # Errors
    /// [`Error::Serve`] when the HTTP server fails.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(routes::ops::metrics))
            .route("/healthz", axum::routing::get(routes::ops::healthz));
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::Serve)
    }
}
