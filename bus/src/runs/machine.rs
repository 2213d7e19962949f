//! The state machines of a durable run and of each of its steps (DESIGN §15): named
//! states, named inputs, and one transition table each. Anything not in a table is an
//! [`InvalidTransition`], never a silent change.
//!
//! # A run
//!
//! ```text
//!                      run.started
//!                           │
//!                           ▼
//!    ┌─────────────────  Running  ◀──────── Resume ──────────┐
//!    │          │          │   │                              │
//!    │ Complete │ Fail     │   └────────── Wait ──────▶  Waiting
//!    ▼          ▼          │ FailCompensating                 │
//! Completed   Failed ◀─────┼──── CompensationsDone ── Compensating
//!               │          │                                   │
//!               │ Retry    │ CancelRequested (also from Waiting)
//!               ▼          ▼
//!            Running   Cancelling ── Cancelled ──▶ Cancelled
//! ```
//!
//! | from | input | to |
//! |---|---|---|
//! | `Running` | `Wait` (timer, event, approval, child run, slot) | `Waiting` |
//! | `Waiting` | `Resume` | `Running` |
//! | `Running` | `Complete` | `Completed` |
//! | `Running` | `Fail` | `Failed` |
//! | `Running` | `FailCompensating` | `Compensating` |
//! | `Compensating` | `CompensationsDone` | `Failed` |
//! | `Running` | `CancelRequested` | `Cancelling` |
//! | `Waiting` | `CancelRequested` | `Cancelling` |
//! | `Cancelling` | `Cancelled` | `Cancelled` |
//! | `Failed` | `Retry` | `Running` |
//!
//! `Completed` and `Cancelled` are terminal; `Failed` is terminal too, except that a
//! retry (`weft flow retry`) resumes it from the failed step.
//!
//! # A step (per attempt)
//!
//! ```text
//! Pending ─Start─▶ Running(a) ─Complete─▶ Completed
//!    │               │  ├─Fail{retry}─▶ Backoff(a) ─RetryDue─▶ Running(a+1)
//!    │ Skip          │  └─Fail{give up}─▶ Failed ─Retry─▶ Running(a+1)
//!    ▼               └─Wait─▶ Waiting(a) ─Complete─▶ Completed
//! Skipped                        └─Fail{give up}─▶ Failed
//! Pending, Running, Backoff, Waiting ─Cancel─▶ Cancelled
//! Running(a) ─Takeover (its worker's lease ran out)─▶ Running(a+1)
//! Running(a) ─Skip (a parallel join took another step's result)─▶ Skipped
//! ```
//!
//! The tests generate one test per row of each table, and check that every pair of
//! state and input not in a table is refused.

use serde::{Deserialize, Serialize};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A step is being carried out.
    Running,
    /// Waiting without a worker: a timer, an event, an approval, a child run, a slot.
    Waiting,
    /// A cancel was asked for; compensations (if any) are running.
    Cancelling,
    /// A step failed for good and its compensations are running.
    Compensating,
    /// Every step is done.
    Completed,
    /// A step failed for good; a retry resumes it.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunStatus {
    /// Every status, for tests and listings.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Cancelling,
        RunStatus::Compensating,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// `running`, `waiting`, `cancelling`, `compensating`, `completed`, `failed` or
    /// `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Cancelling => "cancelling",
            RunStatus::Compensating => "compensating",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the run ended (`completed`, `failed` or `cancelled`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// What happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunInput {
    /// A step waits (timer set, wait started, approval requested, child started,
    /// slot waited for).
    Wait,
    /// What it waited for happened.
    Resume,
    /// The last step completed.
    Complete,
    /// A step failed for good, with nothing to compensate.
    Fail,
    /// A step failed for good, and compensation steps run.
    FailCompensating,
    /// The compensation steps finished.
    CompensationsDone,
    /// Someone asked to cancel the run.
    CancelRequested,
    /// The cancellation finished.
    Cancelled,
    /// Someone asked to resume a failed run from its failed step.
    Retry,
}

impl RunInput {
    /// Every input, for tests.
    pub const ALL: [RunInput; 9] = [
        RunInput::Wait,
        RunInput::Resume,
        RunInput::Complete,
        RunInput::Fail,
        RunInput::FailCompensating,
        RunInput::CompensationsDone,
        RunInput::CancelRequested,
        RunInput::Cancelled,
        RunInput::Retry,
    ];
}

