//! The hand-written twin (`hand`): what a Rust developer writes for the same work
//! without Weft, with `async-nats` and `serde_json`.
//!
//! Per message it builds the envelope-shaped JSON object of the scenario (the same
//! fields Weft puts on the wire, from a [`Shape`] taken once from Weft's envelope),
//! with a fresh `event_id` (UUIDv7) and `occurred_at` (RFC 3339, now), encodes it with
//! `serde_json::to_vec`, and sends it with the headers Weft sends (`Nats-Msg-Id`).
//! Whoever receives it decodes it into a `serde_json::Value` ([`decode`]), requests
//! and replies alike. There is no validation, tracing, metrics or middleware: the
//! difference between `hand` and `weft` is what those cost, and the difference between
//! `hand` and `raw` (the same bytes, never built nor read) is what JSON costs.

use async_nats::HeaderMap;
use serde_json::{Map, Value};
use weft_bus::Envelope;
use weft_bus::publish::MSG_ID_HEADER;

/// The fields of one kind of envelope, as a JSON object to fill per message.
#[derive(Debug, Clone)]
pub struct Shape {
    fields: Map<String, Value>,
}

impl Shape {
    /// The shape of `env` as Weft encodes it.
    ///
    /// # Errors
    /// When `env` cannot be encoded.
    pub fn of(env: &Envelope) -> anyhow::Result<Shape> {
        match serde_json::from_slice(&env.to_bytes()?)? {
            Value::Object(fields) => Ok(Shape { fields }),
            other => anyhow::bail!("an envelope encodes as an object, not {other}"),
        }
    }

    /// A new message of this shape: the encoded object with a fresh `event_id` and
    /// `occurred_at`, and its `Nats-Msg-Id` header.
    pub fn message(&self) -> (Vec<u8>, HeaderMap) {
        self.message_with(|_| {})
    }

    /// A reply of this shape to the decoded `request`: as [`Shape::message`], with
    /// `correlation_id` set to the request's `event_id`.
    pub fn reply_to(&self, request: &Value) -> (Vec<u8>, HeaderMap) {
        self.message_with(|fields| {
            fields.insert(
                "correlation_id".into(),
                request.get("event_id").cloned().unwrap_or(Value::Null),
            );
        })
    }

    fn message_with(&self, fill: impl FnOnce(&mut Map<String, Value>)) -> (Vec<u8>, HeaderMap) {
        let mut fields = self.fields.clone();
        let id = uuid::Uuid::now_v7().to_string();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        fields.insert("event_id".into(), Value::String(id.clone()));
        fields.insert("occurred_at".into(), Value::String(now));
        fill(&mut fields);
        // A map of JSON values always encodes.
        let bytes = serde_json::to_vec(&fields).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, id.as_str());
        (bytes, headers)
    }
}

/// A received message decoded as a hand-written receiver would: into a
/// `serde_json::Value`, which must be an object.
///
/// # Errors
/// The decoding error, or what the value was instead of an object, as text.
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(v) => Err(format!("not a JSON object: {v}")),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_messages_have_weft_fields_and_fresh_ids() {
        let env = Envelope::new("bench.hand").with_payload(serde_json::json!({"a": 1}));
        let shape = Shape::of(&env).unwrap();
        let (a, ha) = shape.message();
        let (b, _) = shape.message();
        let (a, b) = (decode(&a).unwrap(), decode(&b).unwrap());
        assert_ne!(a["event_id"], b["event_id"]);
        assert_ne!(a["event_id"], env.event_id.as_str());
        assert_eq!(ha.get(MSG_ID_HEADER).unwrap().as_str(), a["event_id"]);
        // Weft reads what the hand twin writes: the same envelope, other id and time.
        let back = Envelope::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(back.payload, env.payload);
        assert_eq!(back.event_type, env.event_type);
        let (reply, _) = shape.reply_to(&a);
        assert_eq!(decode(&reply).unwrap()["correlation_id"], a["event_id"]);
        assert!(decode(b"[1]").unwrap_err().contains("not a JSON object"));
        assert!(decode(b"{").unwrap_err().contains("not JSON"));
    }
}
