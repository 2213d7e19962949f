//! The run queue: stream `<PREFIX>_RUNQ` (a work queue), which tells the workers of a
//! flow or agent that one of its runs has something to do, now or later.
//!
//! | subject | what |
//! |---|---|
//! | `P.runq.<kind>.<name>.wake` | a wake: `{run}` as an event envelope (type `weft.run.wake`) |
//! | `P.runq.<kind>.<name>.start` | a manual start: the run's input as an envelope ([`RunQueue::submit`]) |
//! | `P.runq.<kind>.<name>.cron` | a cron tick of a flow's schedule |
//! | `P.runq.<kind>.<name>.debounced` | a debounced trigger whose quiet period passed ([`RunQueue::schedule`]) |
//! | `P.runq.sched.<kind>.<name>.<run_id>_<step>` | a run's timer: a message schedule (`Nats-Schedule: @at …`) whose target is the wake subject |
//! | `P.runq.sched.<kind>.<name>._cron` | a flow's cron schedule, target the cron subject |
//! | `P.runq.sched.<kind>.<name>.<run_id>_lease` | a run's lease ([`RunQueue::hold`]): a wake when its holder stops renewing it |
//!
//! A run waiting for a timer, an event or an approval holds no worker and no
//! delivery: the journal says what it waits for, and a wake brings a worker back.
//! Timers are nats-server message schedules (ADR-51, server 2.12 and later; cron
//! schedules 2.14): the server publishes the wake when it is due, so a timer survives
//! restarts of every process, servers included. A run's timer subject holds one
//! schedule; setting it again replaces it.
//!
//! Every wake carries a `Nats-Msg-Id` naming its cause (`wake:<run_id>:<cause>`), so a
//! wake sent twice for one cause (a retried append, two gateways) is queued once.
//! A wake is a hint, never a command: the worker folds the run's journal and does
//! what the fold says, so a wake for a run that moved on is harmless.

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use serde_json::json;

use super::{RunKind, RunRef};
use crate::connect::Bus;
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};

/// The event type of wake envelopes.
pub const WAKE_EVENT: &str = "weft.run.wake";

/// The run queue of this mesh. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RunQueue {
    bus: Bus,
}

impl RunQueue {
    /// The run queue of `bus`'s mesh (stream `<PREFIX>_RUNQ`, created by `weft up`).
    pub fn new(bus: &Bus) -> RunQueue {
        RunQueue { bus: bus.clone() }
    }

    /// The subject the workers of `kind` `name` consume wakes on.
    pub fn wake_subject(&self, kind: RunKind, name: &str) -> String {
        self.bus.subjects().runq(kind, name, "wake")
    }

    /// The subject cron ticks of flow `name` arrive on.
    pub fn cron_subject(&self, name: &str) -> String {
        self.bus.subjects().runq(RunKind::Flow, name, "cron")
    }

