//! A2A tasks as mesh state (DESIGN §14): the KV bucket `<prefix>_tasks` (one entry per
//! task id) and the subject `P.a2a.task.<task_id>` carrying each stored update, so any
//! gateway instance answers `GetTask` and re-attaches a stream, and a restart loses no
//! task.
//!
//! [`Tasks`] is the bucket; [`AgentTasks`] is one agent's view of it and implements
//! [`a2a_server::TaskStore`], which the crate's `DefaultRequestHandler` drives.
//!
//! # The entry
//!
//! The value of key `task.<task_id>` is a [`TaskRecord`]: the A2A task as the protocol shows
//! it (`task`, ProtoJSON field names) and Weft's own fields beside it (`agent`, the
//! gateway instance that runs it as `owner`, and `seq`, the number of updates so far),
//! so nothing of Weft's leaks into the client-visible `task.metadata`.
//!
//! Every write is a compare-and-set on the entry's revision, so two gateways never
//! overwrite each other: a terminal state is never changed into another state (the same
//! terminal state may be written again, as a cancel racing a completion does), and
//! `begin_cancel` is atomic.
//!
//! # The updates subject
//!
//! After each write the store publishes `{"seq", "event"}` on `P.a2a.task.<task_id>`
//! (with the task's state in the header [`STATE_HEADER`]):
//! `event` is the A2A `StreamResponse` that caused the write (the executor hands it over
//! through the [`Relay`]), or a `task` snapshot when the write had no event. A
//! subscriber subscribes first, then reads the entry, and skips updates with
//! `seq <= ` the entry's: it misses nothing and sees nothing twice
//! ([`Tasks::follow`]).
//!
//! # Tasks whose gateway died
//!
//! Tasks not finished yet are also indexed under `running.<task_id>` (value
//! `{"owner"}`), so finding them reads only those. A task still `SUBMITTED` or
//! `WORKING` whose owner is no longer a registered gateway
//! instance (it stopped, or was killed and its registry entry expired) is failed by
//! [`Tasks::reap`] with the status message [`ORPHANED_REASON`]; a gateway stopping
//! cleanly fails its own running tasks at once ([`Tasks::fail_owned`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use a2a::{A2AError, ListTasksRequest, ListTasksResponse, Part, Role, StreamResponse, Task};
use a2a::{Message, TaskState, TaskStatus, TaskStatusUpdateEvent};
use a2a_server::TaskStore;
use a2a_server::pagination::resolve_page_size;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use weft_bus::Bus;
use weft_bus::registry::{Kind, Registry};

/// The status message of a task failed because the gateway running it is gone.
pub const ORPHANED_REASON: &str =
    "the gateway running this task stopped before the agent answered; send the message again";

/// Compare-and-set attempts before a write gives up (another writer kept winning).
const CAS_ATTEMPTS: usize = 16;

/// Key prefix of task entries: `task.<task_id>`.
const TASK_PREFIX: &str = "task.";

/// Key prefix of the index of tasks not yet finished: `running.<task_id>` →
/// `{"owner"}`, so the reaper reads only those.
const RUNNING_PREFIX: &str = "running.";

/// The key of task `id`'s entry.
fn task_key(id: &str) -> String {
    format!("{TASK_PREFIX}{id}")
}

/// How long the purge marker of a removed index entry stays: 60 s.
pub const MARKER_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// A `running.<task_id>` index entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Running {
    owner: String,
}

/// Running tasks whose last written entry a process keeps (see [`Tasks::modify`]).
const WRITTEN_CACHE_MAX: usize = 10_000;

/// One task entry of `<prefix>_tasks` (see the [module docs](self)).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The agent the task was sent to.
    pub agent: String,
    /// The gateway instance running it (its registry instance id).
    pub owner: String,
    /// Updates written so far (1 after creation).
    pub seq: u64,
    /// The task as A2A shows it.
    pub task: Task,
}

/// The header of each update on `P.a2a.task.<task_id>` naming the task's state after
/// it (`TASK_STATE_CANCELED`, …), so a reader that only watches the state (the running
/// gateway, for cancels) need not decode the update.
pub const STATE_HEADER: &str = "Weft-A2A-State";

