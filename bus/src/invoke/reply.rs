//! Requests waiting for an answer, and the shared reply inbox of a connection.
//!
//! [`Waiters`] is one table per connection of the requests that wait for a reply:
//! plain invokes and streaming invokes. Each gets a token and is filed with the subject
//! it was sent to, so the connection's events can end it early (see
//! [`Waiters::on_event`]): when the connection is lost every waiting request ends
//! with [`Outcome::Lost`] instead of waiting out its timeout (a core NATS reply sent
//! while disconnected is lost anyway), and when the server refuses a publish to
//! subject S (a permissions violation) the requests sent to S end with
//! [`Outcome::Denied`].
//!
//! [`ReplyInbox`] is one wildcard subscription `<inbox>.*` for every plain invoke,
//! instead of a subscribe and unsubscribe per request. A request's reply inbox is
//! `<inbox>.<token>` (known before sending, so it also goes into the envelope's
//! `reply_to`). A reader task hands each reply to the waiting request. A request that
//! gives up (timeout, cancellation) removes its token, so a late reply is dropped.
//! Streaming invokes read their own inbox and use the table only for the events.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Event, Message, ServerError, StatusCode, Subject};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind, Result};

/// How a waiting request ended, other than by its timeout.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The reply (shared-inbox requests only).
    Reply(Message),
    /// The connection to NATS was lost (or closed) while the request waited.
    Lost,
    /// The server refused the publish to the request's subject (permissions).
    Denied,
}

struct Waiter {
    subject: Subject,
    tx: oneshot::Sender<Outcome>,
    /// Whether replies come through the shared inbox (else the request reads its own).
    shared_inbox: bool,
}

/// The requests of one connection that wait for an answer; see the module docs.
#[derive(Default)]
pub(crate) struct Waiters {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Waiter>>,
}

/// One filed request. Dropping it removes the request from the table.
pub(crate) struct Waiting {
    waiters: Arc<Waiters>,
    token: u64,
    rx: oneshot::Receiver<Outcome>,
}

