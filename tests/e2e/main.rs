//! End-to-end tests across crates, with real processes: the `weft` binary against a
//! real nats-server.

mod a2a;
mod bench;
mod chat;
mod cluster;
mod conventions;
mod dashboards;
mod demo;
mod dlq;
mod faults;
mod flows;
mod mcp;
pub mod otlp;
mod processes;
mod real_model;
mod security;
mod stream;
mod telemetry;
mod traces;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its name in logs.
    pub name: &'static str,
    /// The file its stderr goes to.
    pub log: std::path::PathBuf,
}

impl Proc {
    /// Runs the `weft` binary with `args`, stdout piped, stderr to a file in `log_dir`.
    pub fn weft(name: &'static str, args: &[&str], log_dir: &std::path::Path) -> Proc {
        Proc::weft_env(name, args, log_dir, &[])
    }

    /// As [`Proc::weft`], with more environment variables.
    pub fn weft_env(
        name: &'static str,
        args: &[&str],
        log_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
        // The test's own shell settings must not change what a test sees.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("OTEL_")) {
                command.env_remove(name);
            }
        }
        let child = command
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("WEFT_LOG_FORMAT")
            .env("RUST_LOG", "info,async_nats=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn weft");
        Proc {
            child,
            name,
            log: log_path,
        }
    }

    /// Reads the banner `weft up` prints once everything runs (up to its last line,
    /// `(also: …`), waiting at most 60 s; the rest of stdout is read and dropped, so the
    /// process never writes to a closed pipe.
    ///
    /// # Panics
    /// When no banner comes (with the process's stderr).
    pub fn banner(&mut self) -> String {
        use std::io::{BufRead, BufReader};
        let stdout = self.child.stdout.take().expect("stdout piped, read once");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut banner = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if line.starts_with("(also:") {
                        return banner;
                    }
                }
                Err(_) => panic!(
                    "{} printed no banner; stdout so far:\n{banner}\nstderr:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGINT (Ctrl-C) and waits up to `timeout` for the exit status.
    pub fn interrupt(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).ok()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `weft up` on free ports with its data under a temporary directory, which also
/// holds its log (`weft-up.log`).
pub struct Up {
    /// The process.
    pub proc: Proc,
    /// The directory with its data and log.
    pub dir: tempfile::TempDir,
    /// The port of its nats-server.
    pub nats_port: u16,
    /// The address of its HTTP gateway, `127.0.0.1:<port>`.
    pub http: String,
}

impl Up {
    /// Starts `weft up` with `extra` arguments (e.g. `--demo`) on free ports.
    pub fn start(extra: &[&str]) -> Up {
        Up::start_env(extra, &[])
    }

    /// As [`Up::start`], with more environment variables (e.g. `OTEL_*`).
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let nats_port = free_port();
        let http = format!("127.0.0.1:{}", free_port());
        let data = dir.path().join("data");
        let port = nats_port.to_string();
        let mut args = vec!["up", "--nats-port", &port, "--http", &http];
        args.extend(["--data", data.to_str().unwrap()]);
        args.extend(extra);
        let proc = Proc::weft_env("weft-up", &args, dir.path(), env);
        Up {
            proc,
            dir,
            nats_port,
            http,
        }
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// Runs `weft args…` to completion and returns stdout; panics with stderr on failure.
pub fn weft_output(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run weft");
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `scripts/<script>` (an installer of test clients that prints `KEY=VALUE`
/// lines, e.g. `scripts/install-mcp-clients`) once per test process and returns its
/// variables.
///
/// # Panics
/// With `hint` when the script fails.
pub fn installed(script: &str, hint: &str) -> std::collections::BTreeMap<String, String> {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    type Vars = Result<BTreeMap<String, String>, String>;
    static RUNS: OnceLock<Mutex<BTreeMap<String, Vars>>> = OnceLock::new();
    let mut runs = RUNS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let vars = runs.entry(script.to_owned()).or_insert_with(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(script);
        let out = Command::new("bash")
            .arg(&path)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run scripts/{script}: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/{script} failed ({})", out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    });
    match vars {
        Ok(v) => v.clone(),
        Err(e) => panic!("{e}: {hint}; run scripts/{script} by hand to see why"),
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A reqwest client. The workspace builds reqwest with `rustls-no-provider` (for
/// async-openai), so a crypto provider must be installed before the first client.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
