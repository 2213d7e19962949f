//! What `weft flow` and `weft agent` share about runs in the journal: statuses,
//! times, who acts, and how a run's steps print.

use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::runs::{RunStatus, StepRun};

/// A `--status` value.
pub fn parse_status(s: &str) -> Result<RunStatus, String> {
    serde_json::from_value(json!(s)).map_err(|_| {
        format!(
            "{s:?} is not a run status (running, waiting, cancelling, completed, failed, cancelled)"
        )
    })
}

/// `--since D` as the RFC 3339 time D ago.
pub fn since(d: Option<Duration>) -> Option<String> {
    d.map(|d| weft_bus::envelope::rfc3339(time::OffsetDateTime::now_utc() - d))
}

/// Who acts, for the journal: `$USER`, else `cli`.
pub fn actor() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".into())
}

/// Prints each step: status, attempts, input, output, error, times, what it waits for.
pub fn print_steps(steps: &[StepRun]) {
    for s in steps {
        let st = json!(s.status.state());
        println!(
            "\n  {} [{}] attempts {}",
            s.name,
            st.as_str().unwrap_or("?"),
            s.attempts
        );
        let line = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                println!("    {k:<9}{v}");
            }
        };
        line("input", s.input.as_ref().map(Value::to_string));
        line("output", s.output.as_ref().map(Value::to_string));
        line("error", s.error.as_ref().map(ToString::to_string));
        line("started", s.started_at.clone());
        line("finished", s.finished_at.clone());
        line("took", s.duration_ms.map(|ms| format!("{ms} ms")));
        line("waits for", s.waiting_for.clone());
        line("until", s.until.clone());
        line("by", s.by.clone());
    }
}