impl Waiting {
    /// The token (the last token of a shared-inbox reply subject).
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// The outcome, once one came. `Ready(None)` when the table dropped the request
    /// without one (cannot happen while the `Waiting` is alive, but is not a panic).
    pub(crate) fn poll_outcome(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outcome>> {
        use std::future::Future as _;
        std::pin::Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }

    /// Waits for the outcome.
    async fn outcome(&mut self) -> Option<Outcome> {
        std::future::poll_fn(|cx| self.poll_outcome(cx)).await
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.lock().remove(&self.token);
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files a request sent (or about to be sent) to `subject`.
    pub(crate) fn file(self: &Arc<Self>, subject: Subject, shared_inbox: bool) -> Waiting {
        let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            token,
            Waiter {
                subject,
                tx,
                shared_inbox,
            },
        );
        Waiting {
            waiters: self.clone(),
            token,
            rx,
        }
    }

    /// Hands a shared-inbox reply to its request, if it still waits.
    fn deliver(&self, token: u64, msg: Message) {
        let waiter = match self.lock().entry(token) {
            Entry::Occupied(e) if e.get().shared_inbox => e.remove(),
            _ => return,
        };
        let _ = waiter.tx.send(Outcome::Reply(msg));
    }

    /// Ends every waiting request with `outcome()`; returns how many.
    fn end_all(&self, outcome: impl Fn() -> Outcome) -> usize {
        let ended: Vec<Waiter> = self.lock().drain().map(|(_, w)| w).collect();
        let n = ended.len();
        for w in ended {
            let _ = w.tx.send(outcome());
        }
        n
    }

    /// Ends the requests sent to `subject` with [`Outcome::Denied`]; returns how many.
    fn deny(&self, subject: &str) -> usize {
        let denied: Vec<Waiter> = {
            let mut map = self.lock();
            let tokens: Vec<u64> = map
                .iter()
                .filter(|(_, w)| w.subject.as_str() == subject)
                .map(|(t, _)| *t)
                .collect();
            tokens.iter().filter_map(|t| map.remove(t)).collect()
        };
        let n = denied.len();
        for w in denied {
            let _ = w.tx.send(Outcome::Denied);
        }
        n
    }

    /// Acts on a connection event (called from the connection's event callback, so it
    /// only takes the table's lock briefly and never blocks):
    ///
    /// - `Disconnected` and `Closed`: every waiting request ends with [`Outcome::Lost`];
    /// - a server error `Permissions Violation for Publish to "S"`: the requests sent to
    ///   S end with [`Outcome::Denied`], and it is logged;
    /// - other permissions violations (subscribe, publish with a reply subject) and
    ///   other server errors are logged.
    pub(crate) fn on_event(&self, event: &Event, server: &str) {
        match event {
            Event::Disconnected | Event::Closed => {
                let n = self.end_all(|| Outcome::Lost);
                if n > 0 {
                    tracing::warn!(
                        server,
                        requests = n,
                        "connection to NATS {}: {n} waiting requests failed",
                        if matches!(event, Event::Closed) {
                            "closed"
                        } else {
                            "lost"
                        }
                    );
                }
            }
            Event::ServerError(ServerError::Other(text)) => match Violation::parse(text) {
                Some(Violation::Publish(subject)) => {
                    let n = self.deny(&subject);
                    tracing::warn!(
                        server,
                        %subject,
                        requests = n,
                        "NATS refused a publish to {subject}: the user's permissions deny it"
                    );
                }
                Some(Violation::Subscribe(subject)) => tracing::error!(
                    server,
                    %subject,
                    "NATS refused a subscription to {subject}: the user's permissions deny it; nothing will be received on it"
                ),
                Some(Violation::Other) => {
                    tracing::error!(server, "NATS permissions violation: {text}")
                }
                None => tracing::warn!(server, "NATS server error: {text}"),
            },
            Event::ServerError(e) => tracing::warn!(server, "NATS server error: {e}"),
            _ => {}
        }
    }
}

/// A permissions violation the server reported (`-ERR 'Permissions Violation …'`).
#[derive(Debug, PartialEq, Eq)]
enum Violation {
    /// `Permissions Violation for Publish to "S"`.
    Publish(String),
    /// `Permissions Violation for Subscription to "S"` (optionally `using queue …`).
    Subscribe(String),
    /// Another one, e.g. `Permissions Violation for Publish with Reply of "R"`.
    Other,
}

impl Violation {
    /// Parses nats-server's text (`client.go`: `"Permissions Violation for Publish to
    /// %q"`, `"… for Subscription to %q"`, `"… for Publish with Reply of %q"`); the
    /// subject is Go-quoted.
    fn parse(text: &str) -> Option<Violation> {
        let rest = text.trim().strip_prefix("Permissions Violation for ")?;
        Some(if let Some(q) = rest.strip_prefix("Publish to ") {
            unquote(q).map_or(Violation::Other, Violation::Publish)
        } else if let Some(q) = rest.strip_prefix("Subscription to ") {
            unquote(q).map_or(Violation::Other, Violation::Subscribe)
        } else {
            Violation::Other
        })
    }
}

/// The first Go-quoted string of `text` (`"a.b"` → `a.b`; `\"` and `\\` unescaped),
/// or the text up to the first space when it is not quoted.
fn unquote(text: &str) -> Option<String> {
    let Some(body) = text.strip_prefix('"') else {
        let word = text.split_whitespace().next()?;
        return Some(word.to_owned());
    };
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// Why a request got no reply.
pub(crate) enum NoReply {
    /// The server said nobody listens on the subject.
    NoResponders,
    /// Nothing came within the timeout.
    TimedOut,
    /// The connection was lost while waiting.
    Lost,
    /// The server refused the publish (permissions).
    Denied,
}

/// The shared reply inbox; see the module docs.
pub(crate) struct ReplyInbox {
    prefix: String,
    waiters: Arc<Waiters>,
}

impl ReplyInbox {
    /// Subscribes `<fresh inbox>.*` on `client` and starts the reader task, which hands
    /// replies to the requests filed in `waiters`.
    pub(crate) async fn start(
        client: &async_nats::Client,
        waiters: Arc<Waiters>,
    ) -> Result<ReplyInbox> {
        let prefix = client.new_inbox();
        let mut subscriber = client.subscribe(format!("{prefix}.*")).await.map_err(|e| {
            Error::with_source(ErrorKind::Subscribe, "cannot subscribe the reply inbox", e)
        })?;
        let (reader, strip) = (waiters.clone(), prefix.len() + 1);
        tokio::spawn(async move {
            while let Some(msg) = subscriber.next().await {
                let Some(token) = msg.subject.get(strip..).and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                reader.deliver(token, msg);
            }
        });
        Ok(ReplyInbox { prefix, waiters })
    }

    /// Files a request to `subject`, publishes it with a fresh reply subject —
    /// `send(reply_subject)` does the publish — and waits up to `timeout` for the
    /// first reply, the loss of the connection or a refusal of the publish.
    pub(crate) async fn request<F, Fut>(
        &self,
        subject: Subject,
        timeout: Duration,
        send: F,
    ) -> Result<std::result::Result<Message, NoReply>>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut waiting = self.waiters.file(subject, true);
        send(format!("{}.{}", self.prefix, waiting.token())).await?;
        Ok(
            match tokio::time::timeout(timeout, waiting.outcome()).await {
                Ok(Some(Outcome::Reply(msg))) if msg.status == Some(StatusCode::NO_RESPONDERS) => {
                    Err(NoReply::NoResponders)
                }
                Ok(Some(Outcome::Reply(msg))) => Ok(msg),
                Ok(Some(Outcome::Lost)) => Err(NoReply::Lost),
                Ok(Some(Outcome::Denied)) => Err(NoReply::Denied),
                Ok(None) | Err(_) => Err(NoReply::TimedOut),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_violations_are_parsed_with_their_subject() {
        assert_eq!(
            Violation::parse(r#"Permissions Violation for Publish to "weft.invoke.billing""#),
            Some(Violation::Publish("weft.invoke.billing".into()))
        );
        assert_eq!(
            Violation::parse(r#"Permissions Violation for Subscription to "_INBOX.x.*""#),
            Some(Violation::Subscribe("_INBOX.x.*".into()))
        );
        assert_eq!(
            Violation::parse(
                r#"Permissions Violation for Subscription to "a.b" using queue "q" (sid "3")"#
            ),
            Some(Violation::Subscribe("a.b".into()))
        );
        assert_eq!(
            Violation::parse(r#"Permissions Violation for Publish with Reply of "_R_.x""#),
            Some(Violation::Other)
        );
        assert_eq!(
            Violation::parse(r#"Permissions Violation for Publish to "a\"b""#),
            Some(Violation::Publish("a\"b".into()))
        );
        assert_eq!(Violation::parse("Maximum Payload Violation"), None);
    }

    #[tokio::test]
    async fn events_end_the_requests_they_concern() {
        let waiters = Arc::new(Waiters::default());
        let mut a = waiters.file("weft.invoke.a".into(), true);
        let mut b = waiters.file("weft.invoke.b".into(), false);
        let mut a2 = waiters.file("weft.invoke.a".into(), true);

        let denied = Event::ServerError(ServerError::Other(
            r#"Permissions Violation for Publish to "weft.invoke.a""#.into(),
        ));
        waiters.on_event(&denied, "nats://test");
        assert!(matches!(a.outcome().await, Some(Outcome::Denied)));
        assert!(matches!(a2.outcome().await, Some(Outcome::Denied)));
        assert_eq!(waiters.lock().len(), 1, "only b still waits");

        // A reply for a request that reads its own inbox is not taken from the table.
        waiters.deliver(
            b.token(),
            Message {
                subject: "x".into(),
                reply: None,
                payload: Default::default(),
                headers: None,
                status: None,
                description: None,
                length: 0,
            },
        );
        assert_eq!(waiters.lock().len(), 1);

        waiters.on_event(&Event::Disconnected, "nats://test");
        assert!(matches!(b.outcome().await, Some(Outcome::Lost)));
        assert!(waiters.lock().is_empty());

        // Dropping a filed request removes it.
        let c = waiters.file("weft.invoke.c".into(), true);
        assert_eq!(waiters.lock().len(), 1);
        drop(c);
        assert!(waiters.lock().is_empty());
    }
}
