//! Process-level guarantees: a registry entry expires after SIGKILL, a flow run
//! survives its worker being killed mid-step, and (Linux) the local nats-server of
//! `weft up` dies with it when `weft up` is killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_bus::registry::{Kind, Registry};
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::{TestServer, eventually};
use weft_flows::{RunStatus, Runs, StepStatus};

use crate::Proc;

pub(crate) fn write_flow(dir: &std::path::Path, name: &str, flow: serde_json::Value) -> String {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, flow.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

pub(crate) async fn wait_registered(registry: &Registry, name: &str) {
    wait_registered_as(registry, Kind::Flow, name).await;
}

/// Waits up to 20 s for `name` of `kind` to be in the registry.
pub(crate) async fn wait_registered_as(registry: &Registry, kind: Kind, name: &str) {
    let found = eventually(Duration::from_secs(20), || async {
        (!registry
            .list_kind(kind, Some(name))
            .await
            .unwrap()
            .is_empty())
        .then_some(())
    })
    .await;
    assert!(found.is_some(), "{} {name} never registered", kind.as_str());
}

#[tokio::test]
async fn registry_entry_expires_within_its_ttl_after_sigkill() {
    let server = TestServer::start().await;
    let bus = server.bus().await; // registry TTL 3 s
    let file = write_flow(
        server.dir(),
        "idle",
        json!({"name": "idle", "trigger": "never.happens", "steps": [{"name": "s", "publish": "x"}]}),
    );
    let mut worker = Proc::weft(
        "idle-worker",
        &["flow", "worker", &file, "--server", server.url()],
        server.dir(),
    );
    let registry = Registry::open(&bus).await.unwrap();
    wait_registered(&registry, "idle").await;

    worker.kill();
    let killed = Instant::now();
    let gone = eventually(Duration::from_secs(20), || async {
        registry
            .list_kind(Kind::Flow, Some("idle"))
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "entry still there 20 s after SIGKILL");
    // TTL 3 s after the last heartbeat (at most 1 s before the kill), plus the
    // server's expiry sweep. CI runs this beside eleven other process tests on two
    // cores and has measured 8 s, so the bound is three TTLs: still far short of an
    // entry that never expires, which is what this test exists to catch.
    assert!(
        killed.elapsed() < Duration::from_secs(9),
        "took {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn a_run_resumes_on_another_worker_after_sigkill_without_rerunning_finished_steps() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let (c1, c2, c3) = (counts.clone(), counts.clone(), counts.clone());
    let _fx = Service::new("fx", "1.0.0")
        .endpoint(Endpoint::new("one", move |_r: Request| {
            let c = c1.clone();
            async move {
                c[0].fetch_add(1, Ordering::SeqCst);
                Ok(json!({"one": true}))
            }
        }))
        .endpoint(Endpoint::new("slow", move |_r: Request| {
            let c = c2.clone();
            async move {
                c[1].fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(json!({"slow": true}))
            }
        }))
        .endpoint(Endpoint::new("three", move |_r: Request| {
            let c = c3.clone();
            async move {
                c[2].fetch_add(1, Ordering::SeqCst);
                Ok(json!({"three": true}))
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    let file = write_flow(
        server.dir(),
        "crashy",
        json!({"name": "crashy", "trigger": "job.start", "steps": [
            {"name": "one", "invoke": "fx.one"},
            {"name": "two", "invoke": "fx.slow", "input": "${steps.one.output}"},
            {"name": "three", "invoke": "fx.three", "input": "${steps.two.output}"}
        ]}),
    );
    let args = [
        "flow",
        "worker",
        file.as_str(),
        "--server",
        server.url(),
        "--lease-ms",
        "1500",
    ];
    let mut first = Proc::weft("worker-a", &args, server.dir());
    let registry = Registry::open(&bus).await.unwrap();
    wait_registered(&registry, "crashy").await;

    let trigger = bus
        .publish(&"job.start".parse().unwrap(), json!({}))
        .await
        .unwrap();
    let in_step_two = eventually(Duration::from_secs(10), || async {
        (counts[1].load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(in_step_two.is_some(), "worker A never reached step two");
    first.kill(); // SIGKILL while step two is in progress

    let store = Runs::open(&bus).await.unwrap();
    let run_id = weft_flows::run::run_id("crashy", &trigger.event_id);
    let run = store.get("crashy", &run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.steps[0].status, StepStatus::Completed);
    assert_eq!(
        run.steps[1].status,
        StepStatus::Running { attempt: 1 },
        "{:?}",
        run.steps[1]
    );

    let _second = Proc::weft("worker-b", &args, server.dir());
    let done = eventually(Duration::from_secs(20), || async {
        let run = store.get("crashy", &run_id).await.unwrap()?;
        (run.status == RunStatus::Completed).then_some(run)
    })
    .await
    .expect("worker B did not complete the run");

    assert_eq!(
        counts[0].load(Ordering::SeqCst),
        1,
        "finished step one ran again"
    );
    assert_eq!(
        counts[2].load(Ordering::SeqCst),
        1,
        "step three ran more than once"
    );
    assert_eq!(
        counts[1].load(Ordering::SeqCst),
        2,
        "the interrupted step runs again, once"
    );
    let attempts: Vec<u32> = done.steps.iter().map(|s| s.attempts).collect();
    assert_eq!(attempts, [1, 2, 1]);
    assert_eq!(done.steps[2].output.as_ref().unwrap()["three"], true);
}

/// The children of `pid` named `name`, from `/proc/<pid>/task/*/children`.
#[cfg(target_os = "linux")]
fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == name)
        })
        .collect()
}

/// Whether `pid` still runs: `/proc/<pid>` exists and is not a zombie (a zombie has
/// exited; it only waits for whoever it was reparented to to reap it).
#[cfg(target_os = "linux")]
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// SIGKILLs a process on drop, so a failing test leaves no nats-server behind.
#[cfg(target_os = "linux")]
struct KillOnDrop(u32);

#[cfg(target_os = "linux")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if running(self.0) {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn local_nats_server_dies_with_weft_up_after_sigkill() {
    let mut up = crate::Up::start(&[]);
    let nats_port = up.nats_port;

    // Wait for the child nats-server to accept connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    let server = loop {
        if let Ok(Some(status)) = up.proc.child.try_wait() {
            panic!("weft up exited ({status}); stderr:\n{}", up.log());
        }
        let children = children_named(up.proc.child.id(), "nats-server");
        if let [pid] = children[..]
            && std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_ok()
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no nats-server child of weft up accepting on {nats_port} within 30 s; \
             stderr:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _guard = KillOnDrop(server);

    up.proc.kill(); // SIGKILL: weft up gets no chance to stop its server
    let killed = Instant::now();
    while running(server) && killed.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !running(server),
        "nats-server (pid {server}) still runs 10 s after weft up was killed"
    );
}
