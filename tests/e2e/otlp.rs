//! An OTLP/HTTP trace receiver for tests: a real HTTP server on 127.0.0.1 that takes
//! `POST /v1/traces` as `application/x-protobuf` (the OTLP default) or
//! `application/json`, decodes `ExportTraceServiceRequest` with the official
//! `opentelemetry-proto` messages, and keeps the spans in a plain owned form ([`Span`])
//! with typed attributes ([`Attr`]).
//!
//! ```ignore
//! let otlp = Receiver::start().await;
//! let mut up = Up::start_env(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint())]);
//! // … traffic with a `traceparent` of trace `tid` …
//! let spans = otlp.wait_for(|s| s.iter().any(|s| s.trace_id == tid), Duration::from_secs(30)).await;
//! println!("{}", otlp.tree(tid));
//! otlp.assert_unique_keys();
//! ```
//!
//! The batch exporter sends every 5 s (`OTEL_BSP_SCHEDULE_DELAY`, ms) and on a clean
//! stop, so either wait with [`Receiver::wait_for`] or stop the process (SIGINT) first
//! and read [`Receiver::spans`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1 as proto;
use prost::Message as _;

/// `application/x-protobuf`, the content type of OTLP/HTTP protobuf.
pub const PROTOBUF: &str = "application/x-protobuf";
/// `application/json`, the content type of OTLP/HTTP JSON.
pub const JSON: &str = "application/json";

/// A span kind (OTLP `Span.SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `SPAN_KIND_UNSPECIFIED` (0): the exporter sent none.
    Unspecified,
    /// `SPAN_KIND_INTERNAL`.
    Internal,
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// `SPAN_KIND_PRODUCER`.
    Producer,
    /// `SPAN_KIND_CONSUMER`.
    Consumer,
}

impl Kind {
    fn from_proto(kind: i32) -> Kind {
        match proto::span::SpanKind::try_from(kind) {
            Ok(proto::span::SpanKind::Internal) => Kind::Internal,
            Ok(proto::span::SpanKind::Server) => Kind::Server,
            Ok(proto::span::SpanKind::Client) => Kind::Client,
            Ok(proto::span::SpanKind::Producer) => Kind::Producer,
            Ok(proto::span::SpanKind::Consumer) => Kind::Consumer,
            _ => Kind::Unspecified,
        }
    }
}

/// An attribute value, its OTLP type kept: `Int(202)` is not `Str("202")`.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// `string_value`.
    Str(String),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bool_value`.
    Bool(bool),
    /// `bytes_value`.
    Bytes(Vec<u8>),
    /// `array_value`.
    Array(Vec<Attr>),
    /// `kvlist_value` (a later duplicate key wins).
    Map(BTreeMap<String, Attr>),
    /// No value (an `AnyValue` with nothing set).
    Empty,
}

impl Attr {
    fn from_proto(v: Option<&AnyValue>) -> Attr {
        match v.and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => Attr::Str(s.clone()),
            Some(any_value::Value::BoolValue(b)) => Attr::Bool(*b),
            Some(any_value::Value::IntValue(i)) => Attr::Int(*i),
            Some(any_value::Value::DoubleValue(d)) => Attr::Double(*d),
            Some(any_value::Value::BytesValue(b)) => Attr::Bytes(b.clone()),
            Some(any_value::Value::ArrayValue(a)) => {
                Attr::Array(a.values.iter().map(|v| Attr::from_proto(Some(v))).collect())
            }
            Some(any_value::Value::KvlistValue(l)) => Attr::Map(attributes_of(&l.values).0),
            // A profiles-only string table index: not a trace value.
            Some(any_value::Value::StringValueStrindex(_)) | None => Attr::Empty,
        }
    }

    /// The string, when this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attr::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, when this is an `Int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Attr::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The type's name, as in the attribute table of a note: `string`, `int`, `double`,
    /// `bool`, `bytes`, `array`, `map`, `empty`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Attr::Str(_) => "string",
            Attr::Int(_) => "int",
            Attr::Double(_) => "double",
            Attr::Bool(_) => "bool",
            Attr::Bytes(_) => "bytes",
            Attr::Array(_) => "array",
            Attr::Map(_) => "map",
            Attr::Empty => "empty",
        }
    }
}

impl From<&str> for Attr {
    fn from(s: &str) -> Attr {
        Attr::Str(s.to_owned())
    }
}

impl From<String> for Attr {
    fn from(s: String) -> Attr {
        Attr::Str(s)
    }
}

impl From<i64> for Attr {
    fn from(i: i64) -> Attr {
        Attr::Int(i)
    }
}

impl From<bool> for Attr {
    fn from(b: bool) -> Attr {
        Attr::Bool(b)
    }
}

impl From<f64> for Attr {
    fn from(d: f64) -> Attr {
        Attr::Double(d)
    }
}

