//! Property tests of flow definitions (`Flow::from_json`, `Flow::validate`) and step
//! input templates (`template::render`, `template::step_references`):
//!
//! - arbitrary text and arbitrary JSON (also shaped like a flow) never panic: a flow or
//!   a `FlowError::Definition` with a message;
//! - generated valid flows validate, and survive serde both ways unchanged;
//! - a step referring to itself, a later step or an unknown one is refused, naming
//!   the step and the reference; so is a step doing two things or none, an unknown
//!   field, and a step that could never run (0 attempts, a 0 ms timeout);
//! - templates: text without placeholders renders to itself, a whole placeholder to
//!   the value at its path, embedded ones to their text; arbitrary templates render
//!   or fail with a message.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Number, Value, json};
use weft_flows::template::{render, step_references};
use weft_flows::{Flow, FlowError};

/// Any JSON, nested a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::String),
        // Strings a template reads: placeholders, whole or broken.
        "(x|\\$\\{|\\}|steps\\.|trigger|\\.|run\\.id| )*".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((any::<String>(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,8}"
}

/// JSON shaped like a flow, with any value in each field: names, kinds, inputs and
/// numbers of the right type or not.
fn flow_like() -> impl Strategy<Value = Value> {
    let field = || prop_oneof![token().prop_map(Value::String), json_value()];
    let step = vec(
        (
            select(vec![
                "name",
                "invoke",
                "agent",
                "publish",
                "input",
                "timeout_ms",
                "max_attempts",
                "inputs",
            ]),
            field(),
        ),
        0..6,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    (
        prop::option::of(field()),
        prop::option::of(field()),
        prop::option::of(prop_oneof![
            vec(step, 0..4).prop_map(Value::Array),
            json_value()
        ]),
        prop::option::of(field()),
    )
        .prop_map(|(name, trigger, steps, version)| {
            let mut m = Map::new();
            for (k, v) in [
                ("name", name),
                ("trigger", trigger),
                ("steps", steps),
                ("version", version),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

/// Runs `from_json`: no panic, and an error is a definition error with a message.
fn check_parse(text: &str) -> Result<Option<Flow>, TestCaseError> {
    match Flow::from_json(text) {
        Ok(flow) => {
            prop_assert!(flow.validate().is_ok());
            Ok(Some(flow))
        }
        Err(FlowError::Definition(m)) => {
            prop_assert!(!m.is_empty());
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "not a definition error: {other:?}"
        ))),
    }
}

/// A template for a step that may use the trigger, the run and the given earlier
/// steps: JSON with placeholders, whole or embedded in text.
fn template(earlier: Vec<String>) -> impl Strategy<Value = Value> {
    let mut paths: Vec<String> = vec![
        "trigger.payload".into(),
        "trigger.event_id".into(),
        "run.id".into(),
        "flow.name".into(),
    ];
    paths.extend(earlier.iter().map(|s| format!("steps.{s}.output")));
    let placeholder = select(paths).prop_map(|p| format!("${{{p}}}"));
    let text = (placeholder.clone(), "[a-z ]{0,6}", "[a-z ]{0,6}")
        .prop_map(|(p, a, b)| Value::String(format!("{a}{p}{b}")));
    let leaf = prop_oneof![
        placeholder.prop_map(Value::String),
        text,
        any::<i64>().prop_map(Value::from),
        "[^$]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z]{1,6}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A valid flow definition as JSON: unique step names, each step's input referring
/// only to earlier steps.
fn valid_flow() -> impl Strategy<Value = Value> {
    let names = prop::collection::hash_set(token(), 1..6)
        .prop_map(|s| s.into_iter().collect::<Vec<_>>())
        .prop_shuffle();
    let trigger = prop_oneof![
        "[a-z]{1,5}(\\.[a-z]{1,5}){0,2}",
        "[a-z]{1,5}\\.\\*",
        "[a-z]{1,5}\\.>",
        Just(">".to_owned()),
    ];
    (token(), trigger, names, prop::option::of("[0-9]\\.[0-9]\\.[0-9]"), ".{0,20}").prop_flat_map(
        |(name, trigger, names, version, description)| {
            let steps: Vec<_> = (0..names.len())
                .map(|i| {
                    let kind = prop_oneof![
                        (token(), prop::option::of(token())).prop_map(|(s, e)| (
                            "invoke",
                            match e {
                                Some(e) => format!("{s}.{e}"),
                                None => s,
                            }
                        )),
                        token().prop_map(|s| ("agent", s)),
                        "[a-z]{1,5}(\\.[a-z]{1,5}){0,2}".prop_map(|t| ("publish", t)),
                    ];
                    (
                        Just(names[i].clone()),
                        kind,
                        prop::option::of(template(names[..i].to_vec())),
                        prop::option::of(1u64..10_000_000),
                        prop::option::of(1u32..100),
                    )
                })
                .collect();
            (Just(name), Just(trigger), steps, Just(version), Just(description))
        },
    )
    .prop_map(|(name, trigger, steps, version, description)| {
        let steps: Vec<Value> = steps
            .into_iter()
            .map(|(name, (kind, target), input, timeout, attempts)| {
                let mut s = Map::new();
                s.insert("name".into(), json!(name));
                s.insert(kind.into(), json!(target));
                if let Some(input) = input {
                    s.insert("input".into(), input);
                }
                if let Some(t) = timeout {
                    s.insert("timeout_ms".into(), json!(t));
                }
                if let Some(a) = attempts {
                    s.insert("max_attempts".into(), json!(a));
                }
                Value::Object(s)
            })
            .collect();
        let mut f = json!({"name": name, "trigger": trigger, "steps": steps, "description": description});
        if let Some(v) = version {
            f["version"] = json!(v);
        }
        f
    })
}

proptest! {
    #[test]
    fn arbitrary_text_parses_or_fails_clearly(text in any::<String>()) {
        check_parse(&text)?;
    }

    #[test]
    fn arbitrary_json_parses_or_fails_clearly(value in json_value()) {
        check_parse(&value.to_string())?;
    }

    #[test]
    fn flow_shaped_json_parses_or_fails_clearly(value in flow_like()) {
        if let Some(flow) = check_parse(&value.to_string())? {
            // Whatever is accepted survives serde.
            let again = Flow::from_json(&serde_json::to_string(&flow).unwrap()).unwrap();
            prop_assert_eq!(again, flow);
        }
    }

    #[test]
    fn valid_flows_validate_and_round_trip(value in valid_flow()) {
        let flow = Flow::from_json(&value.to_string());
        prop_assert!(flow.is_ok(), "{:?} for {}", flow, value);
        let flow = flow.unwrap();
        prop_assert_eq!(flow.steps.len(), value["steps"].as_array().unwrap().len());
        for (step, v) in flow.steps.iter().zip(value["steps"].as_array().unwrap()) {
            prop_assert_eq!(&step.name, &v["name"]);
            prop_assert_eq!(step.kind.as_str(), ["invoke", "agent", "publish"].into_iter().find(|k| v.get(*k).is_some()).unwrap());
            prop_assert_eq!(&step.input, v.get("input").unwrap_or(&Value::Null));
        }
        let text = serde_json::to_string(&flow).unwrap();
        prop_assert_eq!(Flow::from_json(&text).unwrap(), flow.clone());
        let pretty = serde_json::to_string_pretty(&flow).unwrap();
        prop_assert_eq!(Flow::from_json(&pretty).unwrap(), flow);
    }

    #[test]
    fn references_to_later_or_unknown_steps_are_refused(
        value in valid_flow(),
        at in any::<Index>(),
        to in any::<Index>(),
        unknown in token(),
        whole in any::<bool>(),
    ) {
        let mut value = value;
        let steps = value["steps"].as_array_mut().unwrap();
        let i = at.index(steps.len());
        let names: Vec<String> = steps.iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect();
        // Itself, a later step, or a name no step has.
        let mut candidates: Vec<String> = names[i..].to_vec();
        if !names.contains(&unknown) {
            candidates.push(unknown);
        }
        let target = to.get(&candidates).clone();
        let reference = format!("${{steps.{target}.output}}");
        let text = if whole { reference.clone() } else { format!("see {reference} here") };
        let old = steps[i].get("input").cloned().unwrap_or(Value::Null);
        steps[i]["input"] = json!({"kept": old, "bad": [text]});
        let err = Flow::from_json(&value.to_string()).unwrap_err().to_string();
        prop_assert!(err.contains("not an earlier step"), "{err}");
        prop_assert!(err.contains(&format!("step {}", names[i])), "{err}");
        prop_assert!(err.contains(&format!("steps.{target}")), "{err}");
    }

    #[test]
    fn a_step_does_exactly_one_thing(
        value in valid_flow(),
        at in any::<Index>(),
        kinds in prop::sample::subsequence(vec!["invoke", "agent", "publish", "a2a"], 0..=4),
    ) {
        prop_assume!(kinds.len() != 1);
        let mut value = value;
        let steps = value["steps"].as_array_mut().unwrap();
        let i = at.index(steps.len());
        let step = steps[i].as_object_mut().unwrap();
        let name = step["name"].as_str().unwrap().to_owned();
        for k in ["invoke", "agent", "publish", "a2a"] {
            step.shift_remove(k);
        }
        for k in &kinds {
            step.insert((*k).into(), json!("x"));
        }
        let err = Flow::from_json(&value.to_string()).unwrap_err().to_string();
        prop_assert!(err.contains(&name), "{err}");
        for k in ["invoke", "agent", "publish", "a2a"] {
            prop_assert!(err.contains(k), "{err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused(
        value in valid_flow(),
        at in any::<Index>(),
        in_step in any::<bool>(),
        field in prop_oneof![Just("inputs".to_owned()), Just("max_attempt".to_owned()), "[a-z_]{1,10}"],
    ) {
        let known = ["name", "version", "description", "trigger", "steps", "invoke", "agent", "publish", "a2a", "transform", "input", "timeout_ms", "max_attempts"];
        prop_assume!(!known.contains(&field.as_str()));
        let mut value = value;
        if in_step {
            let steps = value["steps"].as_array_mut().unwrap();
            let i = at.index(steps.len());
            steps[i][&field] = json!(1);
        } else {
            value[&field] = json!(1);
        }
        let err = Flow::from_json(&value.to_string()).unwrap_err().to_string();
        prop_assert!(err.contains(&format!("`{field}`")), "{err}");
    }

    #[test]
    fn a2a_steps_need_an_http_url(
        value in valid_flow(),
        at in any::<Index>(),
        scheme in prop_oneof![Just("http".to_owned()), Just("https".to_owned()), "[a-z]{1,5}"],
    ) {
        let url = format!("{scheme}://127.0.0.1:9/a2a/echo");
        let mut value = value;
        let steps = value["steps"].as_array_mut().unwrap();
        let i = at.index(steps.len());
        let step = steps[i].as_object_mut().unwrap();
        for k in ["invoke", "agent", "publish"] {
            step.shift_remove(k);
        }
        step.insert("a2a".into(), json!(url));
        let parsed = Flow::from_json(&value.to_string());
        if url.starts_with("http://") || url.starts_with("https://") {
            let flow = parsed.unwrap();
            prop_assert_eq!(flow.steps[i].kind.as_str(), "a2a");
        } else {
            let err = parsed.unwrap_err().to_string();
            prop_assert!(err.contains("http(s)://"), "{err}");
        }
    }

    #[test]
    fn a_step_that_could_never_run_is_refused(
        value in valid_flow(),
        at in any::<Index>(),
        field in select(vec!["max_attempts", "timeout_ms"]),
    ) {
        let mut value = value;
        let steps = value["steps"].as_array_mut().unwrap();
        let i = at.index(steps.len());
        steps[i][field] = json!(0);
        let name = steps[i]["name"].as_str().unwrap().to_owned();
        let err = Flow::from_json(&value.to_string()).unwrap_err().to_string();
        prop_assert!(err.contains(field) && err.contains(&name), "{err}");
    }
}

// ---------------------------------------------------------------------------------
// Templates.

fn context() -> impl Strategy<Value = Value> {
    (json_value(), json_value(), "[a-z0-9]{1,8}").prop_map(|(payload, output, run)| {
        json!({
            "trigger": {"event_id": "e1", "payload": payload},
            "steps": {"one": {"output": output}},
            "run": {"id": run},
            "flow": {"name": "f"},
        })
    })
}

/// How a value appears inside text: strings as they are, the rest as compact JSON.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

proptest! {
    #[test]
    fn templates_without_placeholders_render_to_themselves(t in json_value(), ctx in context()) {
        fn has_placeholder(v: &Value) -> bool {
            match v {
                Value::String(s) => s.contains("${"),
                Value::Array(a) => a.iter().any(has_placeholder),
                Value::Object(m) => m.values().any(has_placeholder),
                _ => false,
            }
        }
        prop_assume!(!has_placeholder(&t));
        prop_assert_eq!(render(&t, &ctx).unwrap(), t.clone());
        prop_assert!(step_references(&t).is_empty());
    }

    #[test]
    fn whole_and_embedded_placeholders_render_their_values(
        ctx in context(),
        path in select(vec!["trigger.payload", "trigger.event_id", "steps.one.output", "run.id", "flow.name"]),
        before in "[^$}]{0,6}",
        after in "[^$}]{0,6}",
        pad in select(vec!["", " "]),
    ) {
        let value = path.split('.').fold(&ctx, |v, k| &v[k]).clone();
        let whole = format!("${{{pad}{path}{pad}}}");
        prop_assert_eq!(render(&json!(whole), &ctx).unwrap(), value.clone());
        prop_assume!(!(before.is_empty() && after.is_empty()));
        let embedded = format!("{before}{whole}{after}");
        prop_assert_eq!(
            render(&json!({"k": [embedded]}), &ctx).unwrap(),
            json!({"k": [format!("{before}{}{after}", as_text(&value))]})
        );
        let refs = step_references(&json!([embedded, whole]));
        if path.starts_with("steps.") {
            prop_assert_eq!(refs, vec!["one".to_owned(), "one".to_owned()]);
        } else {
            prop_assert!(refs.is_empty());
        }
    }

    #[test]
    fn arbitrary_templates_render_or_fail_clearly(t in json_value(), ctx in context()) {
        if let Err(e) = render(&t, &ctx) {
            prop_assert!(!e.is_empty());
            prop_assert!(e.contains("${") || e.contains("placeholder"), "{e}");
        }
        let _ = step_references(&t);
    }
}
