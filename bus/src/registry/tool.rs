//! Tools from endpoints (DESIGN §12): the one rule that turns registry entries into
//! tools, shared by an agent's tool list (`weft-agents`) and the MCP server
//! (`weft-gateway`), which cannot link each other.
//!
//! | tool field | from the endpoint `E` of service (or agent) `S` |
//! |---|---|
//! | name | `S_E` ([`tool_name`]), e.g. `tickets_classify`, `support_chat`; at most [`MAX_TOOL_NAME_LEN`] characters |
//! | description | the endpoint's description, else `Invokes S.E` |
//! | input schema | the endpoint's input schema when it describes an object; a non-object schema is wrapped as `{"input": …}` ([`WRAPPED_INPUT_KEY`]) and unwrapped on call ([`Tool::payload`]); no schema is `{"type": "object"}` |
//! | output schema | the endpoint's output schema when it describes an object, else none |
//! | annotations | the endpoint metadata's `title` (string) and `readOnlyHint`, `destructiveHint`, `idempotentHint`, `openWorldHint` (booleans), [`ANNOTATION_KEYS`] |
//! | call | invoke `P.invoke.S.E` with [`Tool::payload`] of the arguments |
//!
//! An endpoint that is also its service's default is listed once, under its own name.
//! Names are `[A-Za-z0-9_-]` because service and endpoint names are subject tokens,
//! so they fit every model API and MCP. Two endpoints that map to one name (service
//! `a_b` endpoint `c` and service `a` endpoint `b_c`), or a name longer than
//! [`MAX_TOOL_NAME_LEN`], are [`ToolProblem`]s that [`ToolSet`] reports (the first, in
//! name order, keeps the name); nothing is shadowed silently: the MCP server logs them
//! as warnings, `weft ls` prints them.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::registry::{EndpointInfo, Kind, Registration};
use crate::subject::{ServiceName, Target};

/// Longest tool name: 64 characters, what OpenAI-compatible model APIs accept.
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// The property a non-object input is wrapped in: `{"input": <payload>}`.
pub const WRAPPED_INPUT_KEY: &str = "input";

/// Endpoint metadata keys that become tool annotations (MCP 2025-06-18
/// `ToolAnnotations`), booleans; `title` (a string) is taken too.
pub const ANNOTATION_KEYS: [&str; 4] = [
    "readOnlyHint",
    "destructiveHint",
    "idempotentHint",
    "openWorldHint",
];

/// The tool name of `endpoint` of `service`: `<service>_<endpoint>`.
pub fn tool_name(service: &str, endpoint: &str) -> String {
    format!("{service}_{endpoint}")
}

/// One endpoint as a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// `<service>_<endpoint>`.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of the arguments; always an object schema.
    pub input_schema: Value,
    /// JSON Schema of an object result, when the endpoint declares one.
    pub output_schema: Option<Value>,
    /// `title` and the `…Hint` booleans from the endpoint metadata.
    pub annotations: Map<String, Value>,
    /// The endpoint's whole metadata (bridges read their own keys, e.g. `mcp.content`).
    pub metadata: Map<String, Value>,
    /// What a call invokes: `<service>.<endpoint>`.
    pub target: Target,
    /// Whether the registration is a service or an agent.
    pub kind: Kind,
    /// True when the endpoint streams `delta` frames.
    pub streaming: bool,
    wrapped: bool,
}

