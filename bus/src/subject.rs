//! Subjects and the validated names that go into them (DESIGN §2).
//!
//! Every name that reaches a NATS subject is parsed once, where input enters, into a
//! newtype: [`Prefix`], [`EventType`], [`EventPattern`], [`ServiceName`] and
//! [`Target`]. A token is `[A-Za-z0-9_-]+`; anything else (spaces, `*`, `>`, empty
//! tokens) is rejected with a [`SubjectError`] that names the bad token.
//!
//! [`Subjects`] builds the subjects of one mesh from its prefix, [`Names`] the names
//! of its streams and buckets.
//!
//! | purpose | subject |
//! |---|---|
//! | events | `P.events.<event_type>` |
//! | invoke | `P.invoke.<service>` and `P.invoke.<service>.<endpoint>` |
//! | dead letters | `P.dlq.<event_type>` |
//! | replays to one durable consumer | `P.replay.<consumer>.<event_type>` |
//! | cancelling a streaming invoke | `P.cancel.<request event_id>` |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused as (part of) a subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct SubjectError {
    /// What was being parsed: `event type`, `service name`, `target`, `prefix`, …
    pub what: &'static str,
    /// The whole input.
    pub input: String,
    /// Which token is bad and why, e.g. `token "a b" has a character outside [A-Za-z0-9_-]`.
    pub reason: String,
}

fn check_token(what: &'static str, input: &str, token: &str) -> Result<(), SubjectError> {
    let err = |reason: String| SubjectError {
        what,
        input: input.to_owned(),
        reason,
    };
    if token.is_empty() {
        return Err(err(
            "empty token (two dots in a row, or a leading or trailing dot)".into(),
        ));
    }
    if let Some(bad) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(err(format!(
            "token {token:?} has the character {bad:?}; a token is [A-Za-z0-9_-]+"
        )));
    }
    Ok(())
}