/// A run's transitions: (from, input, to). The only source of truth: [`RunStatus::on`]
/// reads it.
pub const RUN_TRANSITIONS: [(RunStatus, RunInput, RunStatus); 10] = {
    use RunInput as I;
    use RunStatus as S;
    [
        (S::Running, I::Wait, S::Waiting),
        (S::Waiting, I::Resume, S::Running),
        (S::Running, I::Complete, S::Completed),
        (S::Running, I::Fail, S::Failed),
        (S::Running, I::FailCompensating, S::Compensating),
        (S::Compensating, I::CompensationsDone, S::Failed),
        (S::Running, I::CancelRequested, S::Cancelling),
        (S::Waiting, I::CancelRequested, S::Cancelling),
        (S::Cancelling, I::Cancelled, S::Cancelled),
        (S::Failed, I::Retry, S::Running),
    ]
};

/// A transition that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: {input} in state {from}")]
pub struct InvalidTransition {
    /// The state, e.g. `completed`.
    pub from: String,
    /// The input, e.g. `wait`.
    pub input: String,
}

fn name(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl RunStatus {
    /// The status after `input`.
    ///
    /// # Errors
    /// [`InvalidTransition`] when [`RUN_TRANSITIONS`] has no such row.
    pub fn on(self, input: RunInput) -> Result<RunStatus, InvalidTransition> {
        RUN_TRANSITIONS
            .iter()
            .find(|(from, i, _)| *from == self && *i == input)
            .map(|(_, _, to)| *to)
            .ok_or_else(|| InvalidTransition {
                from: name(self),
                input: name(input),
            })
    }
}

/// Where one step is; the attempt counts from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Attempt `attempt` is being carried out.
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// Attempt `attempt` failed and the next one waits for its retry delay.
    Backoff {
        /// The attempt that failed.
        attempt: u32,
    },
    /// Attempt `attempt` waits (sleep, event, approval, child run).
    Waiting {
        /// The attempt.
        attempt: u32,
    },
    /// Done, with its output in the journal.
    Completed,
    /// Failed for good.
    Failed {
        /// The last attempt.
        attempt: u32,
    },
    /// Cancelled with its run.
    Cancelled,
    /// Not taken (a branch chose other steps).
    Skipped,
}

/// What happens to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepInput {
    /// The first attempt starts.
    Start,
    /// The attempt finished (or what it waited for came).
    Complete,
    /// The attempt failed and another follows after the retry delay.
    FailRetrying,
    /// The attempt failed for good (not retryable, or the last attempt).
    FailForGood,
    /// The retry delay passed: the next attempt starts.
    RetryDue,
    /// The attempt waits without a worker.
    Wait,
    /// The run was cancelled.
    Cancel,
    /// A branch did not take it, or a parallel join that takes the first result got
    /// it from another step.
    Skip,
    /// The run is retried from this failed step: the next attempt starts.
    Retry,
    /// The worker running the attempt is gone (its lease ran out): the next attempt
    /// starts, with the same idempotency key.
    Takeover,
}

impl StepInput {
    /// Every input, for tests.
    pub const ALL: [StepInput; 10] = [
        StepInput::Start,
        StepInput::Complete,
        StepInput::FailRetrying,
        StepInput::FailForGood,
        StepInput::RetryDue,
        StepInput::Wait,
        StepInput::Cancel,
        StepInput::Skip,
        StepInput::Retry,
        StepInput::Takeover,
    ];
}

/// The kind of a [`StepStatus`], without its attempt: the rows of
/// [`STEP_TRANSITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// [`StepStatus::Pending`].
    Pending,
    /// [`StepStatus::Running`].
    Running,
    /// [`StepStatus::Backoff`].
    Backoff,
    /// [`StepStatus::Waiting`].
    Waiting,
    /// [`StepStatus::Completed`].
    Completed,
    /// [`StepStatus::Failed`].
    Failed,
    /// [`StepStatus::Cancelled`].
    Cancelled,
    /// [`StepStatus::Skipped`].
    Skipped,
}

impl StepState {
    /// Every state, for tests.
    pub const ALL: [StepState; 8] = [
        StepState::Pending,
        StepState::Running,
        StepState::Backoff,
        StepState::Waiting,
        StepState::Completed,
        StepState::Failed,
        StepState::Cancelled,
        StepState::Skipped,
    ];
}

/// How the attempt changes on a step transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The first attempt (1).
    First,
    /// The same attempt.
    Same,
    /// The next attempt.
    Next,
    /// No attempt (the state has none).
    None,
}

