//! Agent memory: the conversation of one agent with one session, kept in JetStream KV.
//!
//! | what | where |
//! |---|---|
//! | bucket | `<prefix>_memory` ([`Names::memory_bucket`](weft_bus::resources::Names)) |
//! | key | `<agent>.<session_id>` |
//! | value | `{"messages": [...], "runs": [...]}`: the [`Message`]s, oldest first, without the system prompt, and the ids of the last [`RUNS_KEPT`] runs whose exchange was appended ([`Memory::append`]); a bare list of messages (earlier releases) reads as messages without runs |
//! | plan key | `<agent>.<session_id>.plan`: the session's [`Plan`] (the `plan` built-in tool, [`crate::builtin`]) |
//!
//! The list is bounded: [`Memory::save`] keeps the last [`DEFAULT_MEMORY_LIMIT`] (50)
//! messages and at most about [`DEFAULT_MEMORY_TOKENS`] (8,000) tokens
//! ([`approx_tokens`]: characters / 4), cut so that it starts at a user message (a
//! tool result never loses the call it answers), and drops older exchanges while the
//! value is larger than [`MAX_MEMORY_BYTES`]. A leading system message (the summary of
//! older turns an agent writes when it summarizes, [`Memory::split`]) is kept. A chat
//! without a session id has no memory.
//!
//! Appends ([`Memory::append`]) are compare-and-set writes, so two chats on the same
//! session at the same time both land; a summarizing agent's [`Memory::save`] writes
//! the whole history it summarized.

use std::fmt;
use std::str::FromStr;

use async_nats::jetstream::kv;
use weft_bus::subject::{SubjectError, validate_token};
use weft_bus::{Bus, Error, ErrorKind};

use crate::model::{Message, Role};

/// Default number of messages kept per session: 50.
pub const DEFAULT_MEMORY_LIMIT: usize = 50;

/// Default most tokens kept per session, approximately ([`approx_tokens`]): 8,000.
pub const DEFAULT_MEMORY_TOKENS: usize = 8_000;

/// The approximate tokens of `messages`: their text (content and tool-call arguments)
/// in characters divided by 4, plus 4 per message. Good enough to bound a history;
/// no tokenizer is this exact.
pub fn approx_tokens(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| {
            let args: usize = m
                .tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments.to_string().chars().count())
                .sum();
            (m.content.chars().count() + args) / 4 + 4
        })
        .sum()
}

/// Run ids a session remembers having appended ([`Memory::append`]): 32.
pub const RUNS_KEPT: usize = 32;

/// A session's stored value ([module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Wire")]
struct Stored {
    messages: Vec<Message>,
    #[serde(default)]
    runs: Vec<String>,
}

/// What may be stored: the current shape, or an earlier release's bare list.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Wire {
    Current {
        messages: Vec<Message>,
        #[serde(default)]
        runs: Vec<String>,
    },
    Bare(Vec<Message>),
}

impl From<Wire> for Stored {
    fn from(w: Wire) -> Stored {
        match w {
            Wire::Current { messages, runs } => Stored { messages, runs },
            Wire::Bare(messages) => Stored {
                messages,
                runs: Vec::new(),
            },
        }
    }
}

/// Largest stored history in bytes (512 KiB, half the NATS default `max_payload`).
pub const MAX_MEMORY_BYTES: usize = 512 * 1024;

/// Longest session id, in characters: 128.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A session id: one KV key token, `[A-Za-z0-9_-]{1,128}`, e.g. `demo-1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// The validated id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SessionId {
    type Err = SubjectError;

    fn from_str(s: &str) -> Result<Self, SubjectError> {
        validate_token("session id", s)?;
        if s.len() > MAX_SESSION_ID_LEN {
            return Err(SubjectError {
                what: "session id",
                input: s.to_owned(),
                reason: format!("longer than {MAX_SESSION_ID_LEN} characters"),
            });
        }
        Ok(SessionId(s.to_owned()))
    }
}

/// The KV key of `agent`'s memory of `session`: `<agent>.<session_id>`.
pub fn memory_key(agent: &str, session: &SessionId) -> String {
    format!("{agent}.{session}")
}