/// Checks that `input` is a single subject token (`[A-Za-z0-9_-]+`).
///
/// # Errors
/// [`SubjectError`] naming `what` and the bad token.
pub fn validate_token(what: &'static str, input: &str) -> Result<(), SubjectError> {
    check_token(what, input, input)
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = SubjectError;
            fn try_from(s: String) -> Result<Self, SubjectError> {
                s.parse()
            }
        }
        impl TryFrom<&str> for $name {
            type Error = SubjectError;
            fn try_from(s: &str) -> Result<Self, SubjectError> {
                s.parse()
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

/// The mesh prefix `P` (one token, default `weft`). Streams are named
/// `<PREFIX>_EVENTS`, buckets `<prefix>_registry` and so on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix(String);
string_newtype!(Prefix);

impl Default for Prefix {
    fn default() -> Self {
        Prefix("weft".into())
    }
}

impl FromStr for Prefix {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, SubjectError> {
        validate_token("prefix", s)?;
        Ok(Prefix(s.to_owned()))
    }
}

/// An event type: one or more dot-separated tokens, e.g. `ticket.created`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType(String);
string_newtype!(EventType);

/// Checks that `s` is a valid event type (dot-separated tokens) without allocating.
///
/// # Errors
/// [`SubjectError`] naming the bad token.
pub fn validate_event_type(s: &str) -> Result<(), SubjectError> {
    s.split('.')
        .try_for_each(|token| check_token("event type", s, token))
}

impl FromStr for EventType {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, SubjectError> {
        validate_event_type(s)?;
        Ok(EventType(s.to_owned()))
    }
}

/// A pattern over event types for subscriptions and flow triggers: tokens, `*` for
/// exactly one token, and `>` (last only) for one or more, e.g. `ticket.>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventPattern(String);
string_newtype!(EventPattern);

impl FromStr for EventPattern {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, SubjectError> {
        let tokens: Vec<&str> = s.split('.').collect();
        for (i, token) in tokens.iter().enumerate() {
            match *token {
                "*" => {}
                ">" if i == tokens.len() - 1 => {}
                ">" => {
                    return Err(SubjectError {
                        what: "event pattern",
                        input: s.to_owned(),
                        reason: "\">\" may only be the last token".into(),
                    });
                }
                t => check_token("event pattern", s, t)?,
            }
        }
        Ok(EventPattern(s.to_owned()))
    }
}

impl EventPattern {
    /// Whether `event_type` matches: `*` takes one token, `>` (last) one or more.
    ///
    /// ```
    /// use weft_bus::EventPattern;
    /// let p: EventPattern = "ticket.*".parse().unwrap();
    /// assert!(p.matches(&"ticket.created".parse().unwrap()));
    /// assert!(!p.matches(&"ticket.created.late".parse().unwrap()));
    /// ```
    pub fn matches(&self, event_type: &EventType) -> bool {
        let mut tokens = event_type.0.split('.');
        for p in self.0.split('.') {
            match (p, tokens.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (p, Some(t)) if p == t => {}
                _ => return false,
            }
        }
        tokens.next().is_none()
    }
}

impl From<EventType> for EventPattern {
    fn from(t: EventType) -> Self {
        EventPattern(t.0)
    }
}

/// A service (or agent) name: one token, e.g. `tickets`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);
string_newtype!(ServiceName);

impl FromStr for ServiceName {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, SubjectError> {
        validate_token("service name", s)?;
        Ok(ServiceName(s.to_owned()))
    }
}

/// What an invoke is addressed to: a service's default endpoint (`support`) or a named
/// endpoint (`tickets.classify`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The service (or agent).
    pub service: ServiceName,
    /// The endpoint, `None` for the service's default endpoint.
    pub endpoint: Option<String>,
}

impl Target {
    /// A target for `service`'s default endpoint.
    pub fn service(service: ServiceName) -> Self {
        Target {
            service,
            endpoint: None,
        }
    }

    /// A target for `service.endpoint`.
    ///
    /// # Errors
    /// [`SubjectError`] if `endpoint` is not one token.
    pub fn endpoint(service: ServiceName, endpoint: &str) -> Result<Self, SubjectError> {
        validate_token("endpoint name", endpoint)?;
        Ok(Target {
            service,
            endpoint: Some(endpoint.to_owned()),
        })
    }
}

impl FromStr for Target {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, SubjectError> {
        let mut parts = s.split('.');
        let service = parts.next().unwrap_or_default();
        check_token("target", s, service)?;
        let endpoint = parts.next();
        if let Some(endpoint) = endpoint {
            check_token("target", s, endpoint)?;
        }
        if parts.next().is_some() {
            return Err(SubjectError {
                what: "target",
                input: s.to_owned(),
                reason: "a target is `service` or `service.endpoint` (at most two tokens)".into(),
            });
        }
        Ok(Target {
            service: ServiceName(service.to_owned()),
            endpoint: endpoint.map(str::to_owned),
        })
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Some(e) => write!(f, "{}.{}", self.service, e),
            None => write!(f, "{}", self.service),
        }
    }
}

/// Stream and bucket names of one mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `<PREFIX>_EVENTS`.
    pub events_stream: String,
    /// `<PREFIX>_DLQ`.
    pub dlq_stream: String,
    /// `<PREFIX>_RUNS`: the journal of durable runs (DESIGN §15).
    pub runs_stream: String,
    /// `<PREFIX>_RUNQ`: the run queue, wakes and timers of durable runs (see
    /// [`crate::runs::queue`]).
    pub runq_stream: String,
    /// `<prefix>_registry`.
    pub registry_bucket: String,
    /// `<prefix>_memory`.
    pub memory_bucket: String,
    /// `<prefix>_flows`.
    pub flows_bucket: String,
    /// `<prefix>_failures`: per durable consumer and stream sequence, when a message
    /// first failed (see [`crate::durable::consumer`]).
    pub failures_bucket: String,
    /// `<prefix>_tasks`: A2A tasks by task id (DESIGN §14), kept
    /// [`ResourceConfig::tasks_max_age`](crate::durable::resources::ResourceConfig::tasks_max_age).
    pub tasks_bucket: String,
    /// `<prefix>_a2a_agents`: remote A2A agents added with `weft a2a add`, by name.
    pub a2a_agents_bucket: String,
    prefix: String,
}

