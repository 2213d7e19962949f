//! Flow engine tests against a real nats-server (in-process worker; the crash-and-resume
//! test with a separate worker process lives in the workspace's tests/).

mod definition_props;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use weft_bus::ErrorPayload;
use weft_bus::retry::RetryPolicy;
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::{TestServer, eventually};
use weft_flows::worker::{self, WorkerConfig};
use weft_flows::{Flow, Run, RunFilter, RunStatus, Runs, Step, StepStatus};

mod durable;

fn fast() -> WorkerConfig {
    WorkerConfig {
        lease: Duration::from_secs(2),
        store_retry: RetryPolicy::fixed(Duration::from_millis(100)),
        concurrency: 4,
        ..WorkerConfig::default()
    }
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy::fixed(Duration::from_millis(100))
}

fn of(flow: &str) -> RunFilter {
    RunFilter {
        flow: Some(flow.to_owned()),
        ..RunFilter::default()
    }
}

async fn wait_for_run(store: &Runs, flow: &str, status: RunStatus) -> Run {
    eventually(Duration::from_secs(10), || async {
        store
            .list(&of(flow))
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.status == status)
    })
    .await
    .unwrap_or_else(|| panic!("no {status:?} run of {flow} within 10 s"))
}

#[tokio::test]
async fn a_three_step_flow_runs_in_order_and_checkpoints_outputs() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let _svc = Service::new("calc", "1.0.0")
        .endpoint(Endpoint::new("double", move |r: Request| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(json!({"value": r.payload()["n"].as_i64().unwrap() * 2}))
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::from_json(
        &json!({
            "name": "math",
            "trigger": "number.given",
            "steps": [
                {"name": "first", "invoke": "calc.double", "input": {"n": "${trigger.payload.n}"}},
                {"name": "second", "invoke": "calc.double", "input": {"n": "${steps.first.output.value}"}},
                {"name": "announce", "publish": "number.done",
                 "input": {"result": "${steps.second.output.value}", "text": "got ${steps.second.output.value} from ${trigger.payload.n}"}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    let mut done = bus
        .subscribe_events(&"number.done".parse().unwrap(), None)
        .await
        .unwrap();
    let trigger = bus
        .publish(&"number.given".parse().unwrap(), json!({"n": 5}))
        .await
        .unwrap();

    let event = tokio::time::timeout(Duration::from_secs(10), done.next())
        .await
        .unwrap()
        .unwrap();
    let payload = event.envelope.unwrap().payload.unwrap();
    assert_eq!(payload, json!({"result": 20, "text": "got 20 from 5"}));

    let store = Runs::open(&bus).await.unwrap();
    let run = wait_for_run(&store, "math", RunStatus::Completed).await;
    assert_eq!(run.trigger.event_id, trigger.event_id);
    assert_eq!(run.cause, "event");
    assert_eq!(run.id, weft_flows::run::run_id("math", &trigger.event_id));
    for s in &run.steps {
        assert_eq!(s.status, StepStatus::Completed, "{s:?}");
        assert_eq!(s.attempts, 1);
        assert!(s.started_at.is_some() && s.finished_at.is_some());
    }
    assert_eq!(run.steps[1].output.as_ref().unwrap()["value"], 20);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // The same trigger delivered again (same event_id, new message id, as a replay
    // would) finds the completed run: nothing re-runs, nothing is counted twice.
    let m = weft_flows::metrics::flows();
    let completed = m.runs.with_label_values(&["math", "completed"]);
    assert_eq!(completed.get(), 1);
    let acks = weft_bus::metrics::bus()
        .deliveries
        .with_label_values(&["flow_math", "ack"]);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "replayed-trigger");
    bus.jetstream()
        .publish_with_headers(
            "weft.events.number.given",
            headers,
            run.trigger.to_bytes().unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let handled = eventually(Duration::from_secs(5), || async {
        (acks.get() == 2).then_some(())
    })
    .await;
    assert!(handled.is_some(), "the replayed trigger was not handled");
    assert_eq!(completed.get(), 1, "a completed run was counted twice");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a completed step ran again"
    );
    let stored = store.get("math", &run.id).await.unwrap().unwrap();
    assert_eq!(stored, run, "the replay appended nothing");
    handle.stop().await;
}

#[tokio::test]
async fn retryable_failures_are_retried_and_permanent_ones_fail_the_run() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let _svc = Service::new("flaky", "1.0.0")
        .endpoint(Endpoint::new("once", move |_r: Request| {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(
                        ErrorPayload::new(weft_bus::ErrorCode::AgentUnavailable, "try later")
                            .retryable(),
                    )
                } else {
                    Ok(json!("fine"))
                }
            }
        }))
        .endpoint(Endpoint::new("never", |_r: Request| async {
            Err::<serde_json::Value, _>(ErrorPayload::invalid_request("bad input"))
        }))
        .serve(&bus)
        .await
        .unwrap();
    let ok = Flow::new("recovers", "a.b".parse().unwrap())
        .step(Step::invoke("s", "flaky.once".parse().unwrap(), json!({})).retry(quick_retry()));
    let bad = Flow::new("breaks", "c.d".parse().unwrap())
        .step(Step::invoke("s", "flaky.never".parse().unwrap(), json!({})))
        .step(Step::publish(
            "never_reached",
            "e.f".parse().unwrap(),
            json!({}),
        ));
    let handle = worker::start(&bus, vec![ok, bad], fast()).await.unwrap();
    bus.publish(&"a.b".parse().unwrap(), json!({}))
        .await
        .unwrap();
    bus.publish(&"c.d".parse().unwrap(), json!({}))
        .await
        .unwrap();

    let store = Runs::open(&bus).await.unwrap();
    let run = wait_for_run(&store, "recovers", RunStatus::Completed).await;
    assert_eq!(run.steps[0].attempts, 2);
    let run = wait_for_run(&store, "breaks", RunStatus::Failed).await;
    assert_eq!(run.steps[0].status, StepStatus::Failed { attempt: 1 });
    assert_eq!(
        run.steps[0].attempts, 1,
        "a non-retryable error is not retried"
    );
    let error = run.error.as_ref().unwrap();
    assert_eq!(error.code.as_str(), "INVALID_REQUEST");
    assert!(error.message.contains("bad input"), "{error}");
    assert_eq!(run.steps[1].status, StepStatus::Pending);
    handle.stop().await;
}

#[tokio::test]
async fn a_failed_run_keeps_its_error_and_a_retry_resumes_it_from_its_failed_step() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (firsts, seconds) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, f, s2) = (healthy.clone(), firsts.clone(), seconds.clone());
    let _svc = Service::new("dep", "1.0.0")
        .endpoint(Endpoint::new("first", move |_r: Request| {
            let f = f.clone();
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                Ok(json!("one"))
            }
        }))
        .endpoint(Endpoint::new("second", move |_r: Request| {
            let (h, s2) = (h.clone(), s2.clone());
            async move {
                s2.fetch_add(1, Ordering::SeqCst);
                if h.load(Ordering::SeqCst) {
                    Ok(json!("two"))
                } else {
                    Err(
                        ErrorPayload::new(weft_bus::ErrorCode::AgentUnavailable, "down")
                            .retryable(),
                    )
                }
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::new("resumable", "job.queued".parse().unwrap())
        .step(Step::invoke(
            "first",
            "dep.first".parse().unwrap(),
            json!({}),
        ))
        .step(
            Step::invoke("second", "dep.second".parse().unwrap(), json!({}))
                .max_attempts(2)
                .retry(quick_retry()),
        );
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    bus.publish(&"job.queued".parse().unwrap(), json!({"job": 1}))
        .await
        .unwrap();
    let store = Runs::open(&bus).await.unwrap();
    let run = wait_for_run(&store, "resumable", RunStatus::Failed).await;
    assert_eq!(run.steps[1].attempts, 2);
    assert_eq!(run.summary()["error"]["code"], "AGENT_UNAVAILABLE");
    assert!(
        run.error
            .as_ref()
            .unwrap()
            .message
            .contains("step second: down"),
        "{:?}",
        run.error
    );
    assert!(
        weft_bus::dlq::list(&bus, None).await.unwrap().is_empty(),
        "a failed run is kept in the journal, not dead-lettered"
    );

    // The dependency is back; a retry runs the failed step again, not the first.
    healthy.store(true, Ordering::SeqCst);
    let retried = store.retry(&run.id, "ada").await.unwrap();
    assert_ne!(retried.status, RunStatus::Failed);
    let done = wait_for_run(&store, "resumable", RunStatus::Completed).await;
    assert_eq!(done.retries, 1);
    assert_eq!(
        done.steps[1].attempts, 3,
        "two failed attempts, then one more"
    );
    assert_eq!(
        done.steps[1].round_attempts(),
        1,
        "attempts start over on retry"
    );
    assert_eq!(done.error, None);
    assert_eq!(
        firsts.load(Ordering::SeqCst),
        1,
        "a completed step ran again"
    );
    assert_eq!(seconds.load(Ordering::SeqCst), 3);
    // Only failed runs are retried.
    assert!(matches!(
        store.retry(&done.id, "ada").await,
        Err(weft_flows::FlowError::NotFailed { .. })
    ));

    // A replay of a failed run's trigger retries it too (`weft replay`).
    healthy.store(false, Ordering::SeqCst);
    let again = bus
        .publish(&"job.queued".parse().unwrap(), json!({"job": 2}))
        .await
        .unwrap();
    let id = weft_flows::run::run_id("resumable", &again.event_id);
    eventually(Duration::from_secs(10), || async {
        let r = store.get("resumable", &id).await.unwrap()?;
        (r.status == RunStatus::Failed).then_some(())
    })
    .await
    .expect("the second run did not fail");
    healthy.store(true, Ordering::SeqCst);
    let failed = store.get("resumable", &id).await.unwrap().unwrap();
    weft_bus::replay::envelope_to_consumer(&bus, "flow_resumable", &failed.trigger, "again-1")
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(10), || async {
        let r = store.get("resumable", &id).await.unwrap()?;
        (r.status == RunStatus::Completed).then_some(r)
    })
    .await
    .expect("the replayed trigger did not retry its failed run");
    assert_eq!(done.retries, 1);
    handle.stop().await;
}

#[tokio::test]
async fn steps_wait_for_an_open_circuit_instead_of_spending_attempts() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let _svc = Service::new("fragile", "1.0.0")
        .endpoint(Endpoint::new("call", move |_r: Request| {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(
                        ErrorPayload::new(weft_bus::ErrorCode::AgentUnavailable, "overloaded")
                            .retryable(),
                    )
                } else {
                    Ok(json!("ok"))
                }
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    // One attempt only: a refused call that counted as an attempt would fail its run.
    let flow = Flow::new("careful", "work.item".parse().unwrap())
        .step(Step::invoke("call", "fragile.call".parse().unwrap(), json!({})).max_attempts(1));
    let config = WorkerConfig {
        breaker: weft_bus::middleware::BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_millis(1500),
        },
        ..fast()
    };
    let handle = worker::start(&bus, vec![flow], config).await.unwrap();
    let t: weft_bus::EventType = "work.item".parse().unwrap();
    bus.publish(&t, json!(0)).await.unwrap();
    let store = Runs::open(&bus).await.unwrap();
    // The first call failed: its run failed and the circuit is open now.
    wait_for_run(&store, "careful", RunStatus::Failed).await;
    for i in 1..=3 {
        bus.publish(&t, json!(i)).await.unwrap();
    }
    let completed = eventually(Duration::from_secs(15), || async {
        let runs = store.list(&of("careful")).await.unwrap();
        let done: Vec<Run> = runs
            .into_iter()
            .filter(|r| r.status == RunStatus::Completed)
            .collect();
        (done.len() == 3).then_some(done)
    })
    .await
    .expect("runs refused by the open circuit did not complete after it closed");
    for run in completed {
        assert_eq!(
            run.steps[0].attempts, 1,
            "a refused call counted as an attempt"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "refused calls never reach the service"
    );
    handle.stop().await;
}

#[test]
fn definitions_are_validated() {
    let bad_ref = json!({"name": "f", "trigger": "a", "steps": [
        {"name": "one", "publish": "x", "input": "${steps.two.output}"},
        {"name": "two", "publish": "y"}
    ]});
    let err = Flow::from_json(&bad_ref.to_string()).unwrap_err();
    assert!(err.to_string().contains("not an earlier step"), "{err}");
    let bad_token =
        json!({"name": "f", "trigger": "a b", "steps": [{"name": "one", "publish": "x"}]});
    assert!(Flow::from_json(&bad_token.to_string()).is_err());
    let empty = json!({"name": "f", "trigger": "a", "steps": []});
    assert!(
        Flow::from_json(&empty.to_string())
            .unwrap_err()
            .to_string()
            .contains("at least one step")
    );
    let dup = json!({"name": "f", "trigger": "a", "steps": [{"name": "s", "publish": "x"}, {"name": "s", "publish": "y"}]});
    assert!(Flow::from_json(&dup.to_string()).is_err());
}

#[tokio::test]
async fn a_transform_step_computes_over_the_run_context_and_a_bad_one_fails_the_run() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = Service::new("shop", "1.0.0")
        .endpoint(Endpoint::new("lines", |_r: Request| async move {
            Ok(json!([{"price": 2, "qty": 3}, {"price": 1.5, "qty": 2}]))
        }))
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::from_json(
        &json!({
            "name": "bill",
            "trigger": "order.placed",
            "steps": [
                {"name": "lines", "invoke": "shop.lines"},
                {"name": "total", "transform": "{order: .trigger.payload.id, total: ([.steps.lines.output[] | .price * .qty] | add), note: .input}",
                 "input": "from ${trigger.payload.id}"},
                {"name": "broken", "transform": ".steps.total.output.total.nope", "max_attempts": 3}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    bus.publish(&"order.placed".parse().unwrap(), json!({"id": "o-1"}))
        .await
        .unwrap();
    let store = Runs::open(&bus).await.unwrap();
    let run = wait_for_run(&store, "bill", RunStatus::Failed).await;
    assert_eq!(run.steps[2].status, StepStatus::Failed { attempt: 1 });
    assert_eq!(
        run.steps[1].output,
        Some(json!({"order": "o-1", "total": 9.0, "note": "from o-1"}))
    );
    // A jq error is not retried: the expression gives the same answer every time.
    assert_eq!(run.steps[2].attempts, 1, "{:?}", run.steps[2]);
    let error = run.steps[2].error.as_ref().unwrap();
    assert!(error.message.contains("cannot"), "{error}");
    handle.stop().await;
}

#[test]
fn transform_expressions_are_checked_when_the_flow_loads() {
    let bad = json!({"name": "f", "trigger": "a", "steps": [{"name": "t", "transform": "[.a |"}]});
    let err = Flow::from_json(&bad.to_string()).unwrap_err().to_string();
    assert!(err.contains("does not parse"), "{err}");
    let unknown =
        json!({"name": "f", "trigger": "a", "steps": [{"name": "t", "transform": "env.HOME"}]});
    assert!(
        Flow::from_json(&unknown.to_string()).is_err(),
        "env is not offered"
    );
}
