//! Durable execution (DESIGN §15) against a real nats-server: timers, waits, approvals,
//! cancel, manual and cron starts, retry policies, failure handling and versions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_bus::ErrorPayload;
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::{TestServer, eventually};
use weft_flows::worker;
use weft_flows::{Decision, Flow, OnFailure, RunStatus, Runs, Schedule, Step, StepStatus};

use super::{fast, of, quick_retry};

async fn finished(runs: &Runs, id: &str) -> weft_flows::Run {
    let run = runs
        .wait(id, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    if !run.status.is_terminal() {
        let entries: Vec<String> = runs
            .entries(&run.reference())
            .await
            .unwrap()
            .iter()
            .map(|(seq, e)| {
                format!(
                    "{seq} {} {} #{} by {:?}",
                    e.step,
                    e.event.name(),
                    e.attempt,
                    e.by
                )
            })
            .collect();
        panic!("run {id} did not end; its journal:\n{}", entries.join("\n"));
    }
    run
}

async fn waiting(runs: &Runs, id: &str, step: &str) -> weft_flows::Run {
    eventually(Duration::from_secs(10), || async {
        let run = runs.find(id).await.unwrap()?;
        matches!(run.step(step)?.status, StepStatus::Waiting { .. }).then_some(run)
    })
    .await
    .unwrap_or_else(|| panic!("step {step} of run {id} never waited"))
}

fn counter_service(name: &str, calls: Arc<AtomicUsize>) -> Service {
    Service::new(name, "1.0.0").endpoint(Endpoint::new("hit", move |r: Request| {
        let c = calls.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(json!({"echo": r.payload().clone()}))
        }
    }))
}

