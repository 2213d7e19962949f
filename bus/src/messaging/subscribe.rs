//! Core NATS subscriptions to events, optionally in a queue group.
//!
//! Core subscriptions see events as they are published and keep nothing; for
//! at-least-once handling use a durable consumer ([`crate::durable::consumer`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use crate::connect::Bus;
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{Error, ErrorKind, Result};
use crate::subject::EventPattern;

/// One message received on a subscription.
#[derive(Debug, Clone)]
pub struct Received {
    /// The subject it arrived on.
    pub subject: String,
    /// The decoded envelope, or why the bytes are not one (bad input is reported, not
    /// dropped).
    pub envelope: Result<Envelope, EnvelopeError>,
}

/// A stream of [`Received`] messages. Dropping it unsubscribes.
pub struct Subscription {
    inner: async_nats::Subscriber,
}

impl Stream for Subscription {
    type Item = Received;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|m| {
            m.map(|m| Received {
                subject: m.subject.to_string(),
                envelope: Envelope::from_slice(&m.payload),
            })
        })
    }
}

impl Bus {
    /// Subscribes to events matching `pattern` (`P.events.<pattern>`). With a
    /// `queue_group`, each event goes to one member of the group.
    ///
    /// # Errors
    /// [`ErrorKind::Subscribe`] when the subscription cannot be made.
    pub async fn subscribe_events(
        &self,
        pattern: &EventPattern,
        queue_group: Option<&str>,
    ) -> Result<Subscription> {
        self.subscribe_subject(&self.subjects().events_matching(pattern), queue_group)
            .await
    }

    /// Subscribes to any subject of the mesh (e.g. `P.dlq.>`).
    ///
    /// # Errors
    /// [`ErrorKind::Subscribe`] when the subscription cannot be made.
    pub async fn subscribe_subject(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription> {
        let r = match queue_group {
            Some(q) => {
                self.client()
                    .queue_subscribe(subject.to_owned(), q.to_owned())
                    .await
            }
            None => self.client().subscribe(subject.to_owned()).await,
        };
        let inner = r.map_err(|e| {
            Error::with_source(
                ErrorKind::Subscribe,
                format!("cannot subscribe to {subject}"),
                e,
            )
        })?;
        Ok(Subscription { inner })
    }
}