/// The KV key of `agent`'s plan for `session`: `<agent>.<session_id>.plan`.
pub fn plan_key(agent: &str, session: &SessionId) -> String {
    format!("{agent}.{session}.plan")
}

/// A plan an agent keeps with the `plan` built-in tool: `{"steps": [{"task", "status"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<PlanStep>,
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// What to do.
    pub task: String,
    /// How far it is.
    pub status: StepStatus,
}

/// The status of a [`PlanStep`]: `pending`, `in_progress` or `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Being worked on.
    InProgress,
    /// Finished.
    Done,
}

impl Plan {
    /// The plan as the model reads it in its system prompt: one line per step,
    /// `1. [done] task`.
    pub fn to_prompt(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.steps.iter().enumerate() {
            let status = match s.status {
                StepStatus::Pending => "pending",
                StepStatus::InProgress => "in progress",
                StepStatus::Done => "done",
            };
            out.push_str(&format!("{}. [{status}] {}\n", i + 1, s.task));
        }
        out
    }
}

/// The memory bucket of one mesh.
///
/// # Examples
/// ```no_run
/// use weft_agents::memory::Memory;
/// # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
/// let memory = Memory::open(&bus).await?;
/// let history = memory.load("support", &"demo-1".parse().unwrap()).await?;
/// println!("{} messages remembered", history.len());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Memory {
    store: kv::Store,
    limit: usize,
    tokens: usize,
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("bucket", &self.store.name)
            .field("limit", &self.limit)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl Memory {
    /// Opens the mesh's memory bucket `<prefix>_memory`, keeping
    /// [`DEFAULT_MEMORY_LIMIT`] messages per session.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket does not exist (`weft up` creates it).
    pub async fn open(bus: &Bus) -> weft_bus::Result<Memory> {
        Ok(Memory {
            store: bus.kv(&bus.names().memory_bucket).await?,
            limit: DEFAULT_MEMORY_LIMIT,
            tokens: DEFAULT_MEMORY_TOKENS,
        })
    }

    /// Most tokens kept per session, approximately ([`approx_tokens`]; at least 100).
    /// Default [`DEFAULT_MEMORY_TOKENS`].
    pub fn tokens(mut self, tokens: usize) -> Self {
        self.tokens = tokens.max(100);
        self
    }

    /// What [`Memory::save`] would keep of `history`, and what it would drop (oldest
    /// first, without a leading summary), so that an agent can summarize the dropped
    /// part before it is gone.
    pub fn split(&self, history: Vec<Message>) -> (Vec<Message>, Vec<Message>) {
        let kept = trim(history.clone(), self.limit, self.tokens);
        // `trim` keeps a leading summary and a suffix of the rest.
        let summary =
            |h: &[Message]| usize::from(h.first().is_some_and(|m| m.role == Role::System));
        let body = &history[summary(&history)..];
        let kept_body = kept.len() - summary(&kept);
        let dropped = body[..body.len() - kept_body].to_vec();
        (kept, dropped)
    }

    /// Most messages kept per session (at least 2). Default [`DEFAULT_MEMORY_LIMIT`].
    pub fn limit(mut self, messages: usize) -> Self {
        self.limit = messages.max(2);
        self
    }

    /// The history of `agent` with `session`, oldest first; empty when there is none.
    /// An unreadable entry is logged and treated as empty.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket cannot be read.
    pub async fn load(&self, agent: &str, session: &SessionId) -> weft_bus::Result<Vec<Message>> {
        Ok(self.stored(agent, session).await?.messages)
    }

    async fn stored(&self, agent: &str, session: &SessionId) -> weft_bus::Result<Stored> {
        let key = memory_key(agent, session);
        let entry = self.store.get(&key).await.map_err(|e| {
            Error::with_source(ErrorKind::Kv, format!("cannot read agent memory {key}"), e)
        })?;
        Ok(match entry {
            None => Stored::default(),
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(%key, error = %e, "unreadable agent memory; starting afresh");
                Stored::default()
            }),
        })
    }

    /// Stores `history` (oldest first) for `agent` with `session`, trimmed as the
    /// [module docs](self) say, and returns what was stored. With `run`, also records
    /// that run `run`'s exchange is in it ([`Memory::holds_run`]).
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the write fails.
    pub async fn save(
        &self,
        agent: &str,
        session: &SessionId,
        history: Vec<Message>,
        run: Option<&str>,
    ) -> weft_bus::Result<Vec<Message>> {
        let key = memory_key(agent, session);
        let history = trim(history, self.limit, self.tokens);
        weft_bus::kv::update(&self.store, &key, |s: &mut Stored| {
            s.messages.clone_from(&history);
            if let Some(run) = run {
                remember_run(&mut s.runs, run);
            }
            (true, ())
        })
        .await?;
        Ok(history)
    }

    /// Appends `exchange` (a run's new messages, oldest first) to what `agent` holds
    /// for `session` now, trimmed, once per `run`: when the session records the run
    /// already (an attempt that stored it and died before saying so), nothing is
    /// written. Returns whether it was written. A compare-and-set on the entry's
    /// revision, so a concurrent writer's exchange is not lost.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket cannot be read or written.
    pub async fn append(
        &self,
        agent: &str,
        session: &SessionId,
        run: &str,
        exchange: &[Message],
    ) -> weft_bus::Result<bool> {
        let key = memory_key(agent, session);
        let (limit, tokens) = (self.limit, self.tokens);
        weft_bus::kv::update(&self.store, &key, |s: &mut Stored| {
            if s.runs.iter().any(|r| r == run) {
                return (false, false);
            }
            let mut history = std::mem::take(&mut s.messages);
            history.extend(exchange.iter().cloned());
            s.messages = trim(history, limit, tokens);
            remember_run(&mut s.runs, run);
            (true, true)
        })
        .await
    }

    /// Whether `agent`'s memory of `session` holds run `run`'s exchange.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket cannot be read.
    pub async fn holds_run(
        &self,
        agent: &str,
        session: &SessionId,
        run: &str,
    ) -> weft_bus::Result<bool> {
        Ok(self
            .stored(agent, session)
            .await?
            .runs
            .iter()
            .any(|r| r == run))
    }

    /// The plan of `agent` for `session`, if one was stored. An unreadable entry is
    /// logged and treated as none.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket cannot be read.
    pub async fn load_plan(
        &self,
        agent: &str,
        session: &SessionId,
    ) -> weft_bus::Result<Option<Plan>> {
        let key = plan_key(agent, session);
        let entry = self.store.get(&key).await.map_err(|e| {
            Error::with_source(ErrorKind::Kv, format!("cannot read agent plan {key}"), e)
        })?;
        Ok(entry.and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| tracing::warn!(%key, error = %e, "unreadable agent plan; ignored"))
                .ok()
        }))
    }

    /// Stores `plan` as `agent`'s plan for `session`.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the write fails.
    pub async fn save_plan(
        &self,
        agent: &str,
        session: &SessionId,
        plan: &Plan,
    ) -> weft_bus::Result<()> {
        let key = plan_key(agent, session);
        let bytes = serde_json::to_vec(plan)
            .map_err(|e| Error::new(ErrorKind::Other, format!("cannot encode {key}: {e}")))?;
        self.store.put(&key, bytes.into()).await.map_err(|e| {
            Error::with_source(ErrorKind::Kv, format!("cannot write agent plan {key}"), e)
        })?;
        Ok(())
    }

    /// The sessions `agent` remembers, sorted, with the number of messages of each.
    /// Reads the bucket without a consumer ([`weft_bus::kv::read_all`]).
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket cannot be read.
    pub async fn sessions(&self, agent: &str) -> weft_bus::Result<Vec<(String, usize)>> {
        let entries =
            weft_bus::kv::read_all::<serde_json::Value>(&self.store, &format!("{agent}.")).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, value)| {
                let session = key.strip_prefix(agent)?.strip_prefix('.')?;
                // `<agent>.<session>` only: not the `.plan` keys.
                let messages = value.get("messages").unwrap_or(&value);
                (!session.contains('.'))
                    .then(|| (session.to_owned(), messages.as_array().map_or(0, Vec::len)))
            })
            .collect())
    }

    /// Forgets the history of `agent` with `session`.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the delete fails.
    pub async fn clear(&self, agent: &str, session: &SessionId) -> weft_bus::Result<()> {
        let key = memory_key(agent, session);
        self.store.delete(&key).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Kv,
                format!("cannot delete agent memory {key}"),
                e,
            )
        })
    }
}