#[tokio::test]
async fn a_durable_sleep_holds_no_delivery_and_survives_a_worker_restart() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let _svc = counter_service("after", calls.clone())
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::manual("napper")
        .step(Step::sleep("nap", Duration::from_secs(3)))
        .step(Step::invoke(
            "then",
            "after.hit".parse().unwrap(),
            json!("${trigger.payload}"),
        ));
    let handle = worker::start(&bus, vec![flow.clone()], fast())
        .await
        .unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let started = Instant::now();
    let s = runs.start("napper", json!({"n": 1})).await.unwrap();
    let run = waiting(&runs, &s.run_id, "nap").await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(run.cause, "manual");
    assert_eq!(
        run.step("nap").unwrap().waiting_for.as_deref(),
        Some("sleep")
    );
    assert!(run.step("nap").unwrap().until.is_some());
    // Nobody holds the run while it sleeps: the worker goes away and another comes.
    handle.stop().await;
    let consumer = bus
        .jetstream()
        .get_stream(&bus.names().runq_stream)
        .await
        .unwrap()
        .consumer_info("run_napper")
        .await
        .unwrap();
    assert_eq!(
        consumer.num_ack_pending, 0,
        "a sleeping run holds a delivery"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    let run = finished(&runs, &s.run_id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(run.output, Some(json!({"echo": {"n": 1}})));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    handle.stop().await;
}

#[tokio::test]
async fn approvals_resume_on_a_decision_and_take_their_default_after_the_timeout() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let _svc = counter_service("ship", calls.clone())
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::manual("refund")
        .step(Step::approval(
            "ok",
            json!("Refund ${trigger.payload.amount}?"),
            Duration::from_secs(3600),
            Decision::Deny,
        ))
        .step(Step::invoke(
            "pay",
            "ship.hit".parse().unwrap(),
            json!("${steps.ok.output}"),
        ));
    let lenient = Flow::manual("lenient")
        .step(Step::approval(
            "ok",
            json!("?"),
            Duration::from_secs(3),
            Decision::Approve,
        ))
        .step(Step::invoke("pay", "ship.hit".parse().unwrap(), json!({})));
    let strict = Flow::manual("strict").step(Step::approval(
        "ok",
        json!("?"),
        Duration::from_secs(3),
        Decision::Deny,
    ));
    let handle = worker::start(&bus, vec![flow, lenient, strict], fast())
        .await
        .unwrap();
    let runs = Runs::open(&bus).await.unwrap();

    let yes = runs.start("refund", json!({"amount": 30})).await.unwrap();
    let no = runs.start("refund", json!({"amount": 9000})).await.unwrap();
    let run = waiting(&runs, &yes.run_id, "ok").await;
    assert_eq!(run.step("ok").unwrap().input, Some(json!("Refund 30?")));
    waiting(&runs, &no.run_id, "ok").await;
    runs.approve(&yes.run_id, "ok", "ada", None).await.unwrap();
    runs.approve(&no.run_id, "ok", "bob", Some("too much"))
        .await
        .unwrap();
    let approved = finished(&runs, &yes.run_id).await;
    assert_eq!(approved.status, RunStatus::Completed);
    assert_eq!(
        approved.step("ok").unwrap().output.as_ref().unwrap()["by"],
        "ada"
    );
    let denied = finished(&runs, &no.run_id).await;
    assert_eq!(denied.status, RunStatus::Failed);
    let error = denied.error.as_ref().unwrap();
    assert_eq!(error.code.as_str(), "DENIED");
    assert!(error.message.contains("denied by bob: too much"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a denied refund was paid");
    // A decided step is not decided again.
    assert!(matches!(
        runs.approve(&yes.run_id, "ok", "eve", None).await,
        Err(weft_flows::FlowError::NotWaiting { .. })
    ));

    // Nobody decides: the defaults.
    let a = runs.start("lenient", json!({})).await.unwrap();
    let d = runs.start("strict", json!({})).await.unwrap();
    let a = finished(&runs, &a.run_id).await;
    assert_eq!(a.status, RunStatus::Completed);
    assert_eq!(
        a.step("ok").unwrap().output.as_ref().unwrap()["by"],
        "timeout"
    );
    let d = finished(&runs, &d.run_id).await;
    assert_eq!(d.status, RunStatus::Failed);
    assert!(
        d.error
            .clone()
            .unwrap()
            .message
            .contains("the default is deny")
    );
    handle.stop().await;
}

#[tokio::test]
async fn a_wait_for_event_takes_the_matching_event_and_times_out_without_one() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let flow = Flow::from_json(
        &json!({
            "name": "checkout",
            "trigger": "order.placed",
            "steps": [
                {"name": "paid", "wait_for_event": {
                    "event": "payment.settled",
                    "match": ".event.payload.order == .trigger.payload.order",
                    "timeout": "3s"}},
                {"name": "receipt", "transform": "{order: .trigger.payload.order, amount: .steps.paid.output.payload.amount}"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let t: weft_bus::EventType = "order.placed".parse().unwrap();
    let one = bus.publish(&t, json!({"order": "o-1"})).await.unwrap();
    let two = bus.publish(&t, json!({"order": "o-2"})).await.unwrap();
    let one = weft_flows::run::run_id("checkout", &one.event_id);
    let two = weft_flows::run::run_id("checkout", &two.event_id);
    waiting(&runs, &one, "paid").await;
    waiting(&runs, &two, "paid").await;
    let p: weft_bus::EventType = "payment.settled".parse().unwrap();
    // Another order's payment does not end o-1's wait.
    bus.publish(&p, json!({"order": "o-9", "amount": 1}))
        .await
        .unwrap();
    bus.publish(&p, json!({"order": "o-1", "amount": 42}))
        .await
        .unwrap();
    let done = finished(&runs, &one).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:#?}");
    assert_eq!(done.output, Some(json!({"order": "o-1", "amount": 42})));
    let timed_out = finished(&runs, &two).await;
    assert_eq!(timed_out.status, RunStatus::Failed);
    let error = timed_out.error.clone().unwrap();
    assert_eq!(error.code.as_str(), "TIMEOUT");
    assert!(error.message.contains("payment.settled"), "{error}");
    // Both waits are gone: the one the event ended and the one that timed out.
    let kv = bus.kv(&bus.names().flows_bucket).await.unwrap();
    let left: Vec<(String, Value)> = weft_bus::kv::read_all(&kv, "wait.checkout.").await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    handle.stop().await;
}

#[tokio::test]
async fn a_cancelled_run_stops_waiting_and_an_ended_run_refuses_a_cancel() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let _svc = counter_service("later", calls.clone())
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::manual("slow")
        .step(Step::sleep("nap", Duration::from_secs(3600)))
        .step(Step::invoke(
            "never",
            "later.hit".parse().unwrap(),
            json!({}),
        ));
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let s = runs.start("slow", json!({})).await.unwrap();
    waiting(&runs, &s.run_id, "nap").await;
    runs.cancel(&s.run_id, "ada", "not needed").await.unwrap();
    let run = finished(&runs, &s.run_id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.step("nap").unwrap().status, StepStatus::Cancelled);
    assert!(
        run.error
            .clone()
            .unwrap()
            .message
            .contains("cancelled by ada: not needed")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(matches!(
        runs.cancel(&s.run_id, "ada", "").await,
        Err(weft_flows::FlowError::NotActive { .. })
    ));
    assert!(matches!(
        runs.cancel("no-such-run", "ada", "").await,
        Err(weft_flows::FlowError::NotFound(_))
    ));
    handle.stop().await;
}

#[tokio::test]
async fn retry_on_narrows_the_retried_codes_and_on_failure_continue_goes_on() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let _svc = Service::new("quota", "1.0.0")
        .endpoint(Endpoint::new("limited", move |_r: Request| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err::<Value, _>(ErrorPayload::new(
                    weft_bus::ErrorCode::Other("RATE_LIMITED".into()),
                    "slow down",
                ))
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    // RATE_LIMITED is not retryable by itself; retry_on makes it so, 3 attempts.
    let listed = Flow::manual("listed").step(
        Step::invoke("s", "quota.limited".parse().unwrap(), json!({}))
            .retry(quick_retry())
            .max_attempts(3)
            .retry_on(&["RATE_LIMITED"]),
    );
    // A timeout is retryable by itself, but not in this list: one attempt.
    let unlisted = Flow::manual("unlisted").step(
        Step::invoke("s", "nobody.home".parse().unwrap(), json!({}))
            .timeout(Duration::from_millis(200))
            .retry(quick_retry())
            .max_attempts(3)
            .retry_on(&["RATE_LIMITED"]),
    );
    let onward = Flow::manual("onward")
        .step(
            Step::invoke("optional", "quota.limited".parse().unwrap(), json!({}))
                .on_failure(OnFailure::Continue),
        )
        .step(Step::transform(
            "after",
            weft_flows::expr::Expr::compile("{optional: .steps.optional.output}").unwrap(),
        ));
    let handle = worker::start(&bus, vec![listed, unlisted, onward], fast())
        .await
        .unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let a = runs.start("listed", json!({})).await.unwrap();
    let a = finished(&runs, &a.run_id).await;
    assert_eq!(a.status, RunStatus::Failed);
    assert_eq!(a.steps[0].attempts, 3, "{:#?}", a.steps[0]);
    let b = runs.start("unlisted", json!({})).await.unwrap();
    let b = finished(&runs, &b.run_id).await;
    assert_eq!(b.status, RunStatus::Failed);
    assert_eq!(b.steps[0].attempts, 1);
    let c = runs.start("onward", json!({})).await.unwrap();
    let c = finished(&runs, &c.run_id).await;
    assert_eq!(c.status, RunStatus::Completed);
    assert_eq!(c.steps[0].status, StepStatus::Failed { attempt: 1 });
    assert_eq!(c.output, Some(json!({"optional": null})));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    handle.stop().await;
}

#[tokio::test]
async fn a_run_finishes_on_the_definition_it_started_with() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (v1, v2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let _a = counter_service("old", v1.clone())
        .serve(&bus)
        .await
        .unwrap();
    let _b = counter_service("new", v2.clone())
        .serve(&bus)
        .await
        .unwrap();
    let version = |v: &str, target: &str| {
        Flow::manual("deploy")
            .version(v)
            .step(Step::sleep("wait", Duration::from_secs(2)))
            .step(Step::invoke("call", target.parse().unwrap(), json!({})))
    };
    let first = worker::start(&bus, vec![version("1.0.0", "old.hit")], fast())
        .await
        .unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let old = runs.start("deploy", json!({})).await.unwrap();
    waiting(&runs, &old.run_id, "wait").await;
    first.stop().await;
    let second = worker::start(&bus, vec![version("2.0.0", "new.hit")], fast())
        .await
        .unwrap();
    let new = runs.start("deploy", json!({})).await.unwrap();
    let old = finished(&runs, &old.run_id).await;
    let new = finished(&runs, &new.run_id).await;
    assert_eq!(
        (old.status, old.version.as_str()),
        (RunStatus::Completed, "1.0.0")
    );
    assert_eq!(
        (new.status, new.version.as_str()),
        (RunStatus::Completed, "2.0.0")
    );
    assert_eq!(
        v1.load(Ordering::SeqCst),
        1,
        "the old run used the old step"
    );
    assert_eq!(v2.load(Ordering::SeqCst), 1);
    second.stop().await;
}

#[tokio::test]
async fn a_cron_schedule_starts_one_run_per_tick_with_two_workers() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let _svc = counter_service("tick", calls.clone())
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::manual("every2s")
        .schedule(Schedule::parse("*/2 * * * * *").unwrap())
        .step(Step::invoke("hit", "tick.hit".parse().unwrap(), json!({})));
    let w1 = worker::start(&bus, vec![flow.clone()], fast())
        .await
        .unwrap();
    let w2 = worker::start(&bus, vec![flow], fast()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    w1.stop().await;
    w2.stop().await;
    let runs = Runs::open(&bus).await.unwrap();
    let all = runs.list(&of("every2s")).await.unwrap();
    // Ticks every 2 s for about 7 s: 3 or 4 of them, each one run, whatever the
    // number of workers.
    assert!((3..=4).contains(&all.len()), "{} runs", all.len());
    assert!(all.iter().all(|r| r.cause == "cron"));
    let done = all
        .iter()
        .filter(|r| r.status == RunStatus::Completed)
        .count();
    assert!(done >= all.len() - 1, "{all:#?}");
    assert_eq!(calls.load(Ordering::SeqCst), done);
    assert!(Schedule::parse("* * *").is_err());
    assert!(Schedule::parse("61 * * * *").is_err());
}

#[tokio::test]
async fn branches_choose_steps_parallel_steps_join_and_a_sub_flow_returns_its_output() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let _svc = Service::new("quotes", "1.0.0")
        .endpoint(Endpoint::new("fast", |r: Request| async move {
            Ok(json!({"from": "fast", "item": r.payload()["item"].clone()}))
        }))
        .endpoint(Endpoint::new("slow", move |_r: Request| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(json!({"from": "slow"}))
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    let router = Flow::from_json(
        &json!({
            "name": "router",
            "steps": [
                {"name": "route", "branch": {"if": ".trigger.payload.urgent == true", "then": ["page"], "else": ["queue"]}},
                {"name": "page", "transform": "\"paged\""},
                {"name": "queue", "transform": "\"queued\""},
                {"name": "always", "transform": "[.steps.page.output, .steps.queue.output]"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let fanout = Flow::from_json(
        &json!({
            "name": "fanout",
            "steps": [
                {"name": "both", "parallel": {"steps": ["a", "b"]}},
                {"name": "a", "invoke": "quotes.fast", "input": {"item": "${trigger.payload.item}"}},
                {"name": "b", "transform": ".trigger.payload.item | ascii_upcase"},
                {"name": "race", "parallel": {"steps": ["quick", "lazy"], "join": "first"}},
                {"name": "quick", "invoke": "quotes.fast", "input": {}},
                {"name": "lazy", "invoke": "quotes.slow", "input": {}},
                {"name": "child", "sub_flow": {"flow": "router", "timeout": "30s"}, "input": {"urgent": true}},
                {"name": "sum", "transform": "{both: .steps.both.output, race: .steps.race.output.step, child: .steps.child.output}"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let handle = worker::start(&bus, vec![router, fanout], fast())
        .await
        .unwrap();
    let runs = Runs::open(&bus).await.unwrap();

    let calm = runs
        .start("router", json!({"urgent": false}))
        .await
        .unwrap();
    let calm = finished(&runs, &calm.run_id).await;
    assert_eq!(calm.status, RunStatus::Completed);
    assert_eq!(calm.step("page").unwrap().status, StepStatus::Skipped);
    assert_eq!(calm.output, Some(json!([null, "queued"])));

    let started = Instant::now();
    let f = runs.start("fanout", json!({"item": "tea"})).await.unwrap();
    let f = finished(&runs, &f.run_id).await;
    assert_eq!(f.status, RunStatus::Completed, "{f:#?}");
    assert_eq!(
        f.output,
        Some(json!({
            "both": {"a": {"from": "fast", "item": "tea"}, "b": "TEA"},
            "race": "quick",
            "child": ["paged", null]
        }))
    );
    assert_eq!(f.step("lazy").unwrap().status, StepStatus::Skipped);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "join first waited for the slow step: {:?}",
        started.elapsed()
    );
    // The child is a run of its own, started by the step.
    let children = runs.list(&of("router")).await.unwrap();
    assert_eq!(children.len(), 2);
    assert!(
        children
            .iter()
            .any(|r| r.trigger.metadata.contains_key("weft.flow.parent"))
    );
    assert!(calls.load(Ordering::SeqCst) <= 1);

    // Definitions that cannot run are refused.
    let bad = |steps: Value| Flow::from_json(&json!({"name": "x", "steps": steps}).to_string());
    let err =
        bad(json!([{"name": "p", "parallel": {"steps": ["nap"]}}, {"name": "nap", "sleep": "1s"}]))
            .unwrap_err()
            .to_string();
    assert!(err.contains("cannot run in parallel"), "{err}");
    let err = bad(json!([{"name": "a", "transform": "1"}, {"name": "b", "branch": {"if": "true", "then": ["a"]}}]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a later step"), "{err}");
    handle.stop().await;
}

#[tokio::test]
async fn a_concurrency_key_of_one_serializes_its_runs_while_other_keys_run_side_by_side() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    type Spans = Arc<std::sync::Mutex<Vec<(String, Instant, Instant)>>>;
    let spans: Spans = Arc::default();
    let s = spans.clone();
    let _svc = Service::new("work", "1.0.0")
        .endpoint(Endpoint::new("slow", move |r: Request| {
            let s = s.clone();
            async move {
                let customer = r.payload()["customer"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(400)).await;
                s.lock().unwrap().push((customer, start, Instant::now()));
                Ok(json!("done"))
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::manual("orders")
        .concurrency(json!("${trigger.payload.customer}"), 1)
        .step(Step::invoke(
            "work",
            "work.slow".parse().unwrap(),
            json!("${trigger.payload}"),
        ));
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let mut ids = Vec::new();
    for customer in ["ada", "bob", "ada", "bob", "ada", "bob"] {
        ids.push(
            runs.start("orders", json!({"customer": customer}))
                .await
                .unwrap()
                .run_id,
        );
    }
    for id in &ids {
        let run = finished(&runs, id).await;
        assert_eq!(run.status, RunStatus::Completed, "{run:#?}");
    }
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 6);
    let of_key = |c: &str| {
        let mut v: Vec<(Instant, Instant)> = spans
            .iter()
            .filter(|(k, _, _)| k == c)
            .map(|(_, a, b)| (*a, *b))
            .collect();
        v.sort();
        v
    };
    for c in ["ada", "bob"] {
        let v = of_key(c);
        for pair in v.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "two runs of {c} overlapped");
        }
    }
    // The two keys ran side by side: all six took about three runs' time, not six.
    let first = spans.iter().map(|(_, a, _)| *a).min().unwrap();
    let last = spans.iter().map(|(_, _, b)| *b).max().unwrap();
    assert!(
        last - first < Duration::from_millis(2200),
        "{:?}",
        last - first
    );
    let slotted = runs
        .list(&of("orders"))
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r.step("_slot")
                .is_some_and(|s| s.status == StepStatus::Completed)
        })
        .count();
    assert_eq!(slotted, 6, "every run took its slot through the journal");
    handle.stop().await;
}

#[tokio::test]
async fn runs_of_the_kv_checkpoints_of_earlier_releases_are_migrated_into_the_journal_once() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let _svc = counter_service("old", calls.clone())
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::new("legacy", "legacy.go".parse().unwrap())
        .step(Step::invoke("one", "old.hit".parse().unwrap(), json!(1)))
        .step(Step::invoke(
            "two",
            "old.hit".parse().unwrap(),
            json!("${steps.one.output}"),
        ));
    // Two runs as the KV checkpoints of the last release held them: one half done
    // (its trigger still unacked), one completed.
    let kv = bus.kv(&bus.names().flows_bucket).await.unwrap();
    let trigger = weft_bus::Envelope::event(&"legacy.go".parse().unwrap(), json!({"n": 1}));
    let running = weft_flows::run::run_id("legacy", &trigger.event_id);
    let done_trigger = weft_bus::Envelope::event(&"legacy.go".parse().unwrap(), json!({"n": 2}));
    let done = weft_flows::run::run_id("legacy", &done_trigger.event_id);
    let legacy = |id: &str, trigger: &weft_bus::Envelope, status: &str, two: &str| {
        json!({
            "id": id, "flow": "legacy", "trigger_event_id": trigger.event_id,
            "status": status, "created_at": "2026-11-30T10:00:00.000Z",
            "updated_at": "2026-11-30T10:00:01.000Z", "trigger": trigger,
            "steps": [
                {"name": "one", "status": "completed", "attempts": 1, "output": {"echo": 1}},
                {"name": "two", "status": two, "attempts": if two == "pending" { 0 } else { 1 },
                 "output": if two == "completed" { json!({"echo": "x"}) } else { json!(null) }}
            ]
        })
    };
    for (id, t, status, two) in [
        (&running, &trigger, "running", "pending"),
        (&done, &done_trigger, "completed", "completed"),
    ] {
        kv.put(
            format!("legacy.{id}"),
            serde_json::to_vec(&legacy(id, t, status, two))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    }
    // Two workers start at once: each run is migrated once.
    let (w1, w2) = tokio::join!(
        worker::start(&bus, vec![flow.clone()], fast()),
        worker::start(&bus, vec![flow], fast())
    );
    let (w1, w2) = (w1.unwrap(), w2.unwrap());
    let runs = Runs::open(&bus).await.unwrap();
    let migrated = runs.get("legacy", &done).await.unwrap().unwrap();
    assert_eq!(
        (migrated.status, migrated.cause.as_str()),
        (RunStatus::Completed, "migration")
    );
    assert_eq!(migrated.output, Some(json!({"echo": "x"})));
    let half = runs.get("legacy", &running).await.unwrap().unwrap();
    assert_eq!(half.status, RunStatus::Running);
    assert_eq!(half.step("one").unwrap().status, StepStatus::Completed);
    let entries = runs.entries(&half.reference()).await.unwrap();
    assert_eq!(
        entries.len(),
        3,
        "started, one started, one completed: written once"
    );
    // Its trigger comes back (as the unacked delivery would): the run goes on at step
    // two, step one is not called again.
    bus.publish_envelope(&trigger).await.unwrap();
    let run = finished(&runs, &running).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:#?}");
    assert_eq!(run.output, Some(json!({"echo": {"echo": 1}})));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only step two ran");
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test]
async fn a_debounce_runs_once_with_the_last_trigger_and_a_rate_limit_cancels_the_excess() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let quiet = Flow::from_json(
        &json!({
            "name": "quiet",
            "trigger": "doc.edited",
            "debounce": {"key": "${trigger.payload.doc}", "period": "2s"},
            "steps": [{"name": "save", "transform": ".trigger.payload"}]
        })
        .to_string(),
    )
    .unwrap();
    let limited = Flow::from_json(
        &json!({
            "name": "limited",
            "trigger": "mail.send",
            "rate_limit": {"key": "${trigger.payload.to}", "limit": 2, "period": "1h"},
            "steps": [{"name": "send", "transform": ".trigger.payload.n"}]
        })
        .to_string(),
    )
    .unwrap();
    let handle = worker::start(&bus, vec![quiet, limited], fast())
        .await
        .unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let edited: weft_bus::EventType = "doc.edited".parse().unwrap();
    for (doc, v) in [("a", 1), ("b", 1), ("a", 2), ("a", 3)] {
        bus.publish(&edited, json!({"doc": doc, "v": v}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        runs.list(&of("quiet")).await.unwrap().is_empty(),
        "a run started inside the quiet period"
    );
    let quiet = eventually(Duration::from_secs(10), || async {
        let all = runs.list(&of("quiet")).await.unwrap();
        (all.len() == 2 && all.iter().all(|r| r.status == RunStatus::Completed)).then_some(all)
    })
    .await
    .expect("the debounced runs did not complete");
    let mut outputs: Vec<Value> = quiet.iter().map(|r| r.output.clone().unwrap()).collect();
    outputs.sort_by_key(|o| o["doc"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        outputs,
        [json!({"doc": "a", "v": 3}), json!({"doc": "b", "v": 1})]
    );
    assert!(quiet.iter().all(|r| r.cause == "debounce"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        runs.list(&of("quiet")).await.unwrap().len(),
        2,
        "one run per key"
    );

    let mail: weft_bus::EventType = "mail.send".parse().unwrap();
    for n in 0..4 {
        bus.publish(&mail, json!({"to": "ada", "n": n}))
            .await
            .unwrap();
    }
    bus.publish(&mail, json!({"to": "bob", "n": 9}))
        .await
        .unwrap();
    let all = eventually(Duration::from_secs(10), || async {
        let all = runs.list(&of("limited")).await.unwrap();
        let bob = all
            .iter()
            .any(|r| r.trigger.payload.as_ref().unwrap()["to"] == "bob");
        (all.len() == 5 && bob && all.iter().all(|r| r.status.is_terminal())).then_some(all)
    })
    .await
    .expect("the limited runs did not end");
    let completed = all
        .iter()
        .filter(|r| r.status == RunStatus::Completed)
        .count();
    let refused: Vec<_> = all
        .iter()
        .filter(|r| r.status == RunStatus::Cancelled)
        .collect();
    assert_eq!((completed, refused.len()), (3, 2), "{all:#?}");
    for r in refused {
        assert_eq!(r.trigger.payload.as_ref().unwrap()["to"], "ada");
        assert!(
            r.error
                .as_ref()
                .unwrap()
                .message
                .contains("rate limited: 2 runs per 1h"),
            "{:?}",
            r.error
        );
    }
    // A manual start is not limited.
    let s = runs
        .start("limited", json!({"to": "ada", "n": 5}))
        .await
        .unwrap();
    assert_eq!(
        finished(&runs, &s.run_id).await.status,
        RunStatus::Completed
    );
    handle.stop().await;
}

/// A saga: `reserve` and `charge` complete, `ship` fails for good with `on_failure:
/// compensate`, so `refund` (compensating `charge`) and then `release` (compensating
/// `reserve`) run, latest first, and the run fails with `ship`'s error. A compensation
/// never runs in the flow's order, a run that did not get as far runs only the
/// compensations of what it did, and a compensated run is not retried.
#[tokio::test]
async fn a_step_failing_with_compensate_undoes_the_completed_steps_latest_first() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let order: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let endpoint = |name: &'static str, fail: bool| {
        let order = order.clone();
        Endpoint::new(name, move |r: Request| {
            order.lock().unwrap().push(name.to_owned());
            let fail = fail || r.payload()["fail_at"] == name;
            async move {
                if fail {
                    Err(ErrorPayload::invalid_request(format!("{name} refused")))
                } else {
                    Ok(json!({"done": name}))
                }
            }
        })
    };
    let _svc = Service::new("shop", "1.0.0")
        .endpoint(endpoint("reserve", false))
        .endpoint(endpoint("release", false))
        .endpoint(endpoint("charge", false))
        .endpoint(endpoint("refund", false))
        .endpoint(endpoint("ship", false))
        .serve(&bus)
        .await
        .unwrap();
    let step = |name: &str, endpoint: &str| {
        Step::invoke(
            name,
            format!("shop.{endpoint}").parse().unwrap(),
            json!("${trigger.payload}"),
        )
        .on_failure(OnFailure::Compensate)
    };
    let flow = Flow::manual("order")
        .step(step("reserve", "reserve"))
        .step(step("release", "release").compensates("reserve"))
        .step(step("charge", "charge"))
        .step(step("refund", "refund").compensates("charge"))
        .step(step("ship", "ship"));
    flow.validate().unwrap();
    let handle = worker::start(&bus, vec![flow], fast()).await.unwrap();
    let runs = Runs::open(&bus).await.unwrap();

    // Everything works: no compensation runs.
    let ok = runs.start("order", json!({})).await.unwrap();
    let run = finished(&runs, &ok.run_id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(*order.lock().unwrap(), ["reserve", "charge", "ship"]);
    assert!(
        run.step("refund")
            .is_none_or(|s| s.status == StepStatus::Pending)
    );

    // `ship` fails for good: refund, then release.
    order.lock().unwrap().clear();
    let bad = runs
        .start("order", json!({"fail_at": "ship"}))
        .await
        .unwrap();
    let run = finished(&runs, &bad.run_id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.compensated);
    assert_eq!(
        *order.lock().unwrap(),
        ["reserve", "charge", "ship", "refund", "release"]
    );
    let error = run.error.clone().unwrap();
    assert!(error.message.contains("ship refused"), "{error:?}");
    assert_eq!(run.step("refund").unwrap().status, StepStatus::Completed);
    assert_eq!(run.step("release").unwrap().status, StepStatus::Completed);
    let e = runs.retry(&bad.run_id, "ada").await.unwrap_err();
    assert!(e.to_string().contains("compensation steps undid"), "{e}");

    // `charge` fails: only `reserve` completed, so only `release` runs.
    order.lock().unwrap().clear();
    let early = runs
        .start("order", json!({"fail_at": "charge"}))
        .await
        .unwrap();
    let run = finished(&runs, &early.run_id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(*order.lock().unwrap(), ["reserve", "charge", "release"]);
    handle.stop().await;
}

#[test]
fn compensations_are_checked_when_the_flow_loads() {
    let base = || Flow::manual("f").step(Step::invoke("a", "s.a".parse().unwrap(), json!(null)));
    let undo =
        |of: &str| Step::invoke("undo", "s.undo".parse().unwrap(), json!(null)).compensates(of);
    for (flow, says) in [
        (base().step(undo("nope")), "which is not a step"),
        (
            Flow::manual("f").step(undo("a")).step(Step::invoke(
                "a",
                "s.a".parse().unwrap(),
                json!(null),
            )),
            "must be an earlier step",
        ),
        (
            base().step(Step::sleep("undo", Duration::from_secs(1)).compensates("a")),
            "cannot be a compensation",
        ),
        (
            base()
                .step(undo("a"))
                .step(Step::invoke("undo2", "s.u".parse().unwrap(), json!(null)).compensates("a")),
            "has two compensations",
        ),
    ] {
        let e = flow.validate().unwrap_err().to_string();
        assert!(e.contains(says), "{e} should say {says}");
    }
}
