//! The `scripted` provider: a deterministic model that replays a script of turns.
//!
//! **This is not an LLM.** It understands nothing: it matches the latest user message
//! against regular expressions and replays canned turns, filling in templates. It
//! exists so that tests and the offline demo exercise the real tool loop, registry,
//! bus and memory without a language model. Use [`super::openai`] for a real one.
//!
//! # Script format
//! A JSON object with a list of rules:
//! ```json
//! {"rules": [
//!   {"match": "(?i)how many tickets are open", "turns": [
//!      {"tool_calls": [{"name": "tickets_list", "arguments": {"status": "open"}}]},
//!      {"content": "There are {{result.0./count}} open tickets."}
//!   ]},
//!   {"match": "(?i)draft a first reply to ticket (?P<id>[A-Za-z0-9-]+)", "turns": [
//!      {"tool_calls": [{"name": "tickets_get", "arguments": {"id": "{{match.id}}"}}]},
//!      {"content": "Hello, thanks for reporting \"{{result.0./title}}\"."}
//!   ]},
//!   {"match": ".*", "turns": [{"content": "I can count and look up tickets."}]}
//! ]}
//! ```
//!
//! - **Rule choice**: the first rule whose `match` (a [`regex`] pattern; unanchored, so
//!   add `^…$` to match whole messages) matches the latest user message. No match is a
//!   [`ModelErrorKind::Script`] error; end with a catch-all `".*"` rule to avoid it.
//! - **Turns**: a turn has `content` (text), `tool_calls` (a list of `{name,
//!   arguments?}`, arguments default `{}`), or both. Turn *k* (0-based) answers the
//!   *k*-th model call of the run, counted as the assistant messages since the latest
//!   user message. Past the end, the last turn without tool calls is repeated (or, if
//!   every turn calls tools, the last turn: handy to test a run's step limit).
//! - **Templates** in `content`, in a tool call's `name` (`"name": "{{match.tool}}"`
//!   calls the tool the message names) and in every string inside `arguments`:
//!   - `{{message}}`: the user message;
//!   - `{{match.NAME}}`, `{{match.N}}`: a named or numbered capture group of the rule's
//!     regex (`{{match.0}}` is the whole match);
//!   - `{{result.I}}`, `{{result.I./json/pointer}}`: the result of the *I*-th tool call
//!     of this run (0-based, counting tool results since the latest user message),
//!     whole or at a [JSON pointer](https://www.rfc-editor.org/rfc/rfc6901). A failed
//!     call's result is `{"error": {"code", "message", …}}`, so
//!     `{{result.0./error/message}}` works too.
//!
//!   Strings render as themselves, other JSON values as compact JSON. In `arguments`,
//!   a string that is exactly one placeholder is replaced by the value itself, so
//!   `{"count": "{{result.0./count}}"}` passes a number on.
//! - **Checks at load time**: unknown fields, bad regexes, empty rules, turns with
//!   neither content nor tool calls, unclosed `{{`, unknown placeholders, capture
//!   groups the regex does not have, and `result.I` with fewer than *I*+1 tool calls in
//!   the rule's earlier turns are all [`ModelErrorKind::Config`] errors. A placeholder
//!   whose value is missing at run time (an optional group that did not match, a
//!   pointer into a result that lacks it) renders empty, with a warning in the log.
//!
//! Tool call ids are `call_<k>_<j>` (turn *k*, call *j*).

use std::path::Path;
use std::str::FromStr;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Message, Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, Role, ToolCall};

/// A deterministic model replaying a script ([module docs](self)). **Not an LLM.**
///
/// # Examples
/// ```
/// use weft_agents::model::scripted::ScriptedModel;
/// let model = ScriptedModel::from_json(r#"{"rules": [
///     {"match": "(?i)hello", "turns": [{"content": "Hi! You said: {{message}}"}]}
/// ]}"#)?;
/// # Ok::<(), weft_agents::model::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ScriptedModel {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Regex,
    turns: Vec<Turn>,
}

#[derive(Debug, Clone)]
struct Turn {
    content: Option<Template>,
    tool_calls: Vec<CallTemplate>,
}

#[derive(Debug, Clone)]
struct CallTemplate {
    name: Template,
    /// Strings inside were checked at load time.
    arguments: Value,
}

type Template = Vec<Segment>;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Placeholder(Placeholder),
}

