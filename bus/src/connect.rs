//! Connecting to NATS: [`ConnectOptions`] and the [`Bus`] handle every part shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::subject::{Names, Prefix, Subjects};

/// Default budget of a durable publish: 20 s, room for two leader elections.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// Default NATS URL when neither a flag nor `NATS_URL` gives one.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS and which mesh to join. Every setter states its default.
///
/// Credentials come by the usual means: user and password or a token in the URL or
/// by setter, an nkey seed, a `.creds` file, a TLS CA and client certificate.
/// [`ConnectOptions::from_env`] reads the usual environment variables.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), weft_bus::Error> {
/// let bus = weft_bus::ConnectOptions::new("nats://127.0.0.1:4222")
///     .prefix("weft".parse()?)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    url: String,
    prefix: Prefix,
    name: Option<String>,
    creds_file: Option<PathBuf>,
    token: Option<String>,
    user_password: Option<(String, String)>,
    nkey_seed: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    publish_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::new(DEFAULT_URL)
    }
}

impl ConnectOptions {
    /// Options for `url` (one URL, or several separated by commas), prefix `weft`,
    /// no credentials.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            prefix: Prefix::default(),
            name: None,
            creds_file: None,
            token: None,
            user_password: None,
            nkey_seed: None,
            tls_ca: None,
            tls_client: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
        }
    }

    /// Options from the environment: `NATS_URL` (default [`DEFAULT_URL`]),
    /// `NATS_CREDS` (creds file), `NATS_TOKEN`, `NATS_USER` + `NATS_PASSWORD`,
    /// `NATS_NKEY` (seed), `NATS_CA` (CA file), `NATS_CERT` + `NATS_KEY` (client
    /// certificate) and `WEFT_PREFIX`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidSubject`] when `WEFT_PREFIX` is not one token.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut o = ConnectOptions::new(var("NATS_URL").unwrap_or_else(|| DEFAULT_URL.into()));
        if let Some(p) = var("WEFT_PREFIX") {
            o.prefix = p.parse()?;
        }
        o.creds_file = var("NATS_CREDS").map(PathBuf::from);
        o.token = var("NATS_TOKEN");
        if let (Some(u), Some(p)) = (var("NATS_USER"), var("NATS_PASSWORD")) {
            o.user_password = Some((u, p));
        }
        o.nkey_seed = var("NATS_NKEY");
        o.tls_ca = var("NATS_CA").map(PathBuf::from);
        if let (Some(c), Some(k)) = (var("NATS_CERT"), var("NATS_KEY")) {
            o.tls_client = Some((c.into(), k.into()));
        }
        Ok(o)
    }

    /// The server URL(s). Default [`DEFAULT_URL`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The URL(s) these options connect to.
    pub fn server_url(&self) -> &str {
        &self.url
    }

    /// The mesh prefix. Default `weft`.
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The connection name shown by `nats server report connections`. Default none.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A `.creds` file (JWT + nkey seed). Default none.
    pub fn creds_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.creds_file = Some(path.into());
        self
    }

    /// A token. Default none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// User and password. Default none (they may also be in the URL).
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// An nkey seed (`SU…`). Default none.
    pub fn nkey_seed(mut self, seed: impl Into<String>) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// A PEM file of CA certificates to trust; TLS verification stays on. Default: the
    /// system's roots.
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// A client certificate and key (PEM files) for mutual TLS. Default none.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self
    }

    /// How long the first connection may take. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout of JetStream API requests and of the JetStream publish ack. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a durable publish ([`Bus::publish`]) keeps trying through transient
    /// failures, such as a stream electing a new leader after a node died (nats-server
    /// takes 4–9 s for that), before it fails. Default [`DEFAULT_PUBLISH_TIMEOUT`]
    /// (20 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Connects.
    ///
    /// The connection's events are watched (an async-nats event callback): when the
    /// connection is lost, requests waiting for a reply fail at once with
    /// [`ErrorKind::Disconnected`], and when the server refuses a publish to a subject
    /// (a permissions violation), requests sent to it fail with
    /// [`ErrorKind::Permission`]. The client reconnects on its own; requests made while
    /// it is disconnected are buffered and sent when it is back.
    ///
    /// # Errors
    /// [`ErrorKind::Connect`] naming the server tried (and the credentials used, never
    /// a secret), when the server cannot be reached, TLS verification fails, the server
    /// refuses the credentials, or a credentials, certificate or key file cannot be
    /// read (the message names the file).
    pub async fn connect(self) -> Result<Bus> {
        let url = redact(&self.url);
        let waiters = Arc::new(crate::invoke::reply::Waiters::default());
        let events = (waiters.clone(), url.clone());
        let mut o = async_nats::ConnectOptions::new()
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout))
            .retain_servers_order()
            .event_callback(move |event| {
                events.0.on_event(&event, &events.1);
                std::future::ready(())
            });
        if let Some(path) = &self.creds_file {
            o = o.credentials_file(path).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Connect,
                    format!("cannot read credentials file {}", path.display()),
                    e,
                )
            })?;
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some((u, p)) = &self.user_password {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            // Checked here: async-nats would only fail at the server's challenge, with
            // a message that does not say the seed is malformed.
            nkeys::KeyPair::from_seed(seed).map_err(|e| {
                Error::with_source(
                    ErrorKind::Connect,
                    "the nkey seed is not a valid user seed (expected `SU…`)",
                    e,
                )
            })?;
            o = o.nkey(seed.clone());
        }
        if let Some(ca) = &self.tls_ca {
            readable(ca, "TLS CA file")?;
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            readable(cert, "TLS client certificate")?;
            readable(key, "TLS client key")?;
            o = o
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(name) = &self.name {
            o = o.name(name.clone());
        }
        let servers: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let client = o.connect(servers.as_slice()).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Connect,
                format!("cannot connect to NATS at {url}{}", self.describe_auth()),
                e,
            )
        })?;
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .timeout(self.request_timeout)
            .build(client.clone());
        Ok(Bus {
            inner: Arc::new(Inner {
                client,
                jetstream,
                subjects: Subjects::new(self.prefix.clone()),
                names: Names::new(&self.prefix),
                url,
                publish_timeout: self.publish_timeout,
                waiters,
                replies: tokio::sync::OnceCell::new(),
                registry: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The credentials these options use, for error messages: ` (credentials file
    /// F, TLS CA C)`; never a password, token or seed. Empty without any.
    fn describe_auth(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.creds_file {
            parts.push(format!("credentials file {}", p.display()));
        }
        if let Some((user, _)) = &self.user_password {
            parts.push(format!("user {user}"));
        }
        if self.token.is_some() {
            parts.push("a token".to_owned());
        }
        if let Some(seed) = &self.nkey_seed
            && let Ok(kp) = nkeys::KeyPair::from_seed(seed)
        {
            parts.push(format!("nkey {}", kp.public_key()));
        }
        if let Some(ca) = &self.tls_ca {
            parts.push(format!("TLS CA {}", ca.display()));
        }
        if let Some((cert, _)) = &self.tls_client {
            parts.push(format!("TLS client certificate {}", cert.display()));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// Checks that `path` can be opened, so a missing file is named in the error (the
/// client's own error does not name it).
fn readable(path: &std::path::Path, what: &str) -> Result<()> {
    std::fs::File::open(path).map(drop).map_err(|e| {
        Error::with_source(
            ErrorKind::Connect,
            format!("cannot read {what} {}", path.display()),
            e,
        )
    })
}

/// The URL with any password or token replaced by `***`, for messages.
fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

struct Inner {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    subjects: Subjects,
    names: Names,
    url: String,
    publish_timeout: Duration,
    /// Requests waiting for an answer; the event callback ends them early.
    waiters: Arc<crate::invoke::reply::Waiters>,
    replies: tokio::sync::OnceCell<crate::invoke::reply::ReplyInbox>,
    registry: tokio::sync::OnceCell<crate::registry::RegistryWatch>,
}

/// A connection to one mesh: the NATS client, its JetStream context, and the mesh's
/// subjects and resource names. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.inner.url)
            .field("prefix", self.inner.subjects.prefix())
            .finish()
    }
}

impl Bus {
    /// Connects to `url` with prefix `weft` and no credentials.
    ///
    /// # Errors
    /// As [`ConnectOptions::connect`].
    pub async fn connect(url: &str) -> Result<Bus> {
        ConnectOptions::new(url).connect().await
    }

    /// The NATS client underneath.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context underneath.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.inner.jetstream
    }

    /// This mesh's subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// This mesh's prefix.
    pub fn prefix(&self) -> &Prefix {
        self.inner.subjects.prefix()
    }

    /// This mesh's stream and bucket names.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The connection's shared reply inbox, subscribed on first use.
    pub(crate) async fn replies(&self) -> Result<&crate::invoke::reply::ReplyInbox> {
        self.inner
            .replies
            .get_or_try_init(|| {
                crate::invoke::reply::ReplyInbox::start(
                    &self.inner.client,
                    self.inner.waiters.clone(),
                )
            })
            .await
    }

    /// The connection's live view of the registry, started on first use and shared by
    /// every clone of this bus (one KV watch per connection; see
    /// [`RegistryWatch`](crate::registry::RegistryWatch)).
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the registry bucket is missing or cannot be watched; the
    /// next call tries again.
    pub async fn registry_watch(&self) -> Result<&crate::registry::RegistryWatch> {
        self.inner
            .registry
            .get_or_try_init(|| crate::registry::RegistryWatch::start(self))
            .await
    }

    /// The budget of a durable publish ([`ConnectOptions::publish_timeout`]).
    pub fn publish_timeout(&self) -> Duration {
        self.inner.publish_timeout
    }

    /// The requests of this connection waiting for an answer (see [`crate::invoke::reply`]).
    pub(crate) fn waiters(&self) -> &Arc<crate::invoke::reply::Waiters> {
        &self.inner.waiters
    }

    /// The server URL(s) this bus connected to, credentials redacted.
    pub fn server_url(&self) -> &str {
        &self.inner.url
    }

    /// Opens a KV bucket of this mesh by its full name.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket does not exist (hint: `weft up` creates the
    /// mesh's buckets).
    pub async fn kv(&self, bucket: &str) -> Result<async_nats::jetstream::kv::Store> {
        self.jetstream().get_key_value(bucket).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Kv,
                format!(
                    "cannot open KV bucket {bucket} on {} (run `weft up` to create the mesh's resources)",
                    self.server_url()
                ),
                e,
            )
        })
    }

    /// Flushes pending publishes and closes the connection after in-flight
    /// subscriptions have drained. The connection's registry watch
    /// ([`Bus::registry_watch`]) stops first.
    ///
    /// # Errors
    /// [`ErrorKind::Other`] when the drain fails.
    pub async fn drain(&self) -> Result<()> {
        // The registry watch would see its subscription end and start again.
        if let Some(watch) = self.inner.registry.get() {
            watch.stop();
        }
        self.client()
            .drain()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Other, "drain failed", e))
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact("nats://a@h,nats://k"), "nats://***@h,nats://k");
    }
}