impl Tool {
    /// The tool of `endpoint` of `registration`.
    ///
    /// # Errors
    /// The reason, when the registration's service name or the endpoint's name is
    /// not a token (a malformed registry entry).
    pub fn from_endpoint(
        registration: &Registration,
        endpoint: &EndpointInfo,
    ) -> Result<Tool, String> {
        let service: ServiceName = registration
            .name
            .parse()
            .map_err(|e| format!("invalid service name: {e}"))?;
        let target = Target::endpoint(service, &endpoint.name)
            .map_err(|e| format!("invalid endpoint name: {e}"))?;
        let (input_schema, wrapped) = match &endpoint.input_schema {
            None => (json!({"type": "object"}), false),
            Some(s) if describes_object(s) => (s.clone(), false),
            Some(s) => (
                json!({
                    "type": "object",
                    "properties": { WRAPPED_INPUT_KEY: s },
                    "required": [WRAPPED_INPUT_KEY],
                }),
                true,
            ),
        };
        let description = if endpoint.description.is_empty() {
            format!("Invokes {}.{}", registration.name, endpoint.name)
        } else {
            endpoint.description.clone()
        };
        let annotations = endpoint
            .metadata
            .iter()
            .filter(|(k, v)| {
                (ANNOTATION_KEYS.contains(&k.as_str()) && v.is_boolean())
                    || (k.as_str() == "title" && v.is_string())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Tool {
            name: tool_name(&registration.name, &endpoint.name),
            description,
            input_schema,
            output_schema: endpoint.output_schema.clone().filter(describes_object),
            annotations,
            metadata: endpoint.metadata.clone(),
            target,
            kind: registration.kind,
            streaming: endpoint.streaming,
            wrapped,
        })
    }

    /// True when the endpoint's input is not an object and the arguments wrap it as
    /// `{"input": …}`.
    pub fn is_wrapped(&self) -> bool {
        self.wrapped
    }

    /// The invoke payload for `arguments`: the arguments themselves, or the value of
    /// their `input` property for a wrapped input (`null` when it is missing).
    pub fn payload(&self, arguments: Value) -> Value {
        match arguments {
            Value::Object(mut args) if self.wrapped => {
                args.remove(WRAPPED_INPUT_KEY).unwrap_or(Value::Null)
            }
            other => other,
        }
    }
}

/// True for a schema of objects: `"type": "object"` (or a type list with only
/// `"object"`), or no `type` but `properties`.
fn describes_object(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => !ts.is_empty() && ts.iter().all(|t| t == "object"),
        Some(_) => false,
        None => schema.get("properties").is_some_and(Value::is_object),
    }
}

/// An endpoint left out of a [`ToolSet`], and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolProblem {
    /// The tool name it would have had.
    pub tool: String,
    /// The endpoint, `<service>.<endpoint>`.
    pub endpoint: String,
    /// Why it was left out, e.g. `tool name a_b_c is already a.b_c's`.
    pub reason: String,
}

/// The tools of a set of registrations, by the rule of the [module docs](self), with
/// the endpoints that could not be tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolSet {
    tools: Vec<Tool>,
    problems: Vec<ToolProblem>,
}