#[derive(Debug, Clone, PartialEq)]
enum Placeholder {
    Message,
    MatchName(String),
    MatchIndex(usize),
    Result { index: usize, pointer: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(rename = "match")]
    pattern: String,
    turns: Vec<TurnFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnFile {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<CallFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallFile {
    name: String,
    #[serde(default = "empty_object")]
    arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl ScriptedModel {
    /// Loads a script file.
    ///
    /// # Errors
    /// [`ModelErrorKind::Config`] naming the file when it cannot be read or is not a
    /// valid script.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ScriptedModel, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ModelError::with_source(
                ModelErrorKind::Config,
                format!("cannot read the model script {}", path.display()),
                e,
            )
        })?;
        ScriptedModel::from_json(&text).map_err(|e| {
            ModelError::new(
                ModelErrorKind::Config,
                format!("model script {}: {e}", path.display()),
            )
        })
    }

    /// Loads a script from JSON text.
    ///
    /// # Errors
    /// [`ModelErrorKind::Config`] saying which rule, turn and placeholder is wrong.
    pub fn from_json(text: &str) -> Result<ScriptedModel, ModelError> {
        let config = |m: String| ModelError::new(ModelErrorKind::Config, m);
        let file: ScriptFile =
            serde_json::from_str(text).map_err(|e| config(format!("not a valid script: {e}")))?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (r, rule) in file.rules.into_iter().enumerate() {
            let at = format!("rule {r} ({:?})", rule.pattern);
            let pattern =
                Regex::new(&rule.pattern).map_err(|e| config(format!("{at}: bad regex: {e}")))?;
            if rule.turns.is_empty() {
                return Err(config(format!("{at} has no turns")));
            }
            let mut turns = Vec::with_capacity(rule.turns.len());
            let mut results_before = 0;
            for (t, turn) in rule.turns.into_iter().enumerate() {
                let at = format!("{at}, turn {t}");
                if turn.content.is_none() && turn.tool_calls.is_empty() {
                    return Err(config(format!(
                        "{at} has neither `content` nor `tool_calls`"
                    )));
                }
                let check = |s: &str| -> Result<Template, ModelError> {
                    let template = parse_template(s).map_err(|e| config(format!("{at}: {e}")))?;
                    for seg in &template {
                        if let Segment::Placeholder(p) = seg {
                            check_placeholder(p, &pattern, results_before)
                                .map_err(|e| config(format!("{at}: {e}")))?;
                        }
                    }
                    Ok(template)
                };
                let content = turn.content.as_deref().map(check).transpose()?;
                let mut tool_calls = Vec::with_capacity(turn.tool_calls.len());
                for call in turn.tool_calls {
                    visit_strings(&call.arguments, &mut |s| check(s).map(drop))?;
                    tool_calls.push(CallTemplate {
                        name: check(&call.name)?,
                        arguments: call.arguments,
                    });
                }
                results_before += tool_calls.len();
                turns.push(Turn {
                    content,
                    tool_calls,
                });
            }
            rules.push(Rule { pattern, turns });
        }
        Ok(ScriptedModel { rules })
    }
}

impl FromStr for ScriptedModel {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        ScriptedModel::from_json(s)
    }
}

fn visit_strings(
    v: &Value,
    f: &mut dyn FnMut(&str) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().try_for_each(|v| visit_strings(v, f)),
        Value::Object(o) => o.values().try_for_each(|v| visit_strings(v, f)),
        _ => Ok(()),
    }
}

const PLACEHOLDERS: &str =
    "use {{message}}, {{match.NAME}}, {{match.N}}, {{result.I}} or {{result.I./json/pointer}}";

fn parse_template(s: &str) -> Result<Template, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Segment::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in {s:?}"))?;
        out.push(Segment::Placeholder(parse_placeholder(
            after[..end].trim(),
        )?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest.to_owned()));
    }
    Ok(out)
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    let unknown = || format!("unknown placeholder {{{{{inner}}}}}: {PLACEHOLDERS}");
    if inner == "message" {
        return Ok(Placeholder::Message);
    }
    if let Some(group) = inner.strip_prefix("match.") {
        if group.is_empty() {
            return Err(unknown());
        }
        return Ok(match group.parse::<usize>() {
            Ok(n) => Placeholder::MatchIndex(n),
            Err(_) => Placeholder::MatchName(group.to_owned()),
        });
    }
    if let Some(tail) = inner.strip_prefix("result.") {
        let (index, pointer) = tail.split_once('.').unwrap_or((tail, ""));
        let index = index.parse::<usize>().map_err(|_| unknown())?;
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(format!(
                "placeholder {{{{{inner}}}}}: a JSON pointer starts with `/`, e.g. {{{{result.{index}./count}}}}"
            ));
        }
        return Ok(Placeholder::Result {
            index,
            pointer: pointer.to_owned(),
        });
    }
    Err(unknown())
}

