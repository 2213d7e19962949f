//! Test harness (feature `testing`): a real `nats-server` with JetStream on a random
//! port and a temporary store, killed and removed on drop.
//!
//! A missing `nats-server` fails the test with a message saying how to install it;
//! tests never skip silently.
//!
//! # Examples
//! ```no_run
//! # async fn t() {
//! let server = weft_bus::testing::TestServer::start().await;
//! let bus = server.bus().await; // mesh resources created, registry TTL 3 s
//! # }
//! ```

use std::time::Duration;

use crate::connect::{Bus, ConnectOptions};
use crate::resources::{self, ResourceConfig};
use crate::server::{LocalServer, LocalServerConfig};

/// A `nats-server` for one test.
pub struct TestServer {
    server: LocalServer,
    dir: tempfile::TempDir,
}

/// The resource settings the harness uses: defaults, but a registry TTL of 3 s so
/// expiry tests stay short.
pub fn test_resources() -> ResourceConfig {
    ResourceConfig {
        registry_ttl: Duration::from_secs(3),
        ..ResourceConfig::default()
    }
}

impl TestServer {
    /// Starts a server.
    ///
    /// # Panics
    /// When `nats-server` is missing (with the install hint) or does not start.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_, _| {}).await
    }

    /// Starts a server whose settings `configure` adjusts (a config file for TLS or
    /// accounts, extra flags) after the harness set the store to a temporary
    /// directory, given as the second argument.
    ///
    /// # Panics
    /// As [`TestServer::start`].
    pub async fn start_with(
        configure: impl FnOnce(&mut LocalServerConfig, &std::path::Path),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = LocalServerConfig::new(dir.path());
        configure(&mut config, dir.path());
        let server = LocalServer::start(config)
            .await
            .unwrap_or_else(|e| panic!("cannot start nats-server for the test: {e}"));
        TestServer { server, dir }
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// The temporary directory holding the store and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Connects with prefix `weft` and creates the mesh's resources
    /// ([`test_resources`]).
    ///
    /// # Panics
    /// When connecting or creating the resources fails.
    pub async fn bus(&self) -> Bus {
        let bus = self.connect().await;
        resources::ensure(&bus, &test_resources())
            .await
            .expect("create mesh resources");
        bus
    }

    /// Connects with prefix `weft` without creating anything.
    ///
    /// # Panics
    /// When connecting fails.
    pub async fn connect(&self) -> Bus {
        ConnectOptions::new(self.url())
            .connect()
            .await
            .expect("connect to the test nats-server")
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