/// A step's transitions: (from, input, to, attempt). [`StepStatus::on`] reads it.
pub const STEP_TRANSITIONS: [(StepState, StepInput, StepState, Attempt); 16] = {
    use Attempt as A;
    use StepInput as I;
    use StepState as S;
    [
        (S::Pending, I::Start, S::Running, A::First),
        (S::Pending, I::Skip, S::Skipped, A::None),
        (S::Pending, I::Cancel, S::Cancelled, A::None),
        (S::Running, I::Complete, S::Completed, A::None),
        (S::Running, I::FailRetrying, S::Backoff, A::Same),
        (S::Running, I::FailForGood, S::Failed, A::Same),
        (S::Running, I::Wait, S::Waiting, A::Same),
        (S::Running, I::Cancel, S::Cancelled, A::None),
        (S::Running, I::Takeover, S::Running, A::Next),
        (S::Running, I::Skip, S::Skipped, A::None),
        (S::Backoff, I::RetryDue, S::Running, A::Next),
        (S::Backoff, I::Cancel, S::Cancelled, A::None),
        (S::Waiting, I::Complete, S::Completed, A::None),
        (S::Waiting, I::FailForGood, S::Failed, A::Same),
        (S::Waiting, I::Cancel, S::Cancelled, A::None),
        (S::Failed, I::Retry, S::Running, A::Next),
    ]
};

impl StepStatus {
    /// Its kind.
    pub fn state(self) -> StepState {
        match self {
            StepStatus::Pending => StepState::Pending,
            StepStatus::Running { .. } => StepState::Running,
            StepStatus::Backoff { .. } => StepState::Backoff,
            StepStatus::Waiting { .. } => StepState::Waiting,
            StepStatus::Completed => StepState::Completed,
            StepStatus::Failed { .. } => StepState::Failed,
            StepStatus::Cancelled => StepState::Cancelled,
            StepStatus::Skipped => StepState::Skipped,
        }
    }

    /// The current attempt (0 for states without one).
    pub fn attempt(self) -> u32 {
        match self {
            StepStatus::Running { attempt }
            | StepStatus::Backoff { attempt }
            | StepStatus::Waiting { attempt }
            | StepStatus::Failed { attempt } => attempt,
            _ => 0,
        }
    }