fn check_placeholder(p: &Placeholder, pattern: &Regex, results: usize) -> Result<(), String> {
    match p {
        Placeholder::Message => Ok(()),
        Placeholder::MatchName(n) if pattern.capture_names().flatten().any(|c| c == n) => Ok(()),
        Placeholder::MatchName(n) => Err(format!(
            "{{{{match.{n}}}}}: the regex has no group named {n} (write it as (?P<{n}>...))"
        )),
        Placeholder::MatchIndex(i) if *i < pattern.captures_len() => Ok(()),
        Placeholder::MatchIndex(i) => Err(format!(
            "{{{{match.{i}}}}}: the regex has only {} capture groups",
            pattern.captures_len() - 1
        )),
        Placeholder::Result { index, .. } if *index < results => Ok(()),
        Placeholder::Result { index, .. } => Err(format!(
            "{{{{result.{index}...}}}}: only {results} tool calls come before this turn"
        )),
    }
}

/// What placeholders are filled from.
struct Context<'a> {
    message: &'a str,
    captures: regex::Captures<'a>,
    results: Vec<Value>,
}

impl Context<'_> {
    fn value(&self, p: &Placeholder) -> Option<Value> {
        let v = match p {
            Placeholder::Message => Some(Value::String(self.message.to_owned())),
            Placeholder::MatchName(n) => self
                .captures
                .name(n)
                .map(|m| Value::String(m.as_str().to_owned())),
            Placeholder::MatchIndex(i) => self
                .captures
                .get(*i)
                .map(|m| Value::String(m.as_str().to_owned())),
            Placeholder::Result { index, pointer } => self
                .results
                .get(*index)
                .and_then(|r| r.pointer(pointer))
                .cloned(),
        };
        if v.is_none() {
            tracing::warn!(placeholder = ?p, "scripted model: placeholder has no value; rendered empty");
        }
        v
    }

    fn render(&self, template: &Template) -> String {
        let mut out = String::new();
        for seg in template {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Placeholder(p) => match self.value(p) {
                    Some(Value::String(s)) => out.push_str(&s),
                    Some(v) => out.push_str(&v.to_string()),
                    None => {}
                },
            }
        }
        out
    }

    fn render_value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => {
                // Checked at load time, so it parses.
                let template = parse_template(s).unwrap_or_default();
                match template.as_slice() {
                    [Segment::Placeholder(p)] => self
                        .value(p)
                        .unwrap_or_else(|| Value::String(String::new())),
                    _ => Value::String(self.render(&template)),
                }
            }
            Value::Array(a) => Value::Array(a.iter().map(|v| self.render_value(v)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), self.render_value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Model for ScriptedModel {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let script = |m: String| ModelError::new(ModelErrorKind::Script, m);
        let last_user = request
            .messages
            .iter()
            .rposition(|m| m.role == Role::User)
            .ok_or_else(|| script("scripted model: the conversation has no user message".into()))?;
        let message = request.messages[last_user].content.as_str();
        let since: &[Message] = &request.messages[last_user + 1..];
        let (rule, captures) = self
            .rules
            .iter()
            .find_map(|r| r.pattern.captures(message).map(|c| (r, c)))
            .ok_or_else(|| {
                script(format!(
                    "scripted model: no rule of the script matches {message:?} (add a catch-all rule {{\"match\": \".*\", ...}})"
                ))
            })?;
        let k = since.iter().filter(|m| m.role == Role::Assistant).count();
        let turn = rule.turns.get(k).unwrap_or_else(|| {
            rule.turns
                .iter()
                .rev()
                .find(|t| t.tool_calls.is_empty())
                .unwrap_or_else(|| rule.turns.last().expect("rules have turns"))
        });
        let ctx = Context {
            message,
            captures,
            results: since
                .iter()
                .filter(|m| m.role == Role::Tool)
                .map(|m| {
                    serde_json::from_str(&m.content)
                        .unwrap_or_else(|_| Value::String(m.content.clone()))
                })
                .collect(),
        };
        Ok(ModelTurn {
            content: turn.content.as_ref().map(|t| ctx.render(t)),
            tool_calls: turn
                .tool_calls
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    ToolCall::new(
                        format!("call_{k}_{j}"),
                        ctx.render(&c.name),
                        ctx.render_value(&c.arguments),
                    )
                })
                .collect(),
            ..ModelTurn::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEMO: &str = r#"{"rules": [
      {"match": "(?i)how many tickets are open", "turns": [
         {"tool_calls": [{"name": "tickets_list", "arguments": {"status": "open"}}]},
         {"content": "There are {{result.0./count}} open tickets."}
      ]},
      {"match": "(?i)draft a first reply to ticket (?P<id>[A-Za-z0-9-]+)", "turns": [
         {"tool_calls": [{"name": "tickets_get", "arguments": {"id": "{{match.id}}"}}]},
         {"content": "Hello, thanks for reporting \"{{result.0./title}}\". ..."}
      ]},
      {"match": ".*", "turns": [{"content": "I can count and look up tickets. You said {{message}}."}]}
    ]}"#;

    fn request(messages: Vec<Message>) -> ModelRequest {
        ModelRequest {
            messages,
            tools: Vec::new(),
        }
    }

    #[test]
    fn templates_parse_into_text_and_placeholders() {
        assert_eq!(
            parse_template("a {{ match.id }} b {{result.1./x/0}}{{message}}").unwrap(),
            vec![
                Segment::Text("a ".into()),
                Segment::Placeholder(Placeholder::MatchName("id".into())),
                Segment::Text(" b ".into()),
                Segment::Placeholder(Placeholder::Result {
                    index: 1,
                    pointer: "/x/0".into()
                }),
                Segment::Placeholder(Placeholder::Message),
            ]
        );
        assert_eq!(
            parse_template("{{result.0}}").unwrap(),
            vec![Segment::Placeholder(Placeholder::Result {
                index: 0,
                pointer: String::new()
            })]
        );
        assert_eq!(
            parse_template("{{match.2}}").unwrap(),
            vec![Segment::Placeholder(Placeholder::MatchIndex(2))]
        );
        assert!(
            parse_template("{{foo}}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(
            parse_template("x {{message")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            parse_template("{{result.0.count}}")
                .unwrap_err()
                .contains("pointer")
        );
        assert!(parse_template("{{result.x}}").is_err());
    }

    #[tokio::test]
    async fn tool_names_are_templates_too() {
        let m = ScriptedModel::from_json(
            r#"{"rules": [{"match": "^use (?P<tool>\\w+) with (?P<text>.+)$", "turns": [
                {"tool_calls": [{"name": "{{match.tool}}", "arguments": {"text": "{{match.text}}"}}]},
                {"content": "{{result.0}}"}]}]}"#,
        )
        .unwrap();
        let request = ModelRequest {
            messages: vec![Message::user("use kb_echo with hello there")],
            ..ModelRequest::default()
        };
        let turn = m.complete(&request).await.unwrap();
        assert_eq!(turn.tool_calls[0].name, "kb_echo");
        assert_eq!(turn.tool_calls[0].arguments, json!({"text": "hello there"}));
        let bad = ScriptedModel::from_json(
            r#"{"rules": [{"match": ".*", "turns": [{"tool_calls": [{"name": "{{match.tool}}"}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("no group named tool"), "{bad}");
    }

    #[test]
    fn load_time_checks_name_the_problem() {
        let bad = |script: Value| {
            ScriptedModel::from_json(&script.to_string())
                .unwrap_err()
                .to_string()
        };
        let e = bad(json!({"rules": [{"match": "x", "turns": [{"content": "{{match.id}}"}]}]}));
        assert!(
            e.contains("no group named id") && e.contains("rule 0"),
            "{e}"
        );
        let e = bad(json!({"rules": [{"match": "x", "turns": [{"content": "{{result.0./a}}"}]}]}));
        assert!(e.contains("only 0 tool calls"), "{e}");
        let e = bad(json!({"rules": [{"match": "(", "turns": [{"content": "x"}]}]}));
        assert!(e.contains("bad regex"), "{e}");
        let e = bad(json!({"rules": [{"match": "x", "turns": []}]}));
        assert!(e.contains("no turns"), "{e}");
        let e = bad(json!({"rules": [{"match": "x", "turns": [{}]}]}));
        assert!(e.contains("neither"), "{e}");
        let e = bad(json!({"rules": [{"match": "x", "turns": [{"contents": "typo"}]}]}));
        assert!(e.contains("unknown field"), "{e}");
        let e = bad(json!({"rules": [{"match": "x", "turns": [
            {"tool_calls": [{"name": "t", "arguments": {"a": ["{{bogus}}"]}}]}]}]}));
        assert!(e.contains("turn 0") && e.contains("{{bogus}}"), "{e}");
        let e = ScriptedModel::from_file("/nonexistent/script.json").unwrap_err();
        assert_eq!(e.kind(), ModelErrorKind::Config);
        assert!(e.to_string().contains("/nonexistent/script.json"), "{e}");
    }

    #[tokio::test]
    async fn demo_script_plays_turns_with_results_and_captures() {
        let m = ScriptedModel::from_json(DEMO).unwrap();
        // Turn 0: a tool call.
        let t = m
            .complete(&request(vec![
                Message::system("be nice"),
                Message::user("How many tickets are open?"),
            ]))
            .await
            .unwrap();
        assert_eq!(t.content, None);
        assert_eq!(t.tool_calls.len(), 1);
        assert_eq!(t.tool_calls[0].name, "tickets_list");
        assert_eq!(t.tool_calls[0].arguments, json!({"status": "open"}));
        assert_eq!(t.tool_calls[0].id, "call_0_0");
        // Turn 1: content rendered from the tool result.
        let t = m
            .complete(&request(vec![
                Message::user("How many tickets are open?"),
                Message::assistant(
                    "",
                    vec![ToolCall::new("call_0_0", "tickets_list", json!({}))],
                ),
                Message::tool("call_0_0", r#"{"count": 3, "tickets": []}"#),
            ]))
            .await
            .unwrap();
        assert_eq!(t.content.as_deref(), Some("There are 3 open tickets."));
        assert!(t.tool_calls.is_empty());

        // Named captures in arguments.
        let t = m
            .complete(&request(vec![Message::user(
                "please draft a first reply to ticket T-42",
            )]))
            .await
            .unwrap();
        assert_eq!(t.tool_calls[0].arguments, json!({"id": "T-42"}));

        // The catch-all, with {{message}}; only the latest user message counts.
        let t = m
            .complete(&request(vec![
                Message::user("how many tickets are open"),
                Message::assistant("There are 3 open tickets.", vec![]),
                Message::user("thanks"),
            ]))
            .await
            .unwrap();
        assert_eq!(
            t.content.as_deref(),
            Some("I can count and look up tickets. You said thanks.")
        );
    }

    #[tokio::test]
    async fn whole_placeholders_keep_json_types_and_missing_values_render_empty() {
        let m = ScriptedModel::from_json(
            &json!({"rules": [{"match": "^go (\\w+)(?: (?P<opt>\\w+))?$", "turns": [
                {"tool_calls": [{"name": "a", "arguments": {}}]},
                {"tool_calls": [{"name": "b", "arguments": {
                    "n": "{{result.0./n}}",
                    "obj": "{{result.0./o}}",
                    "text": "n={{result.0./n}} o={{result.0./o}}",
                    "word": "{{match.1}}",
                    "opt": "[{{match.opt}}]",
                    "missing": "{{result.0./nope}}",
                    "nested": [{"w": "{{match.0}}"}]
                }}]},
                {"content": "done: {{result.1}}"}
            ]}]})
            .to_string(),
        )
        .unwrap();
        let mut msgs = vec![Message::user("go fast")];
        msgs.push(Message::assistant(
            "",
            vec![ToolCall::new("c0", "a", json!({}))],
        ));
        msgs.push(Message::tool("c0", r#"{"n": 7, "o": {"k": [1, 2]}}"#));
        let t = m.complete(&request(msgs.clone())).await.unwrap();
        assert_eq!(
            t.tool_calls[0].arguments,
            json!({
                "n": 7,
                "obj": {"k": [1, 2]},
                "text": "n=7 o={\"k\":[1,2]}",
                "word": "fast",
                "opt": "[]",
                "missing": "",
                "nested": [{"w": "go fast"}]
            })
        );
        msgs.push(Message::assistant(
            "",
            vec![ToolCall::new("c1", "b", json!({}))],
        ));
        msgs.push(Message::tool("c1", "plain text result"));
        let t = m.complete(&request(msgs.clone())).await.unwrap();
        assert_eq!(t.content.as_deref(), Some("done: plain text result"));
        // Past the end: the last content turn again.
        msgs.push(Message::assistant("done", vec![]));
        let t = m.complete(&request(msgs)).await.unwrap();
        assert!(t.content.unwrap().starts_with("done: "));
    }

    #[tokio::test]
    async fn no_matching_rule_is_a_script_error() {
        let m = ScriptedModel::from_json(
            r#"{"rules": [{"match": "^x$", "turns": [{"content": "x"}]}]}"#,
        )
        .unwrap();
        let e = m
            .complete(&request(vec![Message::user("y")]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ModelErrorKind::Script);
        assert!(e.to_string().contains("catch-all"), "{e}");
    }
}