impl ToolSet {
    /// The tools of every endpoint of `registrations`, taken in (name, kind) order so
    /// that a name conflict always keeps the same endpoint. Give one registration per
    /// service (e.g. [`RegistryWatch::newest_each`](crate::registry::RegistryWatch::newest_each)).
    pub fn from_registrations<'a>(
        registrations: impl IntoIterator<Item = &'a Registration>,
    ) -> ToolSet {
        let mut registrations: Vec<&Registration> = registrations.into_iter().collect();
        registrations.sort_by(|a, b| (&a.name, a.kind).cmp(&(&b.name, b.kind)));
        let mut set = ToolSet::default();
        for r in registrations {
            for e in &r.endpoints {
                let endpoint = format!("{}.{}", r.name, e.name);
                let problem = |tool: String, reason: String| ToolProblem {
                    tool,
                    endpoint: endpoint.clone(),
                    reason,
                };
                let tool = match Tool::from_endpoint(r, e) {
                    Ok(t) => t,
                    Err(reason) => {
                        set.problems
                            .push(problem(tool_name(&r.name, &e.name), reason));
                        continue;
                    }
                };
                if tool.name.len() > MAX_TOOL_NAME_LEN {
                    let reason = format!(
                        "tool name is {} characters, more than {MAX_TOOL_NAME_LEN}",
                        tool.name.len()
                    );
                    set.problems.push(problem(tool.name, reason));
                } else if let Some(first) = set.get(&tool.name) {
                    let reason = format!("tool name {} is already {}'s", tool.name, first.target);
                    set.problems.push(problem(tool.name, reason));
                } else {
                    set.tools.push(tool);
                }
            }
        }
        set
    }

    /// The tools, in (service name, endpoint) order.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The endpoints left out, and why.
    pub fn problems(&self) -> &[ToolProblem] {
        &self.problems
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(name: &str, endpoints: Vec<EndpointInfo>) -> Registration {
        let mut r = Registration::new(Kind::Service, name, "1.0.0");
        r.endpoints = endpoints;
        r
    }

    fn endpoint(name: &str, input: Option<Value>) -> EndpointInfo {
        EndpointInfo {
            name: name.into(),
            subject: format!("weft.invoke.x.{name}"),
            description: String::new(),
            input_schema: input,
            output_schema: None,
            default: false,
            streaming: false,
            metadata: Map::new(),
        }
    }

    #[test]
    fn an_object_schema_is_the_input_schema_and_arguments_are_the_payload() {
        let schema = json!({"type": "object", "properties": {"id": {"type": "string"}}});
        let r = registration("tickets", vec![endpoint("get", Some(schema.clone()))]);
        let set = ToolSet::from_registrations([&r]);
        let tool = set.get("tickets_get").unwrap();
        assert_eq!(tool.input_schema, schema);
        assert_eq!(tool.description, "Invokes tickets.get");
        assert_eq!(tool.target.to_string(), "tickets.get");
        assert!(!tool.is_wrapped());
        assert_eq!(tool.payload(json!({"id": "T-1"})), json!({"id": "T-1"}));
    }

    #[test]
    fn a_missing_schema_is_any_object() {
        let r = registration("clock", vec![endpoint("now", None)]);
        let set = ToolSet::from_registrations([&r]);
        assert_eq!(
            set.get("clock_now").unwrap().input_schema,
            json!({"type": "object"})
        );
    }

    #[test]
    fn a_non_object_input_is_wrapped_and_unwrapped() {
        let r = registration(
            "text",
            vec![endpoint("upper", Some(json!({"type": "string"})))],
        );
        let set = ToolSet::from_registrations([&r]);
        let tool = set.get("text_upper").unwrap();
        assert!(tool.is_wrapped());
        assert_eq!(
            tool.input_schema,
            json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]})
        );
        assert_eq!(tool.payload(json!({"input": "abc"})), json!("abc"));
        assert_eq!(tool.payload(json!({})), Value::Null);
    }

    #[test]
    fn only_object_output_schemas_are_kept() {
        let mut obj = endpoint("a", None);
        obj.output_schema = Some(json!({"type": "object"}));
        let mut text = endpoint("b", None);
        text.output_schema = Some(json!({"type": "string"}));
        let r = registration("s", vec![obj, text]);
        let set = ToolSet::from_registrations([&r]);
        assert_eq!(
            set.get("s_a").unwrap().output_schema,
            Some(json!({"type": "object"}))
        );
        assert_eq!(set.get("s_b").unwrap().output_schema, None);
    }

    #[test]
    fn hints_in_the_endpoint_metadata_are_annotations() {
        let mut e = endpoint("list", None);
        e.metadata.insert("readOnlyHint".into(), json!(true));
        e.metadata.insert("idempotentHint".into(), json!(true));
        e.metadata.insert("title".into(), json!("List tickets"));
        e.metadata.insert("destructiveHint".into(), json!("yes")); // not a boolean: ignored
        e.metadata.insert("owner".into(), json!("ops")); // not a hint: ignored
        let r = registration("tickets", vec![e]);
        let set = ToolSet::from_registrations([&r]);
        assert_eq!(
            Value::Object(set.get("tickets_list").unwrap().annotations.clone()),
            json!({"readOnlyHint": true, "idempotentHint": true, "title": "List tickets"})
        );
    }

    #[test]
    fn two_endpoints_with_one_name_are_a_reported_conflict() {
        let a = registration("a", vec![endpoint("b_c", None)]);
        let ab = registration("a_b", vec![endpoint("c", None)]);
        // Whatever the order given, the first by name keeps the tool name.
        for set in [
            ToolSet::from_registrations([&ab, &a]),
            ToolSet::from_registrations([&a, &ab]),
        ] {
            assert_eq!(set.len(), 1);
            assert_eq!(set.get("a_b_c").unwrap().target.to_string(), "a.b_c");
            assert_eq!(
                set.problems(),
                [ToolProblem {
                    tool: "a_b_c".into(),
                    endpoint: "a_b.c".into(),
                    reason: "tool name a_b_c is already a.b_c's".into(),
                }]
            );
        }
    }

    #[test]
    fn names_longer_than_64_characters_are_reported() {
        let long = "e".repeat(61); // "svc_" + 61 = 65 characters
        let r = registration("svc", vec![endpoint(&long, None)]);
        let set = ToolSet::from_registrations([&r]);
        assert!(set.is_empty());
        assert_eq!(set.problems().len(), 1);
        assert!(
            set.problems()[0].reason.contains("more than 64"),
            "{:?}",
            set.problems()
        );
    }
}
