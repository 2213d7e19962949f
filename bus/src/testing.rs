//! Test harness (feature `testing`): a real `nats-server` with JetStream on a random
//! port and a temporary store, killed and removed on drop ([`TestServer`]), and a
//! cluster of them whose nodes a test can kill, stop and restart ([`TestCluster`]).
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
use crate::durable::resources::{self, ResourceConfig};
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

/// The number of consumers on `stream` now (e.g. `KV_weft_registry`, to check that
/// readers of a bucket do not pile consumers up).
///
/// # Panics
/// When the stream's info cannot be read.
pub async fn consumers_on(bus: &Bus, stream: &str) -> usize {
    bus.jetstream()
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("no stream {stream}: {e}"))
        .cached_info()
        .state
        .consumer_count
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

/// The cluster name every [`TestCluster`] node is started with.
pub const CLUSTER_NAME: &str = "weft-test";

/// How long [`TestCluster`] waits for a node to join the cluster's JetStream (a meta
/// leader answering through it) and for the mesh's resources to be created.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one JetStream API request of the harness (account or stream info) may
/// take before it is asked again; a stream without a leader may never answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A cluster of `n` `nats-server`s with JetStream for one test, under one temporary
/// directory, killed and removed on drop.
///
/// Node `i` (from 0) is started as `-n node<i> --cluster_name weft-test --cluster
/// nats://127.0.0.1:<cluster port> --routes <the other nodes' cluster URLs>` with its
/// own client port and store (`<dir>/node<i>/jetstream`, log
/// `<dir>/node<i>/nats-server.log`). The ports are chosen when the cluster starts and
/// kept, so a node that is [killed](TestCluster::kill) or [stopped](TestCluster::stop)
/// comes back on [restart](TestCluster::restart) with the same ports and store.
///
/// Every method that fails panics with a message naming the node and showing the end
/// of its log.
///
/// # Examples
/// ```no_run
/// # async fn t() {
/// use std::time::Duration;
/// let cluster = weft_bus::testing::TestCluster::start(3).await;
/// let bus = cluster.bus().await; // mesh resources with 3 replicas
/// let stream = bus.names().events_stream.clone();
/// let leader = cluster.wait_for_leader(&bus, &stream, Duration::from_secs(30)).await;
/// cluster.kill(leader); // the survivors elect another leader within 4–9 s
/// cluster.restart(leader).await; // same ports, same store
/// cluster.wait_for_leader(&bus, &stream, Duration::from_secs(30)).await; // caught up
/// # }
/// ```
pub struct TestCluster {
    nodes: Vec<std::sync::Mutex<Node>>,
    dir: tempfile::TempDir,
}

/// One node: how to start it, and its server while it runs.
struct Node {
    config: LocalServerConfig,
    url: String,
    server: Option<LocalServer>,
    /// How many times it was started; earlier logs are kept as
    /// `nats-server.<start>.log`.
    starts: u32,
}

