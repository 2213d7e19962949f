//! Invoke: request-reply to a service or agent (DESIGN §4).
//!
//! The request is an envelope (`agent.message.received`, `frame_type: request`,
//! `to: <target>`) sent as a NATS request to `P.invoke.<target>`, so "no responders" is
//! known at once. The reply inbox is also written into the envelope's `reply_to` for
//! ACP peers. The answer is `agent.response.final` (payload = result) or
//! `agent.response.error` (payload [`ErrorPayload`]).

use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use serde_json::Value;

use crate::connect::Bus;
use crate::envelope::{Envelope, ErrorCode, ErrorPayload, FrameType};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics;
use crate::publish::headers_for;
use crate::subject::Target;

/// Timeout of [`Bus::invoke`]: 30 s.
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// NATS micro header naming a service error (ADR-32).
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// NATS micro header with the numeric service error code (ADR-32).
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

impl Bus {
    /// Invokes `target` with `payload` and returns the result payload, waiting at most
    /// [`DEFAULT_INVOKE_TIMEOUT`].
    ///
    /// # Errors
    /// As [`Bus::request`].
    pub async fn invoke(&self, target: &Target, payload: Value) -> Result<Value> {
        let env = Envelope::request(target.to_string(), payload);
        let reply = self.request(target, env, DEFAULT_INVOKE_TIMEOUT).await?;
        Ok(reply.payload.unwrap_or(Value::Null))
    }

    /// Sends the request envelope `request` to `target` and waits up to `timeout` for
    /// the terminal reply. `request.reply_to` is set to the reply inbox.
    ///
    /// # Errors
    /// - [`ErrorKind::NoResponders`]: nothing serves `P.invoke.<target>`;
    /// - [`ErrorKind::Timeout`]: no reply within `timeout`;
    /// - [`ErrorKind::Remote`]: the handler answered `agent.response.error`
    ///   ([`Error::remote`] has its code and message);
    /// - [`ErrorKind::Envelope`]: the request is invalid or the reply is not an
    ///   envelope;
    /// - [`ErrorKind::Publish`]: NATS failed underneath.
    pub async fn request(
        &self,
        target: &Target,
        mut request: Envelope,
        timeout: Duration,
    ) -> Result<Envelope> {
        let target_label = target.to_string();
        let started = Instant::now();
        let result = self.request_inner(target, &mut request, timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.kind() {
                ErrorKind::Remote => "error",
                ErrorKind::Timeout => "timeout",
                ErrorKind::NoResponders => "no_responders",
                _ => "transport",
            },
        };
        let m = metrics::bus();
        m.invokes.with_label_values(&[&target_label, outcome]).inc();
        m.invoke_duration
            .with_label_values(&[&target_label])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn request_inner(
        &self,
        target: &Target,
        request: &mut Envelope,
        timeout: Duration,
    ) -> Result<Envelope> {
        let subject = self.subjects().invoke(target);
        let inbox = self.client().new_inbox();
        request.reply_to = Some(inbox.clone());
        if request.frame_type.is_none() {
            request.frame_type = Some(FrameType::Request);
        }
        request.validate()?;
        let bytes = request.to_bytes()?;
        let msg = self
            .client()
            .send_request(
                subject.clone(),
                async_nats::Request::new()
                    .payload(bytes.into())
                    .headers(headers_for(request))
                    .inbox(inbox)
                    .timeout(Some(timeout)),
            )
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => Error::new(
                    ErrorKind::NoResponders,
                    format!("no service is listening on {subject} (is `{target}` running?)"),
                ),
                RequestErrorKind::TimedOut => Error::new(
                    ErrorKind::Timeout,
                    format!("{target} did not answer within {} ms", timeout.as_millis()),
                ),
                _ => Error::with_source(
                    ErrorKind::Publish,
                    format!("request to {subject} failed"),
                    e,
                ),
            })?;
        if msg.payload.is_empty() {
            // A plain NATS micro service error: headers only.
            if let Some(h) = &msg.headers
                && let Some(text) = h.get(SERVICE_ERROR_HEADER)
            {
                let code = h
                    .get(SERVICE_ERROR_CODE_HEADER)
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                return Err(Error::from_remote(
                    &target.to_string(),
                    ErrorPayload::new(
                        ErrorCode::Other(format!("SERVICE_ERROR_{code}")),
                        text.to_string(),
                    ),
                ));
            }
        }
        let reply = Envelope::from_slice(&msg.payload).map_err(|e| {
            Error::new(
                ErrorKind::Envelope,
                format!("{target} answered with something that is not an envelope: {e}"),
            )
        })?;
        if reply.frame_type == Some(FrameType::Error) {
            let payload: ErrorPayload = serde_json::from_value(reply.payload_or_null().clone())
                .unwrap_or_else(|e| {
                    ErrorPayload::new(
                        ErrorCode::CodecFailure,
                        format!("error reply with an unreadable payload: {e}"),
                    )
                });
            return Err(Error::from_remote(&target.to_string(), payload));
        }
        Ok(reply)
    }
}