    fn wake_envelope(run: &RunRef, cause: &str) -> Envelope {
        let mut env = Envelope::event(
            &WAKE_EVENT.parse().expect("a valid event type"),
            json!({"run": run.id, "cause": cause}),
        );
        env.event_id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("wake:{}:{cause}", run.id).as_bytes(),
        )
        .to_string();
        env
    }

    fn encode(envelope: &Envelope) -> Result<Bytes> {
        envelope.to_bytes().map(Bytes::from).map_err(|e| {
            Error::new(
                ErrorKind::Envelope,
                format!(
                    "cannot encode {} for the run queue: {e}",
                    envelope.event_type
                ),
            )
        })
    }

    /// Wakes a worker of `run` now. `cause` names why, one token (e.g. the journal
    /// sequence of the entry that needs the worker: `s42`), and de-duplicates.
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] when the queue does not take it (no stream: `weft up`).
    pub async fn wake(&self, run: &RunRef, cause: &str) -> Result<()> {
        let publish = PublishMessage::build()
            .payload(Self::encode(&Self::wake_envelope(run, cause))?)
            .message_id(format!("wake:{}:{cause}", run.id));
        self.send(self.wake_subject(run.kind, &run.name), publish)
            .await
    }

    /// Queues `envelope` for the workers of `kind` `name` on
    /// `P.runq.<kind>.<name>.<what>` (e.g. `start`: a manual start whose payload is the
    /// run's input), with its `event_id` as `Nats-Msg-Id`: submitting one envelope
    /// twice queues it once.
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] when the queue does not take it.
    pub async fn submit(
        &self,
        kind: RunKind,
        name: &str,
        what: &str,
        envelope: &Envelope,
    ) -> Result<()> {
        let publish = PublishMessage::build()
            .payload(Self::encode(envelope)?)
            .message_id(&envelope.event_id);
        self.send(self.bus.subjects().runq(kind, name, what), publish)
            .await
    }

    /// Sets `run`'s timer for `step`: a wake at `at` (RFC 3339, UTC), replacing the
    /// step's earlier timer.
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] when the queue does not take it (a server older than 2.12
    /// refuses message schedules).
    pub async fn set_timer(&self, run: &RunRef, step: &str, at: &str) -> Result<()> {
        let wake = Self::wake_envelope(run, &format!("timer_{step}_{at}"));
        let key = format!("{}_{step}", run.id);
        self.schedule(run.kind, &run.name, &key, at, "wake", &wake)
            .await
    }

    /// Schedules `envelope` for the workers of `kind` `name`: the server publishes it
    /// on `P.runq.<kind>.<name>.<what>` at `at` (RFC 3339, UTC). The schedule is
    /// `P.runq.sched.<kind>.<name>.<key>`: scheduling one key again replaces it (a
    /// debounce moves its timer this way).
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] when the queue does not take it.
    pub async fn schedule(
        &self,
        kind: RunKind,
        name: &str,
        key: &str,
        at: &str,
        what: &str,
        envelope: &Envelope,
    ) -> Result<()> {
        let s = self.bus.subjects();
        let publish = PublishMessage::build()
            .payload(Self::encode(envelope)?)
            .header("Nats-Schedule", format!("@at {at}"))
            .header("Nats-Schedule-Target", s.runq(kind, name, what));
        self.send(s.runq_schedule(kind, name, key), publish).await
    }

    /// Sets the cron schedule of flow `name`: the server publishes a tick on
    /// [`RunQueue::cron_subject`] by `cron6`, a six-field cron expression (seconds
    /// first) in UTC, replacing an earlier schedule. Every worker of the flow may set
    /// it; there is one schedule, so one tick, whatever the number of workers.
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] when the queue does not take it (a server older than
    /// 2.14, or an expression it refuses).
    pub async fn set_cron(&self, name: &str, cron6: &str) -> Result<()> {
        let s = self.bus.subjects();
        let subject = s.runq_schedule(RunKind::Flow, name, "_cron");
        let mut env = Envelope::event(
            &"weft.run.cron".parse().expect("a valid event type"),
            json!({"flow": name, "schedule": cron6}),
        );
        env.from = Some(format!("flow.{name}"));
        let publish = PublishMessage::build()
            .payload(Self::encode(&env)?)
            .header("Nats-Schedule", cron6)
            .header("Nats-Schedule-Target", self.cron_subject(name));
        self.send(subject, publish).await
    }

    /// Removes flow `name`'s cron schedule (its definition lost its `schedule`).
    ///
    /// # Errors
    /// [`ErrorKind::JetStream`] when the stream cannot be read.
    pub async fn clear_cron(&self, name: &str) -> Result<()> {
        self.clear(RunKind::Flow, name, "_cron").await
    }

    /// Holds `run`'s lease until `until` (RFC 3339, UTC): a dead man's switch. The
    /// schedule `P.runq.sched.<kind>.<name>.<run_id>_lease` wakes a worker of the run
    /// at `until` unless the holder moves it on first (calling this again, a
    /// heartbeat) or lets go ([`RunQueue::release`]). A holder that dies stops moving
    /// it, so another worker takes the run over when the lease runs out.
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] when the queue does not take it.
    pub async fn hold(&self, run: &RunRef, until: &str) -> Result<()> {
        let wake = Self::wake_envelope(run, &format!("lease_{until}"));
        let key = format!("{}_lease", run.id);
        self.schedule(run.kind, &run.name, &key, until, "wake", &wake)
            .await
    }

    /// When `run`'s lease runs out (RFC 3339), if someone holds it
    /// ([`RunQueue::hold`]); `None` when nobody does or it ran out already.
    ///
    /// # Errors
    /// [`ErrorKind::JetStream`] when the stream cannot be read.
    pub async fn lease(&self, run: &RunRef) -> Result<Option<String>> {
        let subject =
            self.bus
                .subjects()
                .runq_schedule(run.kind, &run.name, &format!("{}_lease", run.id));
        let stream = self.stream().await?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(m
                .headers
                .get("Nats-Schedule")
                .and_then(|v| v.as_str().strip_prefix("@at "))
                .map(str::to_owned)),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::with_source(
                ErrorKind::JetStream,
                format!("cannot read the lease of run {run}"),
                e,
            )),
        }
    }

    /// Lets go of `run`'s lease: the run ended, or waits without a worker.
    ///
    /// # Errors
    /// [`ErrorKind::JetStream`] when the stream cannot be read.
    pub async fn release(&self, run: &RunRef) -> Result<()> {
        self.clear(run.kind, &run.name, &format!("{}_lease", run.id))
            .await
    }

    /// Removes the schedule `key` of `kind` `name`.
    async fn clear(&self, kind: RunKind, name: &str, key: &str) -> Result<()> {
        let subject = self.bus.subjects().runq_schedule(kind, name, key);
        self.stream()
            .await?
            .purge()
            .filter(subject)
            .await
            .map(drop)
            .map_err(|e| Error::with_source(ErrorKind::JetStream, "cannot clear a schedule", e))
    }

    async fn stream(&self) -> Result<async_nats::jetstream::stream::Stream> {
        let name = &self.bus.names().runq_stream;
        self.bus.jetstream().get_stream(name).await.map_err(|e| {
            Error::with_source(
                ErrorKind::JetStream,
                format!("no run queue {name} (`weft up` creates it)"),
                e,
            )
        })
    }

    async fn send(&self, subject: String, publish: PublishMessage) -> Result<()> {
        let failed = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::Publish,
                format!(
                    "cannot queue on {subject} (stream {}; `weft up` creates it): {e}",
                    self.bus.names().runq_stream
                ),
            )
        };
        let ack = self
            .bus
            .jetstream()
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| failed(&e))?;
        ack.await.map(drop).map_err(|e| failed(&e))
    }
}
