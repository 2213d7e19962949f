//! Step input templates.
//!
//! A template is any JSON value. Inside strings, `${path}` is replaced by the value at
//! `path` in the run's context:
//!
//! | path | value |
//! |---|---|
//! | `trigger` | the trigger envelope (`trigger.event_id`, `trigger.payload.title`, …) |
//! | `steps.<name>.output` | a finished step's output |
//! | `run.id`, `flow.name` | the run id and flow name |
//!
//! A string that is exactly one placeholder becomes the value itself (an object stays
//! an object); placeholders inside longer strings are rendered as text (strings as
//! they are, other values as compact JSON). A path that does not resolve is an error:
//! the step fails rather than sending a silently empty input.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// What placeholders resolve against: the whole context as one JSON value, or a
/// [`Run`](crate::run::Run), which finds `trigger.payload…` and `steps.<name>.output…`
/// in place instead of building the context first.
pub trait Context {
    /// The value at the dot-separated `path`.
    ///
    /// # Errors
    /// `${path} does not resolve (no "part")`, naming the first part missing.
    fn lookup(&self, path: &str) -> Result<Cow<'_, Value>, String>;
}

impl Context for Value {
    fn lookup(&self, path: &str) -> Result<Cow<'_, Value>, String> {
        descend(self, path, Some(path)).map(Cow::Borrowed)
    }
}

/// The value at `rest` (dot-separated parts, none for `root` itself) inside `root`,
/// which is the value at the start of `path`; errors name `path`.
///
/// # Errors
/// As [`Context::lookup`].
pub fn descend<'a>(root: &'a Value, path: &str, rest: Option<&str>) -> Result<&'a Value, String> {
    let mut v = root;
    for part in rest.into_iter().flat_map(|r| r.split('.')) {
        v = match v {
            Value::Object(m) => m.get(part),
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("${{{path}}} does not resolve (no {part:?})"))?;
    }
    Ok(v)
}

/// Renders `template` against `context`.
///
/// # Errors
/// A message naming the first placeholder that does not resolve or is unterminated.
pub fn render(template: &Value, context: &(impl Context + ?Sized)) -> Result<Value, String> {
    match template {
        Value::String(s) => render_string(s, context),
        Value::Array(items) => items
            .iter()
            .map(|v| render(v, context))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render(v, context)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn render_string(s: &str, context: &(impl Context + ?Sized)) -> Result<Value, String> {
    if let Some(path) = whole_placeholder(s) {
        return context.lookup(path).map(Cow::into_owned);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated placeholder in {s:?}"))?;
        match &*context.lookup(after[..end].trim())? {
            Value::String(v) => out.push_str(v),
            v => out.push_str(&v.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn whole_placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("${")?.strip_suffix('}')?;
    (!inner.contains("${") && !inner.contains('}')).then_some(inner.trim())
}

/// The step names a template refers to through `${steps.<name>…}`.
pub fn step_references(template: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(template, &mut out);
    out
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else { break };
                if let Some(path) = after[..end].trim().strip_prefix("steps.")
                    && let Some(name) = path.split('.').next()
                {
                    out.push(name.to_owned());
                }
                rest = &after[end + 1..];
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        Value::Object(m) => m.values().for_each(|i| collect(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "trigger": {"event_id": "e1", "payload": {"title": "Hi", "n": 3}},
            "steps": {"classify": {"output": {"category": "account"}}},
            "run": {"id": "r1"}
        })
    }

    #[test]
    fn whole_placeholders_keep_their_type() {
        assert_eq!(
            render(&json!("${steps.classify.output}"), &ctx()).unwrap(),
            json!({"category": "account"})
        );
        assert_eq!(
            render(&json!("${trigger.payload.n}"), &ctx()).unwrap(),
            json!(3)
        );
    }

    #[test]
    fn embedded_placeholders_render_as_text() {
        let t = json!({"m": "ticket ${trigger.event_id}: ${trigger.payload.title} (${trigger.payload.n})", "k": [1, "${run.id}"]});
        assert_eq!(
            render(&t, &ctx()).unwrap(),
            json!({"m": "ticket e1: Hi (3)", "k": [1, "r1"]})
        );
    }

    #[test]
    fn unknown_paths_are_errors() {
        let err = render(&json!("x ${trigger.payload.nope}"), &ctx()).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        assert!(render(&json!("${oops"), &ctx()).is_err());
    }

    #[test]
    fn step_references_are_found() {
        let t = json!({"a": "${steps.one.output.x} and ${steps.two.output}", "b": ["${trigger}"]});
        assert_eq!(step_references(&t), vec!["one", "two"]);
    }
}