/// The A2A name of `state`, e.g. `TASK_STATE_CANCELED`.
pub fn state_name(state: &TaskState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One update on `P.a2a.task.<task_id>`: `{"seq", "event"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskUpdate {
    /// The entry's `seq` after this update.
    pub seq: u64,
    /// What changed.
    pub event: StreamResponse,
}

/// Hands the event the executor is about to yield to the store write it causes, so the
/// store can publish the event itself after the write (see the [module docs](self)).
/// The crate's handler applies one task's events one at a time, so one slot per task
/// suffices.
#[derive(Debug, Default)]
pub struct Relay {
    pending: Mutex<HashMap<String, StreamResponse>>,
}

impl Relay {
    /// Keeps `event` for the next write of its task.
    pub fn stash(&self, task_id: &str, event: &StreamResponse) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(task_id.to_owned(), event.clone());
        }
    }

    fn take(&self, task_id: &str) -> Option<StreamResponse> {
        self.pending.lock().ok()?.remove(task_id)
    }
}

/// The task bucket `<prefix>_tasks` and the updates subjects. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tasks {
    bus: Bus,
    kv: kv::Store,
    relay: Arc<Relay>,
    written: Arc<Mutex<HashMap<String, (TaskRecord, u64)>>>,
}

/// Maps a KV failure onto an A2A internal error, logging the cause.
fn kv_error(what: &str, e: impl std::fmt::Display) -> A2AError {
    tracing::warn!(error = %e, "A2A task store: cannot {what}");
    A2AError::internal(format!("the task store cannot {what}; try again"))
}

impl Tasks {
    /// Opens the bucket.
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when it does not exist (`weft up` creates it).
    pub async fn open(bus: &Bus) -> weft_bus::Result<Tasks> {
        Ok(Tasks {
            kv: bus.kv(&bus.names().tasks_bucket).await?,
            bus: bus.clone(),
            relay: Arc::default(),
            written: Arc::default(),
        })
    }

    /// The relay the executors of this process stash their events in.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// The view of one agent's tasks, created by gateway instance `owner`.
    pub fn for_agent(&self, agent: &str, owner: &str) -> AgentTasks {
        AgentTasks {
            tasks: self.clone(),
            agent: agent.to_owned(),
            owner: owner.to_owned(),
        }
    }

    /// The entry of `task_id` with its KV revision, if any.
    ///
    /// # Errors
    /// An internal [`A2AError`] when the bucket cannot be read.
    pub async fn record(&self, task_id: &str) -> Result<Option<(TaskRecord, u64)>, A2AError> {
        if weft_bus::subject::validate_token("task id", task_id).is_err() {
            return Ok(None);
        }
        let entry = self
            .kv
            .entry(task_key(task_id))
            .await
            .map_err(|e| kv_error("read a task", e))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        match serde_json::from_slice::<TaskRecord>(&entry.value) {
            Ok(r) => Ok(Some((r, entry.revision))),
            Err(e) => {
                tracing::warn!(task = task_id, error = %e, "skipping a task entry that does not decode");
                Ok(None)
            }
        }
    }

    /// Writes `record` over revision `revision` (0: create), then publishes `event`
    /// (or a snapshot) on the task's subject.
    async fn write(
        &self,
        record: &TaskRecord,
        revision: u64,
        event: Option<StreamResponse>,
    ) -> Result<Option<u64>, A2AError> {
        let bytes =
            Bytes::from(serde_json::to_vec(record).map_err(|e| kv_error("encode a task", e))?);
        let id = &record.task.id;
        let written = if revision == 0 {
            match self.kv.create(task_key(id), bytes).await {
                Ok(r) => r,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
                Err(e) => return Err(kv_error("write a task", e)),
            }
        } else {
            match self.kv.update(task_key(id), bytes, revision).await {
                Ok(r) => r,
                // Someone wrote first: the caller reads again and retries.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(None),
                Err(e) => return Err(kv_error("write a task", e)),
            }
        };
        // Off the task's path, and only when the index changes (created, ended): a late
        // index write only makes the reaper look once more.
        if revision == 0 || record.task.status.state.is_terminal() {
            let (tasks, indexed) = (self.clone(), record.clone());
            tokio::spawn(async move { tasks.index(&indexed, revision == 0).await });
        }
        let update = TaskUpdate {
            seq: record.seq,
            event: event.unwrap_or_else(|| StreamResponse::Task(record.task.clone())),
        };
        if let Ok(payload) = serde_json::to_vec(&update) {
            let subject = self.bus.subjects().a2a_task(id);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(STATE_HEADER, state_name(&record.task.status.state));
            let sent = self
                .bus
                .client()
                .publish_with_headers(subject, headers, payload.into())
                .await;
            if let Err(e) = sent {
                tracing::warn!(task = %id, error = %e, "cannot publish a task update; re-attached streams see it at the next one");
            }
        }
        Ok(Some(written))
    }

    /// The entry this process wrote last for `task_id`, with its revision: the first
    /// compare-and-set of an update tries it without reading (a stale one fails and
    /// the entry is read).
    fn cached(&self, task_id: &str) -> Option<(TaskRecord, u64)> {
        self.written.lock().ok()?.get(task_id).cloned()
    }

    fn remember(&self, record: &TaskRecord, revision: Option<u64>) {
        let Ok(mut w) = self.written.lock() else {
            return;
        };
        match revision {
            Some(r) if !record.task.status.state.is_terminal() => {
                if w.len() >= WRITTEN_CACHE_MAX {
                    w.clear();
                }
                w.insert(record.task.id.clone(), (record.clone(), r));
            }
            _ => {
                w.remove(&record.task.id);
            }
        }
    }

    /// Reads the entry (or takes the one this process wrote last), lets `change` edit
    /// it, and writes it back with compare-and-set, reading again and retrying when
    /// another writer came first. `change` returns `Ok(false)` to leave the entry as
    /// it is.
    async fn modify(
        &self,
        task_id: &str,
        event: Option<StreamResponse>,
        mut change: impl FnMut(&mut TaskRecord) -> Result<bool, A2AError>,
    ) -> Result<Option<TaskRecord>, A2AError> {
        let mut known = self.cached(task_id);
        for _ in 0..CAS_ATTEMPTS {
            let current = match known.take() {
                Some(c) => Some(c),
                None => self.record(task_id).await?,
            };
            let Some((mut record, revision)) = current else {
                return Ok(None);
            };
            if !change(&mut record)? {
                return Ok(Some(record));
            }
            record.seq += 1;
            let written = self.write(&record, revision, event.clone()).await?;
            self.remember(&record, written);
            if written.is_some() {
                return Ok(Some(record));
            }
        }
        Err(A2AError::internal(format!(
            "task {task_id} kept changing under this write; try again"
        )))
    }

    /// Every entry of the bucket (a scan: fine for thousands of tasks).
    async fn all(&self) -> Result<Vec<TaskRecord>, A2AError> {
        weft_bus::kv::read_all::<TaskRecord>(&self.kv, TASK_PREFIX)
            .await
            .map(|v| v.into_iter().map(|(_, r)| r).collect())
            .map_err(|e| kv_error("list tasks", e))
    }

    /// Fails `record`'s task unless it already ended; returns whether it did.
    async fn fail(&self, task_id: &str, reason: &str) -> Result<bool, A2AError> {
        let mut failed = false;
        let event_status = |record: &TaskRecord| TaskStatus {
            state: TaskState::Failed,
            message: Some(agent_text(record, reason)),
            timestamp: Some(chrono::Utc::now()),
        };
        let current = self.record(task_id).await?;
        let Some((record, _)) = current else {
            return Ok(false);
        };
        let event = StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
            task_id: task_id.to_owned(),
            context_id: record.task.context_id.clone(),
            status: event_status(&record),
            metadata: None,
        });
        self.modify(task_id, Some(event), |r| {
            if r.task.status.state.is_terminal() || r.task.status.state == TaskState::InputRequired
            {
                return Ok(false);
            }
            r.task.status = event_status(r);
            failed = true;
            Ok(true)
        })
        .await?;
        Ok(failed)
    }

    /// Fails every running task whose owner is not a registered gateway instance (see
    /// the [module docs](self)). Returns how many it failed.
    ///
    /// # Errors
    /// An internal [`A2AError`] when the bucket or the registry cannot be read.
    pub async fn reap(&self) -> Result<usize, A2AError> {
        let registry = Registry::open(&self.bus)
            .await
            .map_err(|e| kv_error("open the registry", e))?;
        let live: Vec<String> = registry
            .list_kind(Kind::Gateway, None)
            .await
            .map_err(|e| kv_error("read the registry", e))?
            .into_iter()
            .map(|r| r.instance)
            .collect();
        self.fail_running(|owner| !live.iter().any(|l| l == owner))
            .await
    }

    /// Fails every running task of gateway instance `owner` (a clean shutdown).
    ///
    /// # Errors
    /// As [`Tasks::reap`].
    pub async fn fail_owned(&self, owner: &str) -> Result<usize, A2AError> {
        self.fail_running(|o| o == owner).await
    }

    /// Fails the running tasks (from the `running.` index) whose owner `orphaned`
    /// says is gone; drops index entries of tasks that already ended.
    async fn fail_running(&self, orphaned: impl Fn(&str) -> bool) -> Result<usize, A2AError> {
        let running = weft_bus::kv::read_all::<Running>(&self.kv, RUNNING_PREFIX)
            .await
            .map_err(|e| kv_error("list running tasks", e))?;
        let mut failed = 0;
        for (key, r) in running {
            if !orphaned(&r.owner) {
                continue;
            }
            let id = &key[RUNNING_PREFIX.len()..];
            if self.fail(id, ORPHANED_REASON).await? {
                tracing::info!(task = %id, owner = %r.owner, "failed an A2A task whose gateway is gone");
                failed += 1;
            } else {
                // Ended, or gone, without its index entry being removed.
                let _ = self.forget_running(&key).await;
            }
        }
        Ok(failed)
    }

    /// Removes an index entry: a purge whose marker expires after [`MARKER_TTL`], so
    /// the index does not grow with every task that ever ran.
    async fn forget_running(&self, key: &str) -> Result<(), String> {
        self.kv
            .purge_with_ttl(key, MARKER_TTL)
            .await
            .map_err(|e| e.to_string())
    }

    /// Keeps the `running.<task_id>` index: written when a task is created, removed
    /// when it reaches a terminal state (best effort, in the background: [`Tasks::reap`]
    /// removes what a crash or a late write left).
    async fn index(&self, record: &TaskRecord, created: bool) {
        let key = format!("{RUNNING_PREFIX}{}", record.task.id);
        let result = if record.task.status.state.is_terminal() {
            self.forget_running(&key).await
        } else if created {
            let value = serde_json::to_vec(&Running {
                owner: record.owner.clone(),
            })
            .unwrap_or_default();
            self.kv
                .put(&key, value.into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::debug!(task = %record.task.id, error = %e, "cannot update the running-task index");
        }
    }

    /// The updates of `agent`'s running task `task_id` from now on, starting with a
    /// snapshot: `Task`, then each later event, ending after the first terminal (or
    /// interrupted) state (`SubscribeToTask`).
    ///
    /// # Errors
    /// -32001 when the task does not exist for `agent`; -32004 when it already ended;
    /// an internal [`A2AError`] when the subject or the bucket cannot be read.
    pub async fn follow(
        &self,
        agent: &str,
        task_id: &str,
    ) -> Result<BoxStream<'static, Result<StreamResponse, A2AError>>, A2AError> {
        let not_found = || A2AError::task_not_found(task_id);
        if weft_bus::subject::validate_token("task id", task_id).is_err() {
            return Err(not_found());
        }
        // Subscribe first, then read: no update falls between the two.
        let subscriber = self
            .bus
            .client()
            .subscribe(self.bus.subjects().a2a_task(task_id))
            .await
            .map_err(|e| kv_error("subscribe to task updates", e))?;
        let record = match self.record(task_id).await? {
            Some((r, _)) if r.agent == agent => r,
            _ => return Err(not_found()),
        };
        if record.task.status.state.is_terminal() {
            return Err(A2AError::unsupported_operation(format!(
                "task {task_id} has already reached a terminal state"
            )));
        }
        let start = record.seq;
        let snapshot = StreamResponse::Task(record.task);
        let done = ends_stream(&snapshot);
        let later = subscriber.filter_map(move |m| async move {
            let update: TaskUpdate = serde_json::from_slice(&m.payload).ok()?;
            (update.seq > start).then_some(update.event)
        });
        let events = futures::stream::once(async move { snapshot }).chain(later);
        Ok(Box::pin(take_until_end(events, done).map(Ok)))
    }
}

/// The events of `events` up to and including the first that ends a stream.
fn take_until_end(
    events: impl futures::Stream<Item = StreamResponse> + Send + 'static,
    already_done: bool,
) -> impl futures::Stream<Item = StreamResponse> + Send + 'static {
    futures::stream::unfold(
        (Box::pin(events), false),
        move |(mut events, mut finished)| async move {
            if finished {
                return None;
            }
            let event = events.next().await?;
            finished = ends_stream(&event) || already_done;
            Some((event, (events, finished)))
        },
    )
}

/// Whether `event` is a terminal or interrupted state, which ends a stream.
pub fn ends_stream(event: &StreamResponse) -> bool {
    let state = match event {
        StreamResponse::Task(t) => &t.status.state,
        StreamResponse::StatusUpdate(u) => &u.status.state,
        _ => return false,
    };
    state.is_terminal() || matches!(state, TaskState::InputRequired | TaskState::AuthRequired)
}

/// An agent message of `text` in `record`'s task and context.
fn agent_text(record: &TaskRecord, text: &str) -> Message {
    let mut m = Message::new(Role::Agent, vec![Part::text(text)]);
    m.task_id = Some(record.task.id.clone());
    m.context_id = Some(record.task.context_id.clone());
    m
}

/// One agent's tasks: the [`TaskStore`] of that agent's A2A handler. Tasks of other
/// agents are invisible through it ("task not found").
#[derive(Debug, Clone)]
pub struct AgentTasks {
    tasks: Tasks,
    agent: String,
    owner: String,
}

impl AgentTasks {
    /// Whether `record` is this agent's.
    fn mine(&self, record: &TaskRecord) -> bool {
        record.agent == self.agent
    }
}

#[async_trait::async_trait]
impl TaskStore for AgentTasks {
    async fn create(&self, task: Task) -> Result<u64, A2AError> {
        let record = TaskRecord {
            agent: self.agent.clone(),
            owner: self.owner.clone(),
            seq: 1,
            task,
        };
        let event = self.tasks.relay.take(&record.task.id);
        let written = self.tasks.write(&record, 0, event).await?;
        self.tasks.remember(&record, written);
        match written {
            Some(_) => Ok(1),
            None => Err(A2AError::invalid_request(format!(
                "task {} already exists",
                record.task.id
            ))),
        }
    }

    async fn update(&self, task: Task) -> Result<u64, A2AError> {
        let id = task.id.clone();
        let event = self.tasks.relay.take(&id);
        let mut not_mine = false;
        let written = self
            .tasks
            .modify(&id, event, |r| {
                if !self.mine(r) {
                    not_mine = true;
                    return Ok(false);
                }
                let from = &r.task.status.state;
                if from.is_terminal() && *from != task.status.state {
                    return Err(A2AError::invalid_request(format!(
                        "task {id} is in terminal state {from:?} and cannot move to {:?}",
                        task.status.state
                    )));
                }
                r.task = task.clone();
                Ok(true)
            })
            .await?;
        match written {
            Some(r) if !not_mine => Ok(r.seq),
            _ => Err(A2AError::task_not_found(&id)),
        }
    }

    async fn get(&self, task_id: &str) -> Result<Option<Task>, A2AError> {
        Ok(self
            .tasks
            .record(task_id)
            .await?
            .filter(|(r, _)| self.mine(r))
            .map(|(r, _)| r.task))
    }

    async fn list(&self, req: &ListTasksRequest) -> Result<ListTasksResponse, A2AError> {
        let mut tasks: Vec<Task> = self
            .tasks
            .all()
            .await?
            .into_iter()
            .filter(|r| self.mine(r))
            .map(|r| r.task)
            .filter(|t| req.context_id.as_ref().is_none_or(|c| &t.context_id == c))
            .filter(|t| req.status.as_ref().is_none_or(|s| &t.status.state == s))
            .filter(|t| {
                req.status_timestamp_after
                    .is_none_or(|after| t.status.timestamp.is_some_and(|ts| ts >= after))
            })
            .collect();
        // Task ids are UUIDv7: newest first is descending id order.
        tasks.sort_by(|a, b| b.id.cmp(&a.id));
        if req.include_artifacts != Some(true) {
            for t in &mut tasks {
                t.artifacts = None;
            }
        }
        let page_size = resolve_page_size(req.page_size);
        let start = match req.page_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => token
                .parse::<usize>()
                .map_err(|_| A2AError::invalid_params(format!("invalid pageToken {token:?}")))?,
            None => 0,
        };
        let total = tasks.len();
        let start = start.min(total);
        let end = (start + page_size).min(total);
        Ok(ListTasksResponse {
            tasks: tasks[start..end].to_vec(),
            next_page_token: if end < total {
                end.to_string()
            } else {
                String::new()
            },
            page_size: page_size as i32,
            total_size: total as i32,
        })
    }

    async fn begin_cancel(&self, task_id: &str) -> Result<Task, A2AError> {
        let Some((current, _)) = self.tasks.record(task_id).await? else {
            return Err(A2AError::task_not_found(task_id));
        };
        if !self.mine(&current) {
            return Err(A2AError::task_not_found(task_id));
        }
        let status = TaskStatus {
            state: TaskState::Canceled,
            message: Some(agent_text(&current, "canceled by the client")),
            timestamp: Some(chrono::Utc::now()),
        };
        let event = StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
            task_id: task_id.to_owned(),
            context_id: current.task.context_id.clone(),
            status: status.clone(),
            metadata: None,
        });
        let record = self
            .tasks
            .modify(task_id, Some(event), |r| {
                if r.task.status.state.is_terminal() {
                    return Err(A2AError::task_not_cancelable(task_id));
                }
                r.task.status = status.clone();
                Ok(true)
            })
            .await?
            .ok_or_else(|| A2AError::task_not_found(task_id))?;
        Ok(record.task)
    }
}
