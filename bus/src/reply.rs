//! The shared reply inbox of a connection: one wildcard subscription
//! `<inbox>.*` for every invoke, instead of a subscribe and unsubscribe per request.
//!
//! Each request gets a token; its reply inbox is `<inbox>.<token>` (known before
//! sending, so it also goes into the envelope's `reply_to`). A reader task hands each
//! reply to the waiting request. A request that gives up (timeout, cancellation)
//! removes its token, so a late reply is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Message, StatusCode};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind, Result};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>;

/// The shared reply inbox; see the module docs.
pub(crate) struct ReplyInbox {
    prefix: String,
    next: AtomicU64,
    pending: Pending,
}

/// Removes a token that is still pending when its request ends.
struct Waiting<'a> {
    pending: &'a Pending,
    token: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
    }
}

/// Why a request got no reply.
pub(crate) enum NoReply {
    /// The server said nobody listens on the subject.
    NoResponders,
    /// Nothing came within the timeout.
    TimedOut,
}

impl ReplyInbox {
    /// Subscribes `<fresh inbox>.*` on `client` and starts the reader task.
    pub(crate) async fn start(client: &async_nats::Client) -> Result<ReplyInbox> {
        let prefix = client.new_inbox();
        let mut subscriber = client.subscribe(format!("{prefix}.*")).await.map_err(|e| {
            Error::with_source(ErrorKind::Subscribe, "cannot subscribe the reply inbox", e)
        })?;
        let pending: Pending = Arc::default();
        let (reader, strip) = (pending.clone(), prefix.len() + 1);
        tokio::spawn(async move {
            while let Some(msg) = subscriber.next().await {
                let Some(token) = msg.subject.get(strip..).and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                let waiter = reader
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&token);
                if let Some(tx) = waiter {
                    let _ = tx.send(msg);
                }
            }
        });
        Ok(ReplyInbox {
            prefix,
            next: AtomicU64::new(1),
            pending,
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
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, tx);
        let _waiting = Waiting {
            pending: &self.pending,
            token,
        };
        send(format!("{}.{token}", self.prefix)).await?;
        Ok(match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(msg)) if msg.status == Some(StatusCode::NO_RESPONDERS) => {
                Err(NoReply::NoResponders)
            }
            Ok(Ok(msg)) => Ok(msg),
            // The reader ended (connection closed) or the timeout passed.
            Ok(Err(_)) | Err(_) => Err(NoReply::TimedOut),
        })
    }
}
