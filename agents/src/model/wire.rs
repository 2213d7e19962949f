//! Small translations every provider adapter shares: tool call arguments, tool result
//! contents, tool names of tool messages, error excerpts.

use std::collections::HashMap;

use serde_json::Value;

use super::{Message, Role, ToolCall};

/// Parses a tool call's argument text; empty text means no arguments (`{}`). Text that
/// is not JSON is kept raw (as a JSON string) with [`ToolCall::arguments_error`] set,
/// so the tool loop sends the parse error back to the model instead of calling the
/// tool.
pub(crate) fn parse_arguments(id: String, name: String, text: &str) -> ToolCall {
    if text.trim().is_empty() {
        return ToolCall::new(id, name, Value::Object(Default::default()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => ToolCall::new(id, name, v),
        Err(e) => ToolCall {
            arguments: Value::String(text.to_owned()),
            arguments_error: Some(e.to_string()),
            ..ToolCall::new(id, name, Value::Null)
        },
    }
}

/// The arguments of `call` as a JSON object, for APIs that take an object (Anthropic's
/// `input`, Gemini's `args`, Ollama's `arguments`): an object as it is, `{}` for
/// arguments that did not parse (the tool result sent with them says why) or any
/// other value wrapped as `{"input": value}`.
pub(crate) fn arguments_object(call: &ToolCall) -> Value {
    match (&call.arguments_error, &call.arguments) {
        (Some(_), _) => Value::Object(Default::default()),
        (None, Value::Object(_)) => call.arguments.clone(),
        (None, Value::Null) => Value::Object(Default::default()),
        (None, other) => serde_json::json!({ "input": other }),
    }
}

/// A tool message's content as the tool loop writes it: the result payload as JSON
/// text, or `{"error": {code, message, …}}` ([`crate::tool::error_content`]) when the
/// call failed.
pub(crate) enum ToolContent {
    /// The call succeeded with this value (text that is not JSON becomes a string).
    Output(Value),
    /// The call failed; the error object (`{code, message, retryable, …}`).
    Error(Value),
}

impl ToolContent {
    /// Reads a tool message's content.
    pub(crate) fn parse(content: &str) -> ToolContent {
        match serde_json::from_str::<Value>(content) {
            Ok(Value::Object(map))
                if map.len() == 1 && map.get("error").is_some_and(Value::is_object) =>
            {
                ToolContent::Error(map.into_iter().next().map(|(_, v)| v).unwrap_or_default())
            }
            Ok(v) => ToolContent::Output(v),
            Err(_) => ToolContent::Output(Value::String(content.to_owned())),
        }
    }

    /// Whether the call failed.
    pub(crate) fn is_error(&self) -> bool {
        matches!(self, ToolContent::Error(_))
    }
}

/// For each tool call id in `messages`, the tool's name (APIs that answer a call by
/// name, Gemini and Ollama, need it on the tool result) and the call itself.
pub(crate) fn calls_by_id(messages: &[Message]) -> HashMap<&str, &ToolCall> {
    messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| m.tool_calls.iter())
        .map(|c| (c.id.as_str(), c))
        .collect()
}

/// The first 300 characters of `text`, for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_owned(),
    }
}

/// A fresh tool call id for APIs whose calls have none (Gemini without `id`, older
/// Ollama servers): `call_` and 16 hex digits.
pub(crate) fn new_call_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &id[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_contents_tell_errors_from_results() {
        assert!(ToolContent::parse(r#"{"error": {"code": "X", "message": "m"}}"#).is_error());
        // A result that merely has an `error` field among others is a result.
        assert!(!ToolContent::parse(r#"{"error": {"code": "X"}, "n": 1}"#).is_error());
        assert!(!ToolContent::parse(r#"{"error": "text"}"#).is_error());
        match ToolContent::parse("not json") {
            ToolContent::Output(v) => assert_eq!(v, json!("not json")),
            ToolContent::Error(_) => panic!(),
        }
    }

    #[test]
    fn arguments_objects() {
        let c = ToolCall::new("c", "t", json!({"a": 1}));
        assert_eq!(arguments_object(&c), json!({"a": 1}));
        let c = ToolCall::new("c", "t", json!(3));
        assert_eq!(arguments_object(&c), json!({"input": 3}));
        let c = parse_arguments("c".into(), "t".into(), "{oops");
        assert_eq!(arguments_object(&c), json!({}));
    }
}