impl TestCluster {
    /// Starts `n` nodes (`n >= 1`) and waits until every one of them reaches a
    /// JetStream meta leader (an account info request through it succeeds).
    ///
    /// # Panics
    /// When `n` is 0, `nats-server` is missing (with the install hint), no free ports
    /// can be found, a node does not start, or the cluster has no meta leader within
    /// 30 s; the message names the node and shows the end of its log.
    pub async fn start(n: usize) -> TestCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports = free_ports(2 * n);
        let (client_ports, cluster_ports) = ports.split_at(n);
        let route = |p: u16| format!("nats://127.0.0.1:{p}");
        let nodes = (0..n)
            .map(|i| {
                let mut config = LocalServerConfig::new(dir.path().join(format!("node{i}")));
                config.port = Some(client_ports[i]);
                let mut args: Vec<String> = vec![
                    "-n".into(),
                    format!("node{i}"),
                    "--cluster_name".into(),
                    CLUSTER_NAME.into(),
                    "--cluster".into(),
                    route(cluster_ports[i]),
                ];
                let routes: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| route(cluster_ports[j]))
                    .collect();
                if !routes.is_empty() {
                    args.extend(["--routes".into(), routes.join(",")]);
                }
                config.extra_args = args.into_iter().map(Into::into).collect();
                std::sync::Mutex::new(Node {
                    config,
                    url: route(client_ports[i]),
                    server: None,
                    starts: 0,
                })
            })
            .collect();
        let cluster = TestCluster { nodes, dir };
        for i in 0..n {
            cluster.launch(i).await;
        }
        for i in 0..n {
            cluster.wait_for_meta_leader(i).await;
        }
        cluster
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The temporary directory holding every node's store and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Node `i`'s client URL, e.g. `nats://127.0.0.1:40123`; the same after a restart.
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn url(&self, i: usize) -> String {
        self.node(i).url.clone()
    }

    /// Every node's client URL, comma-separated, for [`ConnectOptions::new`].
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether node `i` is running (not killed or stopped).
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn is_running(&self, i: usize) -> bool {
        self.node(i).server.is_some()
    }

    /// The last lines of node `i`'s current log.
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn log_tail(&self, i: usize) -> String {
        let path = self.node(i).config.data_dir.join("nats-server.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Connects (prefix `weft`) to all the nodes' URLs without creating anything. The
    /// client tries the nodes in order and moves to another one when its node goes.
    ///
    /// # Panics
    /// When no node accepts the connection.
    pub async fn connect(&self) -> Bus {
        ConnectOptions::new(self.urls())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"))
    }

    /// Connects ([`TestCluster::connect`]) and creates the mesh's resources with
    /// [`test_resources`] and 3 replicas (`n` when the cluster has fewer nodes). While
    /// the nodes are still getting to know each other JetStream may refuse replicated
    /// streams ("insufficient resources"), so creating them is tried again for up to
    /// 30 s.
    ///
    /// # Panics
    /// When connecting fails or the resources cannot be created within 30 s.
    pub async fn bus(&self) -> Bus {
        let bus = self.connect().await;
        let replicas = self.len().min(3);
        let config = ResourceConfig {
            replicas: Some(replicas),
            // The default TTL, not the harness's 3 s: an entry must outlive a leader
            // election (up to 9 s after a SIGKILL) during which heartbeats fail.
            registry_ttl: ResourceConfig::default().registry_ttl,
            ..test_resources()
        };
        let deadline = tokio::time::Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            match resources::ensure(&bus, &config).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() > deadline => panic!(
                    "cannot create the mesh resources with {} replicas on the test cluster within {} s: {e}",
                    replicas,
                    CLUSTER_READY_TIMEOUT.as_secs(),
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        bus
    }

    /// Kills node `i` with SIGKILL (no clean shutdown, as when a machine dies).
    ///
    /// # Panics
    /// When there is no node `i` or it is not running.
    pub fn kill(&self, i: usize) {
        let server = self.take_server(i, "kill");
        server.kill();
    }

    /// Stops node `i` gracefully (SIGTERM; JetStream flushes its store and hands its
    /// leaderships over), waiting up to 10 s before killing it.
    ///
    /// # Panics
    /// When there is no node `i` or it is not running.
    pub async fn stop(&self, i: usize) {
        let server = self.take_server(i, "stop");
        server.stop(Duration::from_secs(10)).await;
    }

    /// Starts node `i` again on its ports with its store, and waits until it reaches
    /// the JetStream meta leader. Its previous log is kept beside the new one as
    /// `nats-server.<start>.log`.
    ///
    /// # Panics
    /// When there is no node `i`, it is running, it does not start, or it does not
    /// reach a meta leader within 30 s.
    pub async fn restart(&self, i: usize) {
        {
            let node = self.node(i);
            assert!(
                node.server.is_none(),
                "node{i} is running; kill or stop it before restarting it"
            );
            let log = node.config.data_dir.join("nats-server.log");
            let kept = node
                .config
                .data_dir
                .join(format!("nats-server.{}.log", node.starts));
            let _ = std::fs::rename(log, kept);
        }
        self.launch(i).await;
        self.wait_for_meta_leader(i).await;
    }

    /// The node that leads `stream` now, from its stream info (the leader's server
    /// name is `node<i>`).
    ///
    /// # Panics
    /// When the stream info request fails or times out (2 s), or the stream has no
    /// leader.
    pub async fn node_of_leader(&self, bus: &Bus, stream: &str) -> usize {
        let info = stream_info(bus, stream)
            .await
            .unwrap_or_else(|e| panic!("cannot read the info of stream {stream}: {e}"));
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
        match leader {
            Some(name) => self.index_of(&name),
            None => panic!(
                "stream {stream} has no leader; {}",
                self.describe_stream(&info)
            ),
        }
    }

    /// Waits until `stream` has a leader and every one of its replicas is current and
    /// online, and returns the leader's node. A replica on a node that is down is not
    /// current, so with a node down this waits for its restart; use
    /// [`TestCluster::node_of_leader`] to ask who leads meanwhile. Stream info is asked every 100 ms; a
    /// request that does not answer within 2 s (as when there is no leader) is asked
    /// again.
    ///
    /// # Panics
    /// When that does not happen within `timeout`; the message shows the last stream
    /// info seen and the end of the log of each node that was not current.
    pub async fn wait_for_leader(&self, bus: &Bus, stream: &str, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut lagging: Vec<usize> = Vec::new();
            let last = match stream_info(bus, stream).await {
                Ok(info) => {
                    let want = info.config.num_replicas.max(1) - 1;
                    if let Some(cluster) = &info.cluster
                        && let Some(leader) = &cluster.leader
                        && cluster.replicas.len() == want
                        && cluster.replicas.iter().all(|r| r.current && !r.offline)
                    {
                        return self.index_of(leader);
                    }
                    lagging = info
                        .cluster
                        .iter()
                        .flat_map(|c| &c.replicas)
                        .filter(|r| !r.current || r.offline)
                        .filter_map(|r| self.try_index_of(&r.name))
                        .collect();
                    self.describe_stream(&info)
                }
                Err(e) => format!("stream info failed: {e}"),
            };
            if tokio::time::Instant::now() > deadline {
                let logs: String = lagging
                    .iter()
                    .map(|&i| format!("\nnode{i}'s log ends with:\n{}", self.log_tail(i)))
                    .collect();
                panic!(
                    "stream {stream} did not get a leader with all replicas current within {timeout:?}; {last}{logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn node(&self, i: usize) -> std::sync::MutexGuard<'_, Node> {
        let n = self.nodes.len();
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("the cluster has {n} nodes; there is no node{i}"))
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_server(&self, i: usize, what: &str) -> LocalServer {
        self.node(i)
            .server
            .take()
            .unwrap_or_else(|| panic!("cannot {what} node{i}: it is not running"))
    }

    /// Starts node `i`'s server (the spawn happens on the calling thread; see
    /// [`LocalServer::start`]).
    async fn launch(&self, i: usize) {
        let config = {
            let mut node = self.node(i);
            node.starts += 1;
            node.config.clone()
        };
        match LocalServer::start(config).await {
            Ok(server) => self.node(i).server = Some(server),
            Err(e) => panic!("cannot start node{i} of the test cluster: {e}"),
        }
    }

    /// Waits until an account info request through node `i` alone succeeds, which
    /// takes a JetStream meta leader that node `i` is routed to.
    async fn wait_for_meta_leader(&self, i: usize) {
        let url = self.url(i);
        let bus = ConnectOptions::new(url.as_str())
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to node{i} at {url}: {e}; its log ends with:\n{}",
                    self.log_tail(i)
                )
            });
        let deadline = tokio::time::Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let last =
                match tokio::time::timeout(PROBE_TIMEOUT, bus.jetstream().query_account()).await {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("account info did not answer within {PROBE_TIMEOUT:?}"),
                };
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "node{i} at {url} found no JetStream meta leader within {} s ({last}); its log ends with:\n{}",
                    CLUSTER_READY_TIMEOUT.as_secs(),
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn try_index_of(&self, server_name: &str) -> Option<usize> {
        server_name
            .strip_prefix("node")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.len())
    }

    fn index_of(&self, server_name: &str) -> usize {
        self.try_index_of(server_name)
            .unwrap_or_else(|| panic!("{server_name} is not a node of this test cluster"))
    }

    fn describe_stream(&self, info: &async_nats::jetstream::stream::Info) -> String {
        match &info.cluster {
            None => "no cluster information".into(),
            Some(c) => {
                let replicas: Vec<String> = c
                    .replicas
                    .iter()
                    .map(|r| {
                        format!(
                            "{} (current {}, offline {}, lag {:?})",
                            r.name, r.current, r.offline, r.lag
                        )
                    })
                    .collect();
                format!(
                    "leader {}, replicas [{}]",
                    c.leader.as_deref().unwrap_or("none"),
                    replicas.join(", ")
                )
            }
        }
    }
}

/// Stream info of `stream`, asked once and bounded by [`PROBE_TIMEOUT`].
async fn stream_info(
    bus: &Bus,
    stream: &str,
) -> Result<async_nats::jetstream::stream::Info, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, bus.jetstream().get_stream(stream)).await {
        Ok(Ok(s)) => Ok(s.cached_info().clone()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// `n` distinct free TCP ports on 127.0.0.1: all are bound at once (so none repeats),
/// then released for the servers to take.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}
