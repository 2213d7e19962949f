//! The bus error type: one [`Error`] with a matchable [`ErrorKind`].

use std::fmt;

use crate::envelope::{EnvelopeError, ErrorPayload};
use crate::subject::SubjectError;

/// What went wrong, to match on. Marked `#[non_exhaustive]`: new kinds may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Could not connect to NATS (bad URL, refused, authentication failed).
    Connect,
    /// A name is not a valid subject token.
    InvalidSubject,
    /// Bytes are not a valid envelope, or an envelope could not be encoded.
    Envelope,
    /// Publishing failed (including a missing JetStream ack).
    Publish,
    /// Subscribing failed.
    Subscribe,
    /// An invoke found no service listening on the target's subject.
    NoResponders,
    /// An invoke (or another request) got no answer in time.
    Timeout,
    /// The connection to NATS was lost while a request waited for its reply: the
    /// request may or may not have been handled. Retryable (the client reconnects on
    /// its own).
    Disconnected,
    /// The NATS server refused an operation because the connection's user may not do
    /// it (a permissions violation, e.g. publishing to a subject its permissions do not
    /// allow). Not retryable: the user's permissions must change first.
    Permission,
    /// The remote handler answered with `agent.response.error`; see [`Error::remote`].
    Remote,
    /// A JetStream stream or consumer operation failed.
    JetStream,
    /// A JetStream KV operation failed.
    Kv,
    /// A resource exists with a configuration that conflicts with the one asked for.
    Conflict,
    /// Starting or talking to a local `nats-server` failed.
    Server,
    /// The call was not made: a circuit breaker is open, or a limit was reached.
    Rejected,
    /// A streamed reply broke the frame protocol: a `seq` gap or a reorder buffer over
    /// its limit, a misplaced frame (see [`crate::stream`]).
    Stream,
    /// A setting is out of range (e.g. a durable consumer with 0 max deliveries).
    InvalidConfig,
    /// What was asked for does not exist (e.g. no dead letter with that id).
    NotFound,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The kind in snake case (`no_responders`, `timeout`…), e.g. for a span's
    /// `error.type` or a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::InvalidSubject => "invalid_subject",
            ErrorKind::Envelope => "envelope",
            ErrorKind::Publish => "publish",
            ErrorKind::Subscribe => "subscribe",
            ErrorKind::NoResponders => "no_responders",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Permission => "permission",
            ErrorKind::Remote => "remote",
            ErrorKind::JetStream => "jetstream",
            ErrorKind::Kv => "kv",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Server => "server",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Stream => "stream",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Other => "other",
        }
    }
}

/// An error from the bus, with its [`ErrorKind`], a message and an optional source.
pub struct Error {
    kind: ErrorKind,
    message: String,
    remote: Option<Box<ErrorPayload>>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            remote: None,
            source: None,
        }
    }

    /// A new error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            remote: None,
            source: Some(source.into()),
        }
    }

    /// An error a remote handler answered with.
    pub fn from_remote(target: &str, payload: ErrorPayload) -> Self {
        Error {
            kind: ErrorKind::Remote,
            message: format!("{target} answered with an error"),
            remote: Some(Box::new(payload)),
            source: None,
        }
    }

    /// A [`ErrorKind::Rejected`] error: the call was not made.
    pub fn rejected(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Rejected, message)
    }

    /// The kind, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// For [`ErrorKind::Remote`]: the error payload the handler sent.
    pub fn remote(&self) -> Option<&ErrorPayload> {
        self.remote.as_deref()
    }

    /// Whether trying again later may succeed: a remote error marked retryable, a
    /// timeout, no responders, a transport failure, a connection lost while waiting
    /// ([`ErrorKind::Disconnected`]), or a call a circuit breaker or limit rejected.
    /// Invalid input, bad envelopes, conflicts and permission denials
    /// ([`ErrorKind::Permission`]) are not.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Remote => self.remote.as_ref().is_some_and(|r| r.retryable),
            ErrorKind::Timeout
            | ErrorKind::NoResponders
            | ErrorKind::Publish
            | ErrorKind::Disconnected
            | ErrorKind::Rejected => true,
            _ => false,
        }
    }

    /// The message without its cause chain.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(r) = &self.remote {
            write!(f, ": {r}")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("remote", &self.remote)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// The error as an `agent.response.error` payload, for a component that answers for
/// a call it made (an agent's tool call, a gateway): a remote error is passed on as
/// it came; otherwise timeouts are `AGENT_TIMEOUT`, no responders and rejected calls
/// `AGENT_UNAVAILABLE`, bad names and settings `INVALID_REQUEST`, bad envelopes and
/// broken frame streams `CODEC_FAILURE`, missing things `NOT_FOUND`, permission
/// denials by the NATS server `AUTH_FAILURE`, conflicts and anything else `INTERNAL`,
/// and NATS, JetStream and KV failures (a lost connection included)
/// `TRANSPORT_FAILURE`; `retryable` is [`Error::is_retryable`] (see
/// `docs/protocol.md`, "Invoke").
impl From<&Error> for ErrorPayload {
    fn from(e: &Error) -> Self {
        use crate::envelope::ErrorCode;
        if let Some(remote) = e.remote() {
            return remote.clone();
        }
        let code = match e.kind {
            ErrorKind::Timeout => ErrorCode::AgentTimeout,
            ErrorKind::NoResponders | ErrorKind::Rejected => ErrorCode::AgentUnavailable,
            ErrorKind::InvalidSubject | ErrorKind::InvalidConfig => ErrorCode::InvalidRequest,
            // Bytes that are not an envelope, or frames that break the stream protocol.
            ErrorKind::Envelope | ErrorKind::Stream => ErrorCode::CodecFailure,
            ErrorKind::NotFound => ErrorCode::Other("NOT_FOUND".into()),
            ErrorKind::Permission => ErrorCode::AuthFailure,
            ErrorKind::Conflict | ErrorKind::Other => ErrorCode::Other("INTERNAL".into()),
            ErrorKind::Connect
            | ErrorKind::Disconnected
            | ErrorKind::Publish
            | ErrorKind::Subscribe
            | ErrorKind::JetStream
            | ErrorKind::Kv
            | ErrorKind::Server
            | ErrorKind::Remote => ErrorCode::TransportFailure,
        };
        let payload = ErrorPayload::new(code, e.to_string());
        if e.is_retryable() {
            payload.retryable()
        } else {
            payload
        }
    }
}

impl From<SubjectError> for Error {
    fn from(e: SubjectError) -> Self {
        Error::new(ErrorKind::InvalidSubject, e.to_string())
    }
}

impl From<EnvelopeError> for Error {
    fn from(e: EnvelopeError) -> Self {
        Error::new(ErrorKind::Envelope, e.to_string())
    }
}

/// `Result` with the bus [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ErrorCode;

    #[test]
    fn lost_connections_are_retryable_transport_failures_and_denials_are_auth_failures() {
        let lost = Error::new(ErrorKind::Disconnected, "lost");
        assert!(lost.is_retryable());
        let payload = ErrorPayload::from(&lost);
        assert_eq!(payload.code, ErrorCode::TransportFailure);
        assert!(payload.retryable);

        let denied = Error::new(ErrorKind::Permission, "denied");
        assert!(!denied.is_retryable());
        let payload = ErrorPayload::from(&denied);
        assert_eq!(payload.code, ErrorCode::AuthFailure);
        assert!(!payload.retryable);
    }
}
