//! HTTP plumbing shared by the native adapters ([`anthropic`](super::anthropic),
//! [`gemini`](super::gemini), [`ollama`](super::ollama)): one place for timeouts,
//! retries and the mapping of HTTP failures onto [`ModelErrorKind`].
//!
//! - **Timeout** ([`DEFAULT_TIMEOUT`], 60 s): per attempt. For a whole answer
//!   ([`Model::complete`](super::Model::complete)) it bounds sending the request and
//!   reading the whole body; for a stream it bounds the wait for the response head and
//!   then each gap between two body chunks (an idle timeout), so a long answer that
//!   keeps streaming is not cut. An attempt that times out ends the call with
//!   [`ModelErrorKind::Timeout`] (not retried: a model that was too slow once is
//!   likely to be again, and the caller's own deadline keeps running).
//! - **Retries** ([`RetryPolicy`], default 3 attempts in all): HTTP 429, HTTP 5xx
//!   (including Anthropic's 529 `overloaded_error`) and connection failures are tried
//!   again after an exponential back-off (500 ms, 1 s, … at most 8 s, less up to a
//!   quarter of jitter), or after what the server asks for: `retry-after-ms`
//!   (milliseconds, sent by Anthropic and OpenAI), `Retry-After` in seconds or as an
//!   HTTP date (RFC 9110 §10.2.3), or a Google `RetryInfo.retryDelay` in the error
//!   body. A wait longer than [`RetryPolicy::max_retry_after`] is not waited for: the
//!   call fails at once, saying how long the server asked to wait. A server's
//!   `x-should-retry: true|false` header (Anthropic's SDKs obey it) overrides the
//!   status rule. Only the request head is retried: once a stream has begun, a failure
//!   ends the call (text already handed on stays handed on).
//! - **Errors**: HTTP 401 and 403 are [`ModelErrorKind::Auth`] (the message names the
//!   key variable), 408 [`ModelErrorKind::Timeout`], 429
//!   [`ModelErrorKind::RateLimited`], 5xx [`ModelErrorKind::Unavailable`], any other
//!   4xx [`ModelErrorKind::Rejected`], each with the provider's own error message;
//!   a connection that cannot be made or breaks is [`ModelErrorKind::Connect`]; a body
//!   that is not the provider's format is [`ModelErrorKind::InvalidResponse`].
//! - **Cancellation** is dropping the future: no task is spawned, so the connection,
//!   the body being read and any back-off sleep end with it.
//! - **TLS**: rustls with the `ring` provider, installed as the process default the
//!   first time a model is built (unless the process installed another before); no
//!   aws-lc.

use std::pin::Pin;
use std::sync::Once;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use super::wire::excerpt;
use super::{ModelError, ModelErrorKind};

/// Default timeout of one HTTP attempt (see the [module docs](self)): 60 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How failed requests are tried again ([module docs](self)).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use weft_agents::model::http::RetryPolicy;
/// let patient = RetryPolicy { max_attempts: 5, ..RetryPolicy::default() };
/// assert_eq!(patient.initial_backoff, Duration::from_millis(500));
/// assert_eq!(RetryPolicy::none().max_attempts, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1. Default 3.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one. Default 500 ms.
    pub initial_backoff: Duration,
    /// Longest back-off between attempts. Default 8 s.
    pub max_backoff: Duration,
    /// Longest server-requested wait (`Retry-After` and the like) that is waited for;
    /// a longer one ends the call with the error at once. Default 60 s.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The back-off before retry number `retry` (1-based): `initial × 2^(retry-1)`,
    /// at most `max_backoff`, less up to 25 % of jitter.
    fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(16))
            .min(self.max_backoff);
        // Jitter from a random UUID: no extra dependency for 8 random bits.
        let r = (uuid::Uuid::new_v4().as_u128() & 0xff) as f64 / 255.0;
        base.mul_f64(1.0 - 0.25 * r)
    }
}

/// What a provider's error body says: its message and, if it says so, how long to wait
/// before trying again.
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    pub(crate) message: Option<String>,
    pub(crate) retry_after: Option<Duration>,
}

/// Reads a provider's error body.
pub(crate) type ErrorReader = fn(&[u8]) -> ErrorBody;

/// A chunked response body whose chunks each arrive within the idle timeout.
pub(crate) type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, ModelError>> + Send>>;