/// Strings quoted, numbers and booleans bare, so a type shows: `"202"` vs `202`.
impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Str(s) => write!(f, "{s:?}"),
            Attr::Int(i) => write!(f, "{i}"),
            Attr::Double(d) => write!(f, "{d:?}"),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
            Attr::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Attr::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                f.write_str("}")
            }
            Attr::Empty => f.write_str("(empty)"),
        }
    }
}

/// A span's status (OTLP `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// `STATUS_CODE_UNSET`.
    Unset,
    /// `STATUS_CODE_OK`.
    Ok,
    /// `STATUS_CODE_ERROR`, with its message.
    Error(String),
}

/// A span event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its name (`exception` for an error event).
    pub name: String,
    /// Its attributes.
    pub attributes: BTreeMap<String, Attr>,
}

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The span name.
    pub name: String,
    /// The span kind.
    pub kind: Kind,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id (16 hex digits), `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The attributes by key (the last of duplicates; see `duplicate_keys`).
    pub attributes: BTreeMap<String, Attr>,
    /// Keys that came more than once on this span (OTLP keys must be unique).
    pub duplicate_keys: Vec<String>,
    /// The status.
    pub status: Status,
    /// The events, in order.
    pub events: Vec<Event>,
    /// The attributes of the resource the span came with.
    pub resource: BTreeMap<String, Attr>,
    /// The instrumentation scope's name (`weft` for a `weft` process).
    pub scope: String,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
}

impl Span {
    /// The attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&Attr> {
        self.attributes.get(key)
    }

    /// The attribute `key` when it is a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Attr::as_str)
    }

    /// The attribute `key` when it is an integer.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(Attr::as_int)
    }

    /// Whether `parent` is this span's parent.
    pub fn is_child_of(&self, parent: &Span) -> bool {
        self.trace_id == parent.trace_id
            && self.parent_span_id.as_deref() == Some(parent.span_id.as_str())
    }

    /// `name [Kind] key=value …` (the attributes `keep` accepts), plus the status
    /// when it is not unset.
    pub fn line(&self, keep: &dyn Fn(&str) -> bool) -> String {
        let mut line = format!("{} [{:?}]", self.name, self.kind);
        for (k, v) in self.attributes.iter().filter(|(k, _)| keep(k)) {
            line.push_str(&format!(" {k}={v}"));
        }
        match &self.status {
            Status::Unset => {}
            Status::Ok => line.push_str(" status=Ok"),
            Status::Error(m) => line.push_str(&format!(" status=Error({m:?})")),
        }
        line
    }
}

/// One `POST /v1/traces` the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its content type without parameters, lowercase (e.g. [`PROTOBUF`]).
    pub content_type: String,
    /// How many spans it carried.
    pub spans: usize,
}

#[derive(Default)]
struct Log {
    spans: Vec<Span>,
    requests: Vec<Request>,
    errors: Vec<String>,
}

struct Shared {
    log: Mutex<Log>,
    /// Bumped after each request, so waiters look again.
    changed: tokio::sync::watch::Sender<u64>,
}

/// The receiver; its server stops when this is dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts the receiver on `127.0.0.1:<free port>` (inside the current tokio
    /// runtime).
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared {
            log: Mutex::new(Log::default()),
            changed: tokio::sync::watch::channel(0).0,
        });
        let state = shared.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { receive(&state, &headers, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            shared,
            server,
        }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.shared.log.lock().unwrap().spans.clone()
    }

    /// The spans of one trace (32 hex digits), in arrival order.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        let log = self.shared.log.lock().unwrap();
        log.spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// The requests answered so far (content type, span count).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().requests.clone()
    }

    /// Requests that were refused: an unsupported content type or encoding, or a body
    /// that did not decode.
    pub fn errors(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().errors.clone()
    }

    /// Waits until `predicate` holds for the spans received so far and returns them.
    ///
    /// # Panics
    /// After `timeout` (with what did arrive), or as soon as a request was refused.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&[Span]) -> bool,
        timeout: Duration,
    ) -> Vec<Span> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            {
                let log = self.shared.log.lock().unwrap();
                assert!(
                    log.errors.is_empty(),
                    "the OTLP receiver refused: {:?}",
                    log.errors
                );
                if predicate(&log.spans) {
                    return log.spans.clone();
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "the spans awaited did not arrive within {timeout:?}; received:\n{}",
                    self.summary()
                );
            }
        }
    }

    /// The trace as an indented tree: `name [Kind] key=value …` per span, children
    /// (by start time) under their parents, leaving out the `code.*` and `thread.*`
    /// attributes every span has. A span whose parent was not received (e.g. the
    /// caller's) is a root, marked `(parent … not received)`.
    pub fn tree(&self, trace_id: &str) -> String {
        self.tree_with(trace_id, &|k| {
            !(k.starts_with("code.") || k.starts_with("thread."))
        })
    }

    /// [`Receiver::tree`] showing the attributes `keep` accepts.
    pub fn tree_with(&self, trace_id: &str, keep: &dyn Fn(&str) -> bool) -> String {
        let mut spans = self.trace(trace_id);
        spans.sort_by_key(|s| s.start_unix_nano);
        let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut out = String::new();
        for root in spans.iter().filter(|s| {
            s.parent_span_id
                .as_deref()
                .is_none_or(|p| !ids.contains(&p))
        }) {
            let mut line = root.line(keep);
            if let Some(p) = &root.parent_span_id {
                line.push_str(&format!(" (parent {p} not received)"));
            }
            out.push_str(&line);
            out.push('\n');
            children(&spans, root, 1, keep, &mut out);
        }
        out
    }

    /// `(span name, key)` for every attribute key that came twice on one span.
    pub fn duplicate_keys(&self) -> Vec<(String, String)> {
        let log = self.shared.log.lock().unwrap();
        log.spans
            .iter()
            .flat_map(|s| s.duplicate_keys.iter().map(|k| (s.name.clone(), k.clone())))
            .collect()
    }

    /// # Panics
    /// When a span carried an attribute key twice (listing them).
    pub fn assert_unique_keys(&self) {
        let dups = self.duplicate_keys();
        assert!(
            dups.is_empty(),
            "duplicate attribute keys (span, key): {dups:?}"
        );
    }

    /// One line per span received, for failure messages.
    fn summary(&self) -> String {
        let log = self.shared.log.lock().unwrap();
        let mut out = format!("{} request(s): {:?}\n", log.requests.len(), log.requests);
        for s in &log.spans {
            out.push_str(&format!("  {} {}\n", s.trace_id, s.line(&|_| true)));
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn children(
    spans: &[Span],
    parent: &Span,
    depth: usize,
    keep: &dyn Fn(&str) -> bool,
    out: &mut String,
) {
    for child in spans.iter().filter(|s| s.is_child_of(parent)) {
        out.push_str(&"  ".repeat(depth));
        out.push_str(&child.line(keep));
        out.push('\n');
        children(spans, child, depth + 1, keep, out);
    }
}

/// Handles one `POST /v1/traces`.
fn receive(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let refuse = |status: StatusCode, why: String| {
        shared.log.lock().unwrap().errors.push(why.clone());
        shared.changed.send_modify(|n| *n += 1);
        (status, why).into_response()
    };
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-encoding {enc:?}: the test receiver takes uncompressed bodies"),
        );
    }
    let decoded = match content_type.as_str() {
        PROTOBUF => ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string()),
        JSON => {
            serde_json::from_slice::<ExportTraceServiceRequest>(body).map_err(|e| e.to_string())
        }
        other => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {other:?}: OTLP/HTTP is {PROTOBUF} or {JSON}"),
            );
        }
    };
    let request = match decoded {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("a {content_type} body that is no ExportTraceServiceRequest: {e}"),
            );
        }
    };
    let spans = convert(&request);
    {
        let mut log = shared.log.lock().unwrap();
        log.requests.push(Request {
            content_type: content_type.clone(),
            spans: spans.len(),
        });
        log.spans.extend(spans);
    }
    shared.changed.send_modify(|n| *n += 1);
    if content_type == PROTOBUF {
        (
            [(header::CONTENT_TYPE, PROTOBUF)],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, JSON)], "{}").into_response()
    }
}

/// The spans of a request in the owned form.
fn convert(request: &ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes_of(&r.attributes).0)
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for s in &ss.spans {
                let (attributes, duplicate_keys) = attributes_of(&s.attributes);
                out.push(Span {
                    name: s.name.clone(),
                    kind: Kind::from_proto(s.kind),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    attributes,
                    duplicate_keys,
                    status: status(s.status.as_ref()),
                    events: s
                        .events
                        .iter()
                        .map(|e| Event {
                            name: e.name.clone(),
                            attributes: attributes_of(&e.attributes).0,
                        })
                        .collect(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano,
                });
            }
        }
    }
    out
}

/// Attributes by key, and the keys that came more than once.
fn attributes_of(kvs: &[KeyValue]) -> (BTreeMap<String, Attr>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut dups = Vec::new();
    for kv in kvs {
        if map
            .insert(kv.key.clone(), Attr::from_proto(kv.value.as_ref()))
            .is_some()
        {
            dups.push(kv.key.clone());
        }
    }
    (map, dups)
}

fn status(s: Option<&proto::Status>) -> Status {
    match s.map(|s| (proto::status::StatusCode::try_from(s.code), s)) {
        Some((Ok(proto::status::StatusCode::Ok), _)) => Status::Ok,
        Some((Ok(proto::status::StatusCode::Error), s)) => Status::Error(s.message.clone()),
        _ => Status::Unset,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
