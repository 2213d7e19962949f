//! Shared helpers: start a gateway on a free port, talk JSON to it, stop it cleanly.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_bus::Bus;
use weft_gateway::{Gateway, GatewayConfig};

/// A gateway serving in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), weft_gateway::Error>>,
}

/// The test configuration: `config` on 127.0.0.1 port 0.
pub fn local(config: GatewayConfig) -> GatewayConfig {
    GatewayConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        ..config
    }
}

/// Binds a gateway on 127.0.0.1:0 with `config` and serves it.
pub async fn start_with(bus: &Bus, config: GatewayConfig) -> Running {
    let gateway = Gateway::bind(bus.clone(), local(config))
        .await
        .expect("bind the gateway");
    let addr = gateway.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        http: http_client(),
        stop,
        task,
    }
}

/// Binds a gateway with the default settings and serves it.
pub async fn start(bus: &Bus) -> Running {
    start_with(bus, GatewayConfig::default()).await
}

impl Running {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` (raw bytes) to `path`.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    /// Triggers graceful shutdown and waits for `serve` to return Ok.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("serve task")
            .expect("serve returned an error");
    }
}

/// The status and JSON body of a response.
pub async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?}"));
    (status, body)
}

/// Asserts the error shape `{code, message}` and returns the message.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    assert!(!message.is_empty(), "{body}");
    message.to_owned()
}

/// A reqwest client. The workspace builds reqwest with `rustls-no-provider` (for
/// async-openai), so a crypto provider must be installed before the first client.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