    /// The status after `input`.
    ///
    /// # Errors
    /// [`InvalidTransition`] when [`STEP_TRANSITIONS`] has no such row.
    pub fn on(self, input: StepInput) -> Result<StepStatus, InvalidTransition> {
        let (_, _, to, attempt) = STEP_TRANSITIONS
            .iter()
            .find(|(from, i, _, _)| *from == self.state() && *i == input)
            .ok_or_else(|| InvalidTransition {
                from: name(self.state()),
                input: name(input),
            })?;
        let attempt = match attempt {
            Attempt::First => 1,
            Attempt::Same => self.attempt(),
            Attempt::Next => self.attempt() + 1,
            Attempt::None => 0,
        };
        Ok(match to {
            StepState::Pending => StepStatus::Pending,
            StepState::Running => StepStatus::Running { attempt },
            StepState::Backoff => StepStatus::Backoff { attempt },
            StepState::Waiting => StepStatus::Waiting { attempt },
            StepState::Completed => StepStatus::Completed,
            StepState::Failed => StepStatus::Failed { attempt },
            StepState::Cancelled => StepStatus::Cancelled,
            StepState::Skipped => StepStatus::Skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test per row of the run table.
    macro_rules! run_transitions {
        ($($test:ident: $from:ident + $input:ident => $to:ident;)*) => {$(
            #[test]
            fn $test() {
                assert_eq!(RunStatus::$from.on(RunInput::$input), Ok(RunStatus::$to));
            }
        )*
            #[test]
            fn the_run_tests_cover_the_table() {
                let tested = [$((RunStatus::$from, RunInput::$input, RunStatus::$to)),*];
                assert_eq!(tested.len(), RUN_TRANSITIONS.len());
                for row in RUN_TRANSITIONS {
                    assert!(tested.contains(&row), "no test for {row:?}");
                }
            }
        };
    }

    run_transitions! {
        running_waits: Running + Wait => Waiting;
        waiting_resumes: Waiting + Resume => Running;
        running_completes: Running + Complete => Completed;
        running_fails: Running + Fail => Failed;
        running_fails_and_compensates: Running + FailCompensating => Compensating;
        compensations_end_in_failed: Compensating + CompensationsDone => Failed;
        running_is_asked_to_cancel: Running + CancelRequested => Cancelling;
        waiting_is_asked_to_cancel: Waiting + CancelRequested => Cancelling;
        cancelling_ends_cancelled: Cancelling + Cancelled => Cancelled;
        failed_is_retried: Failed + Retry => Running;
    }

    /// One test per row of the step table, with the attempt before and after.
    macro_rules! step_transitions {
        ($($test:ident: $from:expr, $input:ident => $to:expr;)*) => {$(
            #[test]
            fn $test() {
                assert_eq!($from.on(StepInput::$input), Ok($to));
            }
        )*
            #[test]
            fn the_step_tests_cover_the_table() {
                let tested = [$(($from.state(), StepInput::$input, $to.state())),*];
                assert_eq!(tested.len(), STEP_TRANSITIONS.len());
                for (from, input, to, _) in STEP_TRANSITIONS {
                    assert!(tested.contains(&(from, input, to)), "no test for {from:?} {input:?}");
                }
            }
        };
    }

    use StepStatus as St;
    step_transitions! {
        pending_starts_attempt_one: St::Pending, Start => St::Running { attempt: 1 };
        pending_is_skipped: St::Pending, Skip => St::Skipped;
        pending_is_cancelled: St::Pending, Cancel => St::Cancelled;
        running_step_completes: St::Running { attempt: 2 }, Complete => St::Completed;
        running_step_fails_into_backoff: St::Running { attempt: 2 }, FailRetrying => St::Backoff { attempt: 2 };
        running_step_fails_for_good: St::Running { attempt: 3 }, FailForGood => St::Failed { attempt: 3 };
        running_step_waits: St::Running { attempt: 1 }, Wait => St::Waiting { attempt: 1 };
        running_step_is_cancelled: St::Running { attempt: 1 }, Cancel => St::Cancelled;
        backoff_starts_the_next_attempt: St::Backoff { attempt: 2 }, RetryDue => St::Running { attempt: 3 };
        backoff_is_cancelled: St::Backoff { attempt: 2 }, Cancel => St::Cancelled;
        waiting_completes: St::Waiting { attempt: 1 }, Complete => St::Completed;
        waiting_times_out_failing: St::Waiting { attempt: 1 }, FailForGood => St::Failed { attempt: 1 };
        waiting_is_cancelled: St::Waiting { attempt: 1 }, Cancel => St::Cancelled;
        failed_is_retried_with_the_next_attempt: St::Failed { attempt: 4 }, Retry => St::Running { attempt: 5 };
        an_orphaned_attempt_is_taken_over: St::Running { attempt: 2 }, Takeover => St::Running { attempt: 3 };
        a_running_step_is_abandoned_when_a_parallel_join_needs_it_no_more: St::Running { attempt: 1 }, Skip => St::Skipped;
    }

    #[test]
    fn every_run_pair_outside_the_table_is_refused() {
        for from in RunStatus::ALL {
            for input in RunInput::ALL {
                let listed = RUN_TRANSITIONS
                    .iter()
                    .any(|(f, i, _)| *f == from && *i == input);
                let result = from.on(input);
                assert_eq!(result.is_ok(), listed, "{from:?} + {input:?}: {result:?}");
            }
        }
        let e = RunStatus::Completed.on(RunInput::Wait).unwrap_err();
        assert_eq!(e.to_string(), "invalid transition: wait in state completed");
    }

    #[test]
    fn every_step_pair_outside_the_table_is_refused() {
        let statuses = [
            St::Pending,
            St::Running { attempt: 1 },
            St::Backoff { attempt: 1 },
            St::Waiting { attempt: 1 },
            St::Completed,
            St::Failed { attempt: 1 },
            St::Cancelled,
            St::Skipped,
        ];
        assert_eq!(statuses.len(), StepState::ALL.len());
        for from in statuses {
            for input in StepInput::ALL {
                let listed = STEP_TRANSITIONS
                    .iter()
                    .any(|(f, i, _, _)| *f == from.state() && *i == input);
                assert_eq!(from.on(input).is_ok(), listed, "{from:?} + {input:?}");
            }
        }
    }

    #[test]
    fn terminal_runs() {
        let terminal: Vec<RunStatus> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                RunStatus::Completed,
                RunStatus::Failed,
                RunStatus::Cancelled
            ]
        );
        // Only a retry leaves a terminal state.
        for (from, input, _) in RUN_TRANSITIONS {
            if from.is_terminal() {
                assert_eq!((from, input), (RunStatus::Failed, RunInput::Retry));
            }
        }
    }
}
