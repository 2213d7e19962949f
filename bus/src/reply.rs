//! The shared reply inbox of a connection: one wildcard subscription
//! `<inbox>.*` for every invoke, instead of a subscribe and unsubscribe per request.
//!
//! Each request gets a token; its reply inbox is `<inbox>.<token>` (known before
//! sending, so it also goes into the envelope's `reply_to`). A request that gives up
//! (timeout, cancellation) removes its token, so a late reply is dropped.
//!
//! There is no reader task: the waiting requests read the subscription themselves. A
//! request polled while its reply is not in yet polls the subscription and hands every
//! reply it finds to the request it belongs to (waking that one). So a lone request
//! is woken by the connection directly, as `async-nats`' own request-reply is, without
//! a task in between. The subscription remembers only the waker of the last request
//! that polled it; when that request ends while others still wait, it wakes one of
//! them, which polls the subscription in its turn (see [`Waiting`]'s `Drop`).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_nats::{Message, StatusCode, Subscriber};
use futures::Stream;

use crate::error::{Error, ErrorKind, Result};

/// One request waiting for its reply.
#[derive(Default)]
struct Slot {
    reply: Option<Message>,
    waker: Option<Waker>,
}

/// The subscription and the requests waiting on it, behind one lock.
struct Shared {
    subscriber: Subscriber,
    /// Length of `<inbox>.`: the token follows.
    strip: usize,
    waiting: HashMap<u64, Slot>,
    /// The subscription ended (the connection is closed for good).
    closed: bool,
}

impl Shared {
    /// Hands every reply the subscription has to its request. Registers `cx`'s waker
    /// with the subscription when it runs dry.
    fn drain(&mut self, cx: &mut Context<'_>) {
        loop {
            match std::pin::Pin::new(&mut self.subscriber).poll_next(cx) {
                Poll::Ready(Some(msg)) => {
                    let token = msg
                        .subject
                        .get(self.strip..)
                        .and_then(|t| t.parse::<u64>().ok());
                    // A reply for a request that gave up is dropped.
                    if let Some(slot) = token.and_then(|t| self.waiting.get_mut(&t)) {
                        slot.reply = Some(msg);
                        if let Some(w) = slot.waker.take() {
                            w.wake();
                        }
                    }
                }
                Poll::Ready(None) => {
                    self.closed = true;
                    for slot in self.waiting.values_mut() {
                        if let Some(w) = slot.waker.take() {
                            w.wake();
                        }
                    }
                    return;
                }
                Poll::Pending => return,
            }
        }
    }
}

/// The shared reply inbox; see the module docs.
pub(crate) struct ReplyInbox {
    prefix: String,
    next: AtomicU64,
    shared: Arc<Mutex<Shared>>,
}

/// A request's place in the inbox: removed when the request ends, however it ends.
struct Waiting<'a> {
    shared: &'a Mutex<Shared>,
    token: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut shared = lock(self.shared);
        shared.waiting.remove(&self.token);
        // The subscription may hold this request's waker: let another waiting request
        // poll it, so replies keep flowing.
        if let Some(w) = shared.waiting.values_mut().find_map(|s| s.waker.take()) {
            w.wake();
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a request got no reply.
pub(crate) enum NoReply {
    /// The server said nobody listens on the subject.
    NoResponders,
    /// Nothing came within the timeout.
    TimedOut,
}

impl ReplyInbox {
    /// Subscribes `<fresh inbox>.*` on `client`.
    pub(crate) async fn start(client: &async_nats::Client) -> Result<ReplyInbox> {
        let prefix = client.new_inbox();
        let subscriber = client.subscribe(format!("{prefix}.*")).await.map_err(|e| {
            Error::with_source(ErrorKind::Subscribe, "cannot subscribe the reply inbox", e)
        })?;
        let strip = prefix.len() + 1;
        Ok(ReplyInbox {
            prefix,
            next: AtomicU64::new(1),
            shared: Arc::new(Mutex::new(Shared {
                subscriber,
                strip,
                waiting: HashMap::new(),
                closed: false,
            })),
        })
    }

    /// Publishes with a fresh reply subject — `send(reply_subject)` does the publish —
    /// and waits up to `timeout` for the first reply.
    pub(crate) async fn request<F, Fut>(
        &self,
        timeout: Duration,
        send: F,
    ) -> Result<std::result::Result<Message, NoReply>>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared).waiting.insert(token, Slot::default());
        let _waiting = Waiting {
            shared: &self.shared,
            token,
        };
        send(format!("{}.{token}", self.prefix)).await?;
        let reply = poll_fn(|cx| {
            let mut shared = lock(&self.shared);
            if let Some(msg) = take_reply(&mut shared, token) {
                return Poll::Ready(Some(msg));
            }
            shared.drain(cx);
            if let Some(msg) = take_reply(&mut shared, token) {
                return Poll::Ready(Some(msg));
            }
            if shared.closed {
                return Poll::Ready(None);
            }
            if let Some(slot) = shared.waiting.get_mut(&token) {
                slot.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        });
        Ok(match tokio::time::timeout(timeout, reply).await {
            Ok(Some(msg)) if msg.status == Some(StatusCode::NO_RESPONDERS) => {
                Err(NoReply::NoResponders)
            }
            Ok(Some(msg)) => Ok(msg),
            // The connection closed for good, or the timeout passed.
            Ok(None) | Err(_) => Err(NoReply::TimedOut),
        })
    }
}

fn take_reply(shared: &mut Shared, token: u64) -> Option<Message> {
    shared.waiting.get_mut(&token).and_then(|s| s.reply.take())
}
