//! The journal: stream `<PREFIX>_RUNS`, one subject per run
//! (`P.runs.<kind>.<name>.<run_id>`), one message per [`Entry`] (DESIGN §15).
//!
//! Appends carry `Nats-Msg-Id` ([`Entry::msg_id`]), so an append retried after a lost
//! ack is stored once, and the run's driver passes the sequence of the last entry it
//! folded as `Nats-Expected-Last-Subject-Sequence`, so two drivers of one run cannot
//! both append: the second one gets [`AppendError::Conflict`] and folds again. The first
//! entry (`run.started`) expects sequence 0: a run id starts once, for as long as the
//! run is kept, not only within the duplicate window.
//!
//! A retried append that carries both headers is refused by a single server with "wrong
//! last sequence" (it checks the sequence before the message id); [`Journal::append`]
//! then reads the run's last entry, and when that is its own message id reports a
//! duplicate instead of a conflict.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;

use super::entry::Entry;
use super::fold::{FoldError, RunState};
use super::{RunKind, RunRef};
use crate::connect::Bus;
use crate::error::{Error, ErrorKind, Result};

/// An entry stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its stream sequence.
    pub seq: u64,
    /// It was stored before (same message id): nothing new was written.
    pub duplicate: bool,
}

/// Why an append did not store the entry.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another entry came first (the expected last sequence moved): fold again.
    #[error("run {run} moved on: another entry was appended after sequence {expected}")]
    Conflict {
        /// The run.
        run: String,
        /// The sequence the append expected.
        expected: u64,
    },
    /// The stream or the connection failed.
    #[error(transparent)]
    Bus(#[from] Error),
}

/// The journal of this mesh. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    bus: Bus,
    stream: Stream,
}

impl Journal {
    /// Opens `<PREFIX>_RUNS`.
    ///
    /// # Errors
    /// [`ErrorKind::JetStream`] when it does not exist (`weft up` creates it).
    pub async fn open(bus: &Bus) -> Result<Journal> {
        let name = &bus.names().runs_stream;
        let stream = bus.jetstream().get_stream(name).await.map_err(|e| {
            Error::with_source(
                ErrorKind::JetStream,
                format!("cannot open stream {name} (run `weft up` to create the mesh's resources)"),
                e,
            )
        })?;
        Ok(Journal {
            bus: bus.clone(),
            stream,
        })
    }

    fn subject(&self, run: &RunRef) -> String {
        self.bus.subjects().runs(run)
    }

