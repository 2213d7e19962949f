//! Golden envelope samples, checked both ways: against the JSON Schema and through a
//! byte-stable decode/encode round trip that keeps unknown fields.

use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_bus::Envelope;

fn schema_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema")
}

fn samples(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = schema_root().join("samples").join(kind);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 5,
        "expected at least 5 {kind} samples in {}",
        dir.display()
    );
    out
}

fn validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_slice(&std::fs::read(schema_root().join("envelope.schema.json")).unwrap())
            .unwrap();
    jsonschema::draft202012::new(&schema).expect("the schema itself is valid")
}

#[test]
fn valid_samples_pass_the_schema() {
    let v = validator();
    for (name, bytes) in samples("valid") {
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
}

#[test]
fn valid_samples_round_trip_byte_for_byte() {
    for (name, bytes) in samples("valid") {
        let env = Envelope::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = serde_json::to_string_pretty(&env).unwrap() + "\n";
        assert_eq!(
            again,
            String::from_utf8(bytes.clone()).unwrap(),
            "{name} changed in a round trip"
        );
        // And the compact encoding decodes to the same envelope.
        let compact = env.to_bytes().unwrap();
        assert_eq!(Envelope::from_slice(&compact).unwrap(), env, "{name}");
    }
}

#[test]
fn unknown_fields_are_kept_in_order() {
    let (_, bytes) = samples("valid")
        .into_iter()
        .find(|(n, _)| n == "delta_with_unknown_fields.json")
        .unwrap();
    let env = Envelope::from_slice(&bytes).unwrap();
    let keys: Vec<&String> = env.extra.keys().collect();
    assert_eq!(keys, ["x_vendor_hint", "acp_extension"]);
    assert_eq!(env.extra["x_vendor_hint"]["b"], 2);
    // A reply built from it does not leak them, but forwarding the envelope keeps them.
    let forwarded = Envelope::from_slice(&env.to_bytes().unwrap()).unwrap();
    assert_eq!(forwarded.extra, env.extra);
}

#[test]
fn invalid_samples_fail_both_checks() {
    let v = validator();
    for (name, bytes) in samples("invalid") {
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(!v.is_valid(&value), "{name} passed the schema");
        assert!(Envelope::from_slice(&bytes).is_err(), "{name} decoded");
    }
}

#[test]
fn envelopes_weft_writes_pass_the_schema() {
    let v = validator();
    let req = Envelope::request("support", serde_json::json!({"message": "hi"}));
    let reply = req.reply(
        weft_bus::FrameType::Final,
        serde_json::json!({"reply": "hello"}),
    );
    let err = req.error_reply(&weft_bus::ErrorPayload::invalid_request("bad"));
    for env in [req, reply, err] {
        let value: Value = serde_json::from_slice(&env.to_bytes().unwrap()).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", env.event_type);
    }
}