/// Keeps the last `limit` messages, starting at a user message, within about
/// `tokens` tokens and [`MAX_MEMORY_BYTES`]; a leading system message (a summary) stays
/// in front.
/// Records `run` in `runs`, keeping the last [`RUNS_KEPT`].
fn remember_run(runs: &mut Vec<String>, run: &str) {
    runs.push(run.to_owned());
    if runs.len() > RUNS_KEPT {
        runs.drain(..runs.len() - RUNS_KEPT);
    }
}

fn trim(mut history: Vec<Message>, limit: usize, tokens: usize) -> Vec<Message> {
    let summary = match history.first() {
        Some(m) if m.role == Role::System => Some(history.remove(0)),
        _ => None,
    };
    if history.len() > limit {
        history.drain(..history.len() - limit);
    }
    drop_to_next_user(&mut history, 0);
    while history.len() > 1
        && (approx_tokens(&history) > tokens
            || serde_json::to_vec(&history).map_or(0, |b| b.len()) > MAX_MEMORY_BYTES)
    {
        drop_to_next_user(&mut history, 1);
    }
    if let Some(s) = summary {
        history.insert(0, s);
    }
    history
}

/// Drops messages from the front until the first one at or after `from` that is a
/// user message (everything when there is none).
fn drop_to_next_user(history: &mut Vec<Message>, from: usize) {
    let cut = history
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, m)| m.role == Role::User)
        .map_or(history.len(), |(i, _)| i);
    history.drain(..cut);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolCall;
    use serde_json::json;

    #[test]
    fn session_ids_are_single_tokens() {
        assert!("demo-1".parse::<SessionId>().is_ok());
        let err = "a.b".parse::<SessionId>().unwrap_err();
        assert!(err.to_string().contains("session id"), "{err}");
        assert!("a b".parse::<SessionId>().is_err());
        assert!("".parse::<SessionId>().is_err());
        assert!("x".repeat(129).parse::<SessionId>().is_err());
    }

    #[test]
    fn trimming_keeps_the_tail_from_a_user_message() {
        let mut h = Vec::new();
        for i in 0..4 {
            h.push(Message::user(format!("q{i}")));
            h.push(Message::assistant(
                "",
                vec![ToolCall::new("c", "t", json!({}))],
            ));
            h.push(Message::tool("c", "{}"));
            h.push(Message::assistant(format!("a{i}"), vec![]));
        }
        let t = trim(h.clone(), 6, usize::MAX);
        // The last 6 start mid-exchange; the cut moves on to the next user message.
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].content, "q3");
        assert_eq!(trim(h.clone(), 100, usize::MAX).len(), 16);
        assert_eq!(trim(h, 8, usize::MAX)[0].content, "q2");
    }

    #[test]
    fn trimming_bounds_the_size() {
        let big = "x".repeat(MAX_MEMORY_BYTES / 3);
        let h = vec![
            Message::user("1"),
            Message::assistant(big.clone(), vec![]),
            Message::user("2"),
            Message::assistant(big.clone(), vec![]),
            Message::user("3"),
            Message::assistant(big, vec![]),
        ];
        let t = trim(h, 50, usize::MAX);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].content, "2");
    }

    #[test]
    fn tokens_bound_the_history_and_a_leading_summary_stays() {
        let mut h = vec![Message::system("Summary: earlier talk")];
        for i in 0..10 {
            h.push(Message::user(format!("q{i} {}", "x".repeat(400))));
            h.push(Message::assistant(format!("a{i}"), Vec::new()));
        }
        // ~105 tokens per exchange: 300 tokens keep the last two exchanges.
        let t = trim(h.clone(), 100, 300);
        assert_eq!(t[0].content, "Summary: earlier talk");
        assert!(t[1].content.starts_with("q8"), "{:?}", t[1].content);
        assert_eq!(t.len(), 5);
        assert!(approx_tokens(&t[1..]) <= 300);
    }
}
