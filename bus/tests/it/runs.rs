//! The journal of durable runs against a real nats-server: appends are stored once,
//! a run id starts once, two drivers of one run cannot both append, and the entries
//! fold back into the run's state.

use serde_json::json;
use weft_bus::envelope::{ErrorCode, ErrorPayload};
use weft_bus::runs::entry::RUN_STEP;
use weft_bus::runs::{
    AppendError, Entry, EntryEvent, Journal, RunKind, RunRef, RunStatus, StepStatus,
};
use weft_bus::testing::TestServer;

fn started(run: &RunRef) -> Entry {
    Entry::of_run(
        run,
        1,
        EntryEvent::RunStarted {
            cause: "manual".into(),
            input: json!({"n": 1}),
            definition: json!({"steps": ["a"]}),
        },
    )
}

fn step_started(run: &RunRef, attempt: u32) -> Entry {
    Entry::new(
        run,
        "a",
        attempt,
        EntryEvent::StepStarted {
            input: json!(null),
            idempotency_key: "k-a".into(),
        },
    )
}

#[tokio::test]
async fn appends_are_stored_once_and_a_run_id_starts_once() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let journal = Journal::open(&bus).await.unwrap();
    let run = RunRef::new(RunKind::Flow, "f", "run-1").unwrap();

    let first = journal.append(&started(&run), Some(0)).await.unwrap();
    assert!(!first.duplicate);
    // The same entry again (a retry after a lost ack): a duplicate, same sequence.
    let again = journal.append(&started(&run), Some(0)).await.unwrap();
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.seq, first.seq);
    // Another start of the same run id with other content is still one run.
    let mut other = started(&run);
    other.event = EntryEvent::RunStarted {
        cause: "event".into(),
        input: json!({"n": 2}),
        definition: json!({}),
    };
    let other = journal.append(&other, Some(0)).await.unwrap();
    assert!(other.duplicate);
    let entries = journal.read(&run).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1.event, started(&run).event);
}

#[tokio::test]
async fn two_drivers_cannot_both_append_and_entries_fold_into_the_state() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let journal = Journal::open(&bus).await.unwrap();
    let run = RunRef::new(RunKind::Agent, "support", "run-2").unwrap();
    let s0 = journal.append(&started(&run), Some(0)).await.unwrap().seq;
    let s1 = journal
        .append(&step_started(&run, 1), Some(s0))
        .await
        .unwrap()
        .seq;

    // Driver A completes the step; driver B, which folded the same entries, tries to
    // fail it: B must fold again.
    let done = Entry::new(
        &run,
        "a",
        1,
        EntryEvent::StepCompleted {
            output: json!({"ok": true}),
            duration_ms: 5,
        },
    );
    let s2 = journal.append(&done, Some(s1)).await.unwrap().seq;
    let failed = Entry::new(
        &run,
        "a",
        1,
        EntryEvent::StepFailed {
            error: ErrorPayload::new(ErrorCode::AgentTimeout, "slow"),
            retry_at: None,
        },
    );
    match journal.append(&failed, Some(s1)).await {
        Err(AppendError::Conflict { expected, .. }) => assert_eq!(expected, s1),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A's own retry of its append (a lost ack) is a duplicate, not a conflict.
    let retried = journal.append(&done, Some(s1)).await.unwrap();
    assert!(retried.duplicate && retried.seq == s2, "{retried:?}");

    // An action from outside the driver appends after whatever came before.
    let end = Entry::of_run(&run, 1, EntryEvent::RunCompleted { output: json!(1) });
    journal.append(&end, None).await.unwrap();

    let state = journal.state(&run).await.unwrap().expect("the run exists");
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.step("a"), StepStatus::Completed);
    assert_eq!(state.outputs, [("a".to_owned(), json!({"ok": true}))]);
    assert_eq!(state.cause, "manual");
    assert_eq!(state.steps.len(), 1);
    assert!(state.last_seq > s2);
    // Unknown runs have no state; entries of other runs are not mixed in.
    let none = RunRef::new(RunKind::Agent, "support", "run-x").unwrap();
    assert!(journal.state(&none).await.unwrap().is_none());
    assert!(
        journal
            .read(&run)
            .await
            .unwrap()
            .iter()
            .all(|(_, e)| e.run == run && (e.step == "a" || e.step == RUN_STEP))
    );
}