    /// Appends `entry`. `expected_last` is the sequence of the run's last entry the
    /// caller folded (`Some(0)` for a run's first entry); `None` appends whatever came
    /// before (actions from outside the run's driver: cancel, approve, retry).
    ///
    /// # Errors
    /// [`AppendError::Conflict`] when another entry came after `expected_last`;
    /// [`AppendError::Bus`] when the publish or its ack failed.
    pub async fn append(
        &self,
        entry: &Entry,
        expected_last: Option<u64>,
    ) -> std::result::Result<Appended, AppendError> {
        let id = entry.msg_id();
        let payload = Bytes::from(serde_json::to_vec(entry).map_err(|e| {
            Error::new(
                ErrorKind::Envelope,
                format!("cannot encode a journal entry: {e}"),
            )
        })?);
        let mut publish = PublishMessage::build().payload(payload).message_id(&id);
        if let Some(seq) = expected_last {
            publish = publish.expected_last_subject_sequence(seq);
        }
        let subject = self.subject(&entry.run);
        let failed = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::Publish,
                format!("cannot append {id} to the journal: {e}"),
            )
        };
        let ack = self
            .bus
            .jetstream()
            .send_publish(subject, publish)
            .await
            .map_err(|e| failed(&e))?;
        match ack.await {
            Ok(a) => Ok(Appended {
                seq: a.sequence,
                duplicate: a.duplicate,
            }),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                match self.last_raw(&entry.run).await? {
                    Some((seq, last_id)) if last_id.as_deref() == Some(id.as_str()) => {
                        Ok(Appended {
                            seq,
                            duplicate: true,
                        })
                    }
                    _ => Err(AppendError::Conflict {
                        run: entry.run.to_string(),
                        expected: expected_last.unwrap_or_default(),
                    }),
                }
            }
            Err(e) => Err(failed(&e).into()),
        }
    }

    /// The sequence and message id of the run's last entry.
    async fn last_raw(&self, run: &RunRef) -> Result<Option<(u64, Option<String>)>> {
        match self
            .stream
            .direct_get_last_for_subject(self.subject(run))
            .await
        {
            Ok(m) => Ok(Some((
                m.sequence,
                m.headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_owned()),
            ))),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::new(
                ErrorKind::JetStream,
                format!("cannot read run {run}: {e}"),
            )),
        }
    }

    /// The runs of `kind` in the journal, of flow or agent `name` (all when `None`),
    /// with run id `id` (all when `None`): what a listing folds, each run once, by name
    /// and id. Runs started while it lists may be left out.
    ///
    /// # Errors
    /// [`ErrorKind::JetStream`] when the stream cannot be read.
    pub async fn runs(
        &self,
        kind: RunKind,
        name: Option<&str>,
        id: Option<&str>,
    ) -> Result<Vec<RunRef>> {
        use futures::TryStreamExt as _;
        let prefix = self.bus.subjects().all_runs();
        let prefix = prefix.trim_end_matches('>');
        let filter = format!(
            "{prefix}{}.{}.{}",
            kind.as_str(),
            name.unwrap_or("*"),
            id.unwrap_or("*")
        );
        let failed = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::JetStream,
                format!("cannot list the runs on {filter}: {e}"),
            )
        };
        let mut info = self
            .stream
            .info_with_subjects(&filter)
            .await
            .map_err(|e| failed(&e))?;
        let mut out = Vec::new();
        while let Some((subject, _)) = info.try_next().await.map_err(|e| failed(&e))? {
            let mut tokens = subject[prefix.len()..].split('.').skip(1);
            if let (Some(name), Some(id)) = (tokens.next(), tokens.next())
                && let Ok(r) = RunRef::new(kind, name, id)
            {
                out.push(r);
            }
        }
        // The server pages the subjects; a run started meanwhile shifts the pages, so
        // a subject can come twice (and one started during the listing can be missed).
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        out.dedup();
        Ok(out)
    }

    /// Every entry of the run, in order, with its stream sequence.
    ///
    /// # Errors
    /// [`ErrorKind::JetStream`] when the stream cannot be read; [`ErrorKind::Envelope`]
    /// for an entry that does not decode.
    pub async fn read(&self, run: &RunRef) -> Result<Vec<(u64, Entry)>> {
        let subject = self.subject(run);
        let mut out = Vec::new();
        let mut next = 1;
        loop {
            match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => {
                    next = m.sequence + 1;
                    out.push((m.sequence, Entry::from_slice(&m.payload)?));
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(out),
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::JetStream,
                        format!("cannot read run {run}: {e}"),
                    ));
                }
            }
        }
    }

    /// The entries of each of `runs` ([`Journal::read`]), in their order; 32 runs are
    /// read at once. A run without entries comes with none.
    ///
    /// # Errors
    /// As [`Journal::read`], for the first run that fails.
    pub async fn read_many(&self, runs: Vec<RunRef>) -> Result<Vec<(RunRef, Vec<(u64, Entry)>)>> {
        use futures::{StreamExt as _, TryStreamExt as _};
        futures::stream::iter(runs)
            .map(|r| async move {
                let entries = self.read(&r).await?;
                Ok::<_, Error>((r, entries))
            })
            .buffered(32)
            .try_collect()
            .await
    }

    /// The run's state: the fold of its entries; `None` when it has none.
    ///
    /// # Errors
    /// As [`Journal::read`]; [`ErrorKind::Envelope`] naming the entry when the entries
    /// do not fold ([`FoldError`]).
    pub async fn state(&self, run: &RunRef) -> Result<Option<RunState>> {
        RunState::fold(self.read(run).await?).map_err(|e: FoldError| {
            Error::new(ErrorKind::Envelope, format!("run {run} does not fold: {e}"))
        })
    }
}