impl Names {
    /// The names for `prefix`.
    pub fn new(prefix: &Prefix) -> Self {
        let up = prefix.as_str().to_uppercase();
        let p = prefix.as_str();
        Names {
            events_stream: format!("{up}_EVENTS"),
            dlq_stream: format!("{up}_DLQ"),
            runs_stream: format!("{up}_RUNS"),
            runq_stream: format!("{up}_RUNQ"),
            registry_bucket: format!("{p}_registry"),
            memory_bucket: format!("{p}_memory"),
            flows_bucket: format!("{p}_flows"),
            failures_bucket: format!("{p}_failures"),
            tasks_bucket: format!("{p}_tasks"),
            a2a_agents_bucket: format!("{p}_a2a_agents"),
            prefix: p.to_owned(),
        }
    }

    /// `<prefix>_<name>`: the name of an application bucket of this mesh, e.g. the
    /// demo's `weft_tickets`.
    pub fn bucket(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }

    /// Whether `stream` is one of this mesh's streams: its events or DLQ stream, or
    /// the stream `KV_<prefix>_…` of one of its buckets.
    pub fn is_mesh_stream(&self, stream: &str) -> bool {
        stream == self.events_stream
            || stream == self.dlq_stream
            || stream == self.runs_stream
            || stream == self.runq_stream
            || stream
                .strip_prefix("KV_")
                .and_then(|b| b.strip_prefix(self.prefix.as_str()))
                .is_some_and(|rest| rest.starts_with('_'))
    }
}

/// Builds the subjects of one mesh from its [`Prefix`].
///
/// # Examples
/// ```
/// use weft_bus::subject::{Subjects, Prefix};
/// let s = Subjects::new(Prefix::default());
/// assert_eq!(s.events(&"ticket.created".parse().unwrap()), "weft.events.ticket.created");
/// assert_eq!(s.invoke(&"tickets.classify".parse().unwrap()), "weft.invoke.tickets.classify");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: Prefix,
}

impl Subjects {
    /// Subjects under `prefix`.
    pub fn new(prefix: Prefix) -> Self {
        Subjects { prefix }
    }

    /// The mesh prefix.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// `P.events.<event_type>`.
    pub fn events(&self, event_type: &EventType) -> String {
        format!("{}.events.{}", self.prefix, event_type)
    }

    /// `P.events.<pattern>`, for subscriptions and consumer filters.
    pub fn events_matching(&self, pattern: &EventPattern) -> String {
        format!("{}.events.{}", self.prefix, pattern)
    }

    /// `P.events.>`: every event of the mesh.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `P.invoke.<service>` or `P.invoke.<service>.<endpoint>`.
    pub fn invoke(&self, target: &Target) -> String {
        format!("{}.invoke.{}", self.prefix, target)
    }

    /// `P.cancel.<request event_id>`: where the caller of a streaming invoke cancels it
    /// (see [`crate::stream`]). An `event_id` is a UUID, so always one token.
    pub fn cancel(&self, request_event_id: &str) -> String {
        format!("{}.cancel.{}", self.prefix, request_event_id)
    }

    /// `P.a2a.task.<task_id>`: the updates of one A2A task, as the gateway that runs
    /// it stores them (DESIGN §14), so any gateway can re-attach a stream. A task id
    /// is a UUID, so always one token.
    pub fn a2a_task(&self, task_id: &str) -> String {
        format!("{}.a2a.task.{}", self.prefix, task_id)
    }

    /// `P.dlq.<event_type>`.
    pub fn dlq(&self, event_type: &EventType) -> String {
        format!("{}.dlq.{}", self.prefix, event_type)
    }

    /// `P.dlq.<pattern>`: the dead letters of matching event types.
    pub fn dlq_matching(&self, pattern: &EventPattern) -> String {
        format!("{}.dlq.{}", self.prefix, pattern)
    }