/// The HTTP side of one native model: client, timeout, retries and error mapping.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    /// `anthropic model claude-… at https://…`: how error messages name the model.
    at: String,
    timeout: Duration,
    retry: RetryPolicy,
    /// The variable holding the API key, named in authentication errors.
    key_var: Option<&'static str>,
    read_error: ErrorReader,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("at", &self.at)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// What the builder of every provider on this module holds: where the API is, its
/// key, the model, the time one attempt may take, how to retry. `Debug` prints the
/// key as `***`.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) api_key: Option<String>,
    pub(crate) model: String,
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Settings {
    /// `url` and `model`, no key, [`DEFAULT_TIMEOUT`], the default retry policy.
    pub(crate) fn new(url: &str, model: &str) -> Settings {
        Settings {
            url: url.into(),
            api_key: None,
            model: model.into(),
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }

    /// These settings with `url_var`, `key_var` and `WEFT_MODEL` read with `var`
    /// where set.
    pub(crate) fn read(
        mut self,
        var: &dyn Fn(&str) -> Option<String>,
        url_var: &str,
        key_var: &str,
    ) -> Settings {
        if let Some(url) = var(url_var) {
            self.url = url;
        }
        if let Some(key) = var(key_var) {
            self.api_key = Some(key);
        }
        if let Some(model) = var("WEFT_MODEL") {
            self.model = model;
        }
        self
    }

    /// The key, trimmed, after `prefix` (e.g. `Bearer `), as a sensitive header
    /// value; `None` when unset or blank.
    ///
    /// # Errors
    /// [`ModelErrorKind::Config`] naming `provider` when the key is no valid header
    /// value.
    pub(crate) fn key_header(
        &self,
        provider: &str,
        prefix: &str,
    ) -> Result<Option<HeaderValue>, ModelError> {
        let Some(key) = self
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
        else {
            return Ok(None);
        };
        let mut value = HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| {
            ModelError::new(
                ModelErrorKind::Config,
                format!("the {provider} API key is not a valid HTTP header value"),
            )
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Checks that `url` is an `http(s)://` URL and drops trailing slashes.
pub(crate) fn base_url(url: &str) -> Result<String, ModelError> {
    let url = url.trim().trim_end_matches('/').to_owned();
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err(ModelError::new(
            ModelErrorKind::Config,
            format!("model base URL {url:?} is not an http:// or https:// URL"),
        ))
    }
}

/// Installs rustls' `ring` provider as the process default once, so reqwest (built
/// with `rustls-no-provider`) can make TLS connections. Does nothing when another
/// provider is installed already.
pub(crate) fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// A failed attempt: the error, and how long the server asked to wait.
struct Failure {
    error: ModelError,
    retry_after: Option<Duration>,
    /// The server's `x-should-retry`, when sent.
    should_retry: Option<bool>,
}

impl From<ModelError> for Failure {
    fn from(error: ModelError) -> Self {
        Failure {
            error,
            retry_after: None,
            should_retry: None,
        }
    }
}

/// What one successful attempt gives: the whole body, or the response to stream.
enum Sent {
    Body(Bytes),
    Head(reqwest::Response),
}

impl Http {
    /// A client for the model named by `at` (`provider model M at URL`).
    pub(crate) fn new(
        at: String,
        timeout: Duration,
        retry: RetryPolicy,
        key_var: Option<&'static str>,
        read_error: ErrorReader,
    ) -> Result<Http, ModelError> {
        install_crypto_provider();
        // No overall timeout on the client: each attempt is bounded here, and a
        // stream's body by an idle timeout (module docs).
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| {
                ModelError::with_source(
                    ModelErrorKind::Config,
                    "cannot build the HTTP client for the model",
                    e,
                )
            })?;
        Ok(Http {
            client,
            at,
            timeout,
            retry: RetryPolicy {
                max_attempts: retry.max_attempts.max(1),
                ..retry
            },
            key_var,
            read_error,
        })
    }

    /// How error messages name the model: `provider model M at URL`.
    pub(crate) fn at(&self) -> &str {
        &self.at
    }

    /// POSTs `body` as JSON to `url` and returns the whole answer body (HTTP 2xx),
    /// with retries ([module docs](self)).
    pub(crate) async fn post_json(
        &self,
        url: &str,
        headers: &HeaderMap,
        body: &Value,
    ) -> Result<Bytes, ModelError> {
        match self.send(url, headers, body, true).await? {
            Sent::Body(b) => Ok(b),
            Sent::Head(_) => unreachable!("a whole body was asked for"),
        }
    }

    /// POSTs `body` as JSON to `url` and returns the answer body as chunks, each within
    /// the idle timeout, once the server answered HTTP 2xx (with retries until then).
    pub(crate) async fn post_stream(
        &self,
        url: &str,
        headers: &HeaderMap,
        body: &Value,
    ) -> Result<Chunks, ModelError> {
        let response = match self.send(url, headers, body, false).await? {
            Sent::Head(r) => r,
            Sent::Body(_) => unreachable!("a streamed body was asked for"),
        };
        let idle = self.timeout;
        let at = self.at.clone();
        let chunks = response.bytes_stream();
        Ok(Box::pin(futures::stream::unfold(
            (Box::pin(chunks), at),
            move |(mut chunks, at)| async move {
                let item = match tokio::time::timeout(idle, chunks.next()).await {
                    Err(_) => Err(ModelError::new(
                        ModelErrorKind::Timeout,
                        format!(
                            "{at} sent nothing for {} s in the middle of its answer",
                            idle.as_secs_f64()
                        ),
                    )),
                    Ok(None) => return None,
                    Ok(Some(Ok(b))) => Ok(b),
                    Ok(Some(Err(e))) => Err(ModelError::with_source(
                        ModelErrorKind::Connect,
                        format!("{at}: the connection broke in the middle of the answer"),
                        e,
                    )),
                };
                Some((item, (chunks, at)))
            },
        )))
    }

    async fn send(
        &self,
        url: &str,
        headers: &HeaderMap,
        body: &Value,
        whole: bool,
    ) -> Result<Sent, ModelError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            ModelError::with_source(
                ModelErrorKind::Config,
                format!("{}: cannot encode the request", self.at),
                e,
            )
        })?;
        let body = Bytes::from(body);
        let mut attempt = 1;
        loop {
            let failure =
                match tokio::time::timeout(self.timeout, self.attempt(url, headers, &body, whole))
                    .await
                {
                    Ok(Ok(sent)) => return Ok(sent),
                    Ok(Err(f)) => f,
                    Err(_) => Failure::from(ModelError::new(
                        ModelErrorKind::Timeout,
                        format!(
                            "{} did not answer within {} s",
                            self.at,
                            self.timeout.as_secs_f64()
                        ),
                    )),
                };
            let retryable = failure.should_retry.unwrap_or(matches!(
                failure.error.kind(),
                ModelErrorKind::RateLimited | ModelErrorKind::Unavailable | ModelErrorKind::Connect
            ));
            let tried = if attempt > 1 {
                format!(" (after {attempt} attempts)")
            } else {
                String::new()
            };
            if !retryable || attempt >= self.retry.max_attempts {
                return Err(with_suffix(failure.error, &tried));
            }
            let delay = match failure.retry_after {
                Some(d) if d > self.retry.max_retry_after => {
                    return Err(with_suffix(
                        failure.error,
                        &format!(
                            "; the server asks to wait {} s before trying again, longer than the {} s this client waits{tried}",
                            d.as_secs_f64().ceil(),
                            self.retry.max_retry_after.as_secs_f64()
                        ),
                    ));
                }
                Some(d) => d,
                None => self.retry.backoff(attempt),
            };
            tracing::debug!(
                model = %self.at,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "model request failed; trying again"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        url: &str,
        headers: &HeaderMap,
        body: &Bytes,
        whole: bool,
    ) -> Result<Sent, Failure> {
        let response = self
            .client
            .post(url)
            .headers(headers.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(body.clone())
            .send()
            .await
            .map_err(|e| {
                ModelError::with_source(
                    ModelErrorKind::Connect,
                    format!("cannot reach {} (is the server running?)", self.at),
                    e,
                )
            })?;
        let status = response.status();
        if status.is_success() {
            if !whole {
                return Ok(Sent::Head(response));
            }
            return response.bytes().await.map(Sent::Body).map_err(|e| {
                ModelError::with_source(
                    ModelErrorKind::Connect,
                    format!("{}: the connection broke while reading the answer", self.at),
                    e,
                )
                .into()
            });
        }
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let should_retry = response
            .headers()
            .get(HeaderName::from_static("x-should-retry"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| match v {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            });
        let bytes = response.bytes().await.unwrap_or_default();
        let said = (self.read_error)(&bytes);
        let message = said
            .message
            .unwrap_or_else(|| excerpt(&String::from_utf8_lossy(&bytes)));
        let code = status.as_u16();
        let kind = status_kind(code);
        let hint = match (kind, self.key_var) {
            (ModelErrorKind::Auth, Some(var)) => format!(" (check {var})"),
            _ => String::new(),
        };
        Err(Failure {
            error: ModelError::new(
                kind,
                format!("{} answered HTTP {code}: {message}{hint}", self.at),
            ),
            retry_after: retry_after.or(said.retry_after),
            should_retry,
        })
    }

    /// An [`ModelErrorKind::InvalidResponse`] error: the answer is not what the
    /// provider documents.
    pub(crate) fn invalid(&self, what: impl std::fmt::Display) -> ModelError {
        ModelError::new(
            ModelErrorKind::InvalidResponse,
            format!("{} answered {what}", self.at),
        )
    }
}

/// The error kind of an HTTP failure status.
pub(crate) fn status_kind(code: u16) -> ModelErrorKind {
    match code {
        401 | 403 => ModelErrorKind::Auth,
        408 => ModelErrorKind::Timeout,
        429 => ModelErrorKind::RateLimited,
        500..=599 => ModelErrorKind::Unavailable,
        _ => ModelErrorKind::Rejected,
    }
}

fn with_suffix(e: ModelError, suffix: &str) -> ModelError {
    if suffix.is_empty() {
        return e;
    }
    ModelError::new(e.kind(), format!("{}{suffix}", e.message()))
}

/// The wait a failed response asks for: `retry-after-ms` (milliseconds), else
/// `Retry-After` as seconds (a fraction allowed) or as an HTTP date (a date in the
/// past is no wait).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Splits a chunked body into lines (for NDJSON), without the line ends; a last line
/// without a newline counts too.
pub(crate) fn lines(chunks: Chunks) -> impl Stream<Item = Result<String, ModelError>> + Send {
    futures::stream::unfold(
        (chunks, Vec::<u8>::new(), false),
        |(mut chunks, mut buf, mut done)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                    return Some((Ok(line), (chunks, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    buf.clear();
                    return Some((Ok(line), (chunks, buf, done)));
                }
                match chunks.next().await {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => return Some((Err(e), (chunks, buf, true))),
                    None => done = true,
                }
            }
        },
    )
}

/// The server-sent events of a chunked body, parsed by `eventsource-stream`.
pub(crate) fn events(
    chunks: Chunks,
    at: String,
) -> impl Stream<Item = Result<eventsource_stream::Event, ModelError>> + Send {
    use eventsource_stream::{EventStreamError, Eventsource};
    chunks.eventsource().map(move |item| {
        item.map_err(|e| match e {
            EventStreamError::Transport(e) => e,
            EventStreamError::Utf8(e) => ModelError::with_source(
                ModelErrorKind::InvalidResponse,
                format!("{at} sent an event stream that is not UTF-8"),
                e,
            ),
            EventStreamError::Parser(e) => ModelError::new(
                ModelErrorKind::InvalidResponse,
                format!("{at} sent a malformed event stream: {e}"),
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(500)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&earlier).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        for (retry, full) in [(1, 500), (2, 1000), (3, 2000), (5, 8000), (30, 8000)] {
            let d = p.backoff(retry).as_millis() as u64;
            assert!(d <= full && d >= full * 3 / 4, "retry {retry}: {d} ms");
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(status_kind(401), ModelErrorKind::Auth);
        assert_eq!(status_kind(403), ModelErrorKind::Auth);
        assert_eq!(status_kind(429), ModelErrorKind::RateLimited);
        assert_eq!(status_kind(529), ModelErrorKind::Unavailable);
        assert_eq!(status_kind(404), ModelErrorKind::Rejected);
    }

    #[tokio::test]
    async fn lines_split_across_chunks() {
        let chunks: Chunks = Box::pin(futures::stream::iter(
            ["{\"a\":1}\n{\"b\"", ":2}\r\n", "{\"c\":3}"]
                .map(|s| Ok(Bytes::from_static(s.as_bytes()))),
        ));
        let got: Vec<String> = lines(chunks).map(|l| l.unwrap()).collect().await;
        assert_eq!(got, [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
    }
}