    /// `P.dlq.>`: every dead letter of the mesh.
    pub fn all_dlq(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// `P.replay.<consumer>.<event_type>`: events replayed to the durable consumer
    /// `consumer` only (stored in `<PREFIX>_EVENTS`, which only that consumer filters).
    pub fn replay(&self, consumer: &str, event_type: &EventType) -> String {
        format!("{}.replay.{consumer}.{event_type}", self.prefix)
    }

    /// `P.replay.<consumer>.<pattern>`, the replay filter of a durable consumer.
    pub fn replay_matching(&self, consumer: &str, pattern: &EventPattern) -> String {
        format!("{}.replay.{consumer}.{pattern}", self.prefix)
    }

    /// `P.replay.>`: every replay subject of the mesh.
    pub fn all_replay(&self) -> String {
        format!("{}.replay.>", self.prefix)
    }

    /// The event type of an events subject (`P.events.a.b` → `a.b`) or of a replay
    /// subject (`P.replay.<consumer>.a.b` → `a.b`), if it is one.
    pub fn event_type_of(&self, subject: &str) -> Option<EventType> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        if let Some(t) = rest.strip_prefix(".events.") {
            return t.parse().ok();
        }
        let (_consumer, t) = rest.strip_prefix(".replay.")?.split_once('.')?;
        t.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_accept_dotted_tokens() {
        let t: EventType = "ticket.created".parse().unwrap();
        assert_eq!(t.as_str(), "ticket.created");
        assert!("a-b_c.D9".parse::<EventType>().is_ok());
    }

    #[test]
    fn bad_tokens_are_named() {
        let err = "ticket.bad token".parse::<EventType>().unwrap_err();
        assert!(err.reason.contains("\"bad token\""), "{err}");
        let err = "ticket..created".parse::<EventType>().unwrap_err();
        assert!(err.reason.contains("empty token"), "{err}");
        for bad in ["", "a.*", "a.>", "a.", ".a", "ä"] {
            assert!(bad.parse::<EventType>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn patterns_allow_wildcards_in_place() {
        assert!("ticket.>".parse::<EventPattern>().is_ok());
        assert!("*.created".parse::<EventPattern>().is_ok());
        assert!(">.created".parse::<EventPattern>().is_err());
        assert!("ticket.a b".parse::<EventPattern>().is_err());
    }

    #[test]
    fn targets_have_one_or_two_tokens() {
        let t: Target = "tickets.classify".parse().unwrap();
        assert_eq!(t.service.as_str(), "tickets");
        assert_eq!(t.endpoint.as_deref(), Some("classify"));
        assert_eq!(t.to_string(), "tickets.classify");
        assert!("support".parse::<Target>().unwrap().endpoint.is_none());
        assert!("a.b.c".parse::<Target>().is_err());
        assert!("a b".parse::<Target>().is_err());
    }

    #[test]
    fn subjects_use_the_prefix() {
        let s = Subjects::new("acme".parse().unwrap());
        let t: EventType = "ticket.created".parse().unwrap();
        assert_eq!(s.events(&t), "acme.events.ticket.created");
        assert_eq!(s.dlq(&t), "acme.dlq.ticket.created");
        assert_eq!(
            s.event_type_of("acme.events.ticket.created"),
            Some(t.clone())
        );
        assert_eq!(s.event_type_of("weft.events.x"), None);
        assert_eq!(s.all_events(), "acme.events.>");
        assert_eq!(s.replay("c1", &t), "acme.replay.c1.ticket.created");
        assert_eq!(s.event_type_of("acme.replay.c1.ticket.created"), Some(t));
        assert_eq!(s.event_type_of("acme.replay.c1"), None);
    }

    #[test]
    fn patterns_match_event_types_token_by_token() {
        let m = |p: &str, t: &str| {
            p.parse::<EventPattern>()
                .unwrap()
                .matches(&t.parse().unwrap())
        };
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m("a.*", "a.x"));
        assert!(!m("a.*", "a"));
        assert!(m("a.>", "a.x.y"));
        assert!(!m("a.>", "a"));
        assert!(m(">", "a"));
        assert!(m("*.b", "a.b"));
        assert!(!m("*.b", "a.c"));
    }
}
