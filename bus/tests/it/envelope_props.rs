//! Property tests of the envelope codec (`Envelope::from_slice`, `validate`,
//! `to_bytes`; DESIGN §3, `schema/envelope.schema.json`):
//!
//! - arbitrary bytes, arbitrary JSON and damaged envelopes never panic: they decode, or
//!   fail with a non-empty error; whatever decodes re-encodes to a fixed point;
//! - generated valid envelopes (every optional field, unknown fields, nested payloads,
//!   any Unicode) pass the JSON Schema, round-trip byte for byte and keep their unknown
//!   fields in order, wherever those stood in the input;
//! - mutations (a required field missing, a field of the wrong type, another
//!   `spec_version` or `schema_version`, a bad `event_id`, `event_type` or
//!   `occurred_at`) are refused with an error naming the field.
//!
//! The oracles (which ids, event types and times are valid) are written from the
//! schema's patterns and RFC 3339, not from the decoder. `PROPTEST_CASES` raises the
//! number of cases (default 256 per property).

use std::sync::LazyLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use regex::Regex;
use serde_json::{Map, Number, Value, json};
use weft_bus::Envelope;
use weft_bus::envelope::{EnvelopeError, MAX_ENVELOPE_BYTES};

/// The required fields, in canonical order.
const REQUIRED: [&str; 5] = [
    "spec_version",
    "schema_version",
    "event_id",
    "event_type",
    "occurred_at",
];
/// The optional string fields, in canonical order (after `frame_type`).
const OPTIONAL_STRINGS: [&str; 12] = [
    "trace_id",
    "span_id",
    "traceparent",
    "session_id",
    "conversation_id",
    "correlation_id",
    "reply_to",
    "from",
    "to",
    "channel",
    "tenant_id",
    "user_id",
];
const FRAME_TYPES: [&str; 5] = [
    "request",
    "response.started",
    "response.delta",
    "response.final",
    "response.error",
];

fn known_field(name: &str) -> bool {
    REQUIRED.contains(&name)
        || OPTIONAL_STRINGS.contains(&name)
        || ["frame_type", "seq", "is_final", "payload", "metadata"].contains(&name)
}

// ---------------------------------------------------------------------------------
// Oracles, from the schema's patterns and RFC 3339.

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
        .unwrap()
});
static EVENT_TYPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$").unwrap());
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-]([0-9]{2}):([0-9]{2}))$",
    )
    .unwrap()
});

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Whether `s` is an RFC 3339 date-time of the schema's shape with a real date and
/// time; `None` where RFC 3339 leaves the answer to the implementation (a leap second,
/// an offset past 23:59).
fn time_is_valid(s: &str) -> Option<bool> {
    let Some(c) = TIME.captures(s) else {
        return Some(false);
    };
    let n = |i: usize| c.get(i).map(|m| m.as_str().parse::<u32>().unwrap());
    let (year, month, day) = (n(1).unwrap(), n(2).unwrap(), n(3).unwrap());
    let (hour, minute, second) = (n(4).unwrap(), n(5).unwrap(), n(6).unwrap());
    if second == 60 || n(9).is_some_and(|h| h > 23) || n(10).is_some_and(|m| m > 59) {
        return None;
    }
    Some(
        (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day)
            && hour < 24
            && minute < 60
            && second < 60,
    )
}

// ---------------------------------------------------------------------------------
// Generators.

/// Any JSON: scalars (every integer and finite float, any Unicode string), arrays and
/// objects nested a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((any::<String>(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn non_empty_string() -> impl Strategy<Value = String> {
    vec(any::<char>(), 1..16).prop_map(String::from_iter)
}

fn uuid_string() -> impl Strategy<Value = String> {
    (any::<u128>(), any::<bool>()).prop_map(|(n, upper)| {
        let s = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            n >> 96,
            (n >> 80) & 0xffff,
            (n >> 64) & 0xffff,
            (n >> 48) & 0xffff,
            n & 0xffff_ffff_ffff
        );
        if upper { s.to_uppercase() } else { s }
    })
}

fn event_type_string() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,8}(\\.[A-Za-z0-9_-]{1,8}){0,3}"
}

/// An RFC 3339 time of every form the schema allows: `T` or `t`, a fraction of 1 to 9
/// digits or none, `Z`, `z` or an offset.
fn time_string() -> impl Strategy<Value = String> {
    let date = (0u32..=9999, 1u32..=12)
        .prop_flat_map(|(y, m)| (Just(y), Just(m), 1..=days_in_month(y, m)));
    let zone = prop_oneof![
        Just("Z".to_owned()),
        Just("z".to_owned()),
        (select(vec!['+', '-']), 0u32..24, 0u32..60)
            .prop_map(|(sign, h, m)| format!("{sign}{h:02}:{m:02}")),
    ];
    (
        date,
        (0u32..24, 0u32..60, 0u32..60),
        select(vec!['T', 't']),
        prop::option::of("[0-9]{1,9}"),
        zone,
    )
        .prop_map(|((y, mo, d), (h, mi, s), t, frac, zone)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}{frac}{zone}")
        })
}

/// A valid envelope as a JSON object in canonical order (required fields, the
/// optional ones present, then unknown fields), and the unknown fields' names.
fn valid_envelope() -> impl Strategy<Value = (Map<String, Value>, Vec<String>)> {
    let required = (uuid_string(), event_type_string(), time_string());
    let strings = vec(prop::option::of(non_empty_string()), OPTIONAL_STRINGS.len());
    let frame = prop::option::of(select(FRAME_TYPES.to_vec()));
    let numbers = (prop::option::of(1u64..), any::<bool>());
    let payload =
        prop::option::of(json_value().prop_filter("a null payload is absent", |v| !v.is_null()));
    let metadata = vec((any::<String>(), json_value()), 0..4);
    let extra = vec(
        (
            prop_oneof!["x_[a-z_]{1,8}", any::<String>()]
                .prop_filter("unknown", |k| !known_field(k)),
            json_value(),
        ),
        0..4,
    );
    let error = ("[A-Z_]{1,12}", any::<String>(), any::<bool>());
    (
        required, strings, frame, numbers, payload, metadata, extra, error,
    )
        .prop_map(
            |(
                (id, event_type, time),
                strings,
                frame,
                (seq, is_final),
                payload,
                metadata,
                extra,
                error,
            )| {
                let mut m = Map::new();
                m.insert("spec_version".into(), json!("acp/1.0"));
                m.insert("schema_version".into(), json!(1));
                m.insert("event_id".into(), json!(id));
                m.insert("event_type".into(), json!(event_type));
                m.insert("occurred_at".into(), json!(time));
                if let Some(frame) = frame {
                    m.insert("frame_type".into(), json!(frame));
                }
                for (name, value) in OPTIONAL_STRINGS.iter().zip(strings) {
                    if let Some(value) = value {
                        m.insert((*name).into(), json!(value));
                    }
                }
                if let Some(seq) = seq {
                    m.insert("seq".into(), json!(seq));
                }
                if is_final {
                    m.insert("is_final".into(), json!(true));
                }
                if let Some(payload) = payload {
                    m.insert("payload".into(), payload);
                }
                if frame == Some("response.error") {
                    // The schema's one conditional rule: an error frame carries an
                    // ErrorPayload.
                    m.insert(
                        "payload".into(),
                        json!({"code": error.0, "message": error.1, "retryable": error.2}),
                    );
                }
                let metadata: Map<String, Value> = metadata.into_iter().collect();
                if !metadata.is_empty() {
                    m.insert("metadata".into(), Value::Object(metadata));
                }
                let mut names = Vec::new();
                for (k, v) in extra {
                    if !m.contains_key(&k) {
                        names.push(k.clone());
                    }
                    m.insert(k, v);
                }
                (m, names)
            },
        )
}

fn bytes_of(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).unwrap()
}

/// Decodes `bytes`; on success checks that the envelope is valid and that re-encoding
/// reaches a fixed point (decode ∘ encode is the identity on what was decoded).
fn check_decoding(bytes: &[u8]) -> Result<Option<Envelope>, TestCaseError> {
    match Envelope::from_slice(bytes) {
        Ok(env) => {
            prop_assert_eq!(env.validate(), Ok(()));
            let once = env.to_bytes();
            if bytes.len() < MAX_ENVELOPE_BYTES / 2 {
                prop_assert!(once.is_ok(), "{:?}", once);
            }
            if let Ok(once) = once {
                let again = Envelope::from_slice(&once);
                prop_assert_eq!(
                    again.as_ref(),
                    Ok(&env),
                    "{}",
                    String::from_utf8_lossy(&once)
                );
                prop_assert_eq!(again.unwrap().to_bytes(), Ok(once));
            }
            Ok(Some(env))
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(None)
        }
    }
}

/// Damages `bytes`: flips, inserts, removes or truncates at random places.
fn damaged(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = bytes.len().max(1);
    let edit = prop_oneof![
        (0..len, any::<u8>()).prop_map(|(i, b)| (0u8, i, b)),
        (0..len, any::<u8>()).prop_map(|(i, b)| (1u8, i, b)),
        (0..len).prop_map(|i| (2u8, i, 0)),
        (0..len).prop_map(|i| (3u8, i, 0)),
        (0..len, select(b"{}[]\",:0\\ ".to_vec())).prop_map(|(i, b)| (1u8, i, b)),
    ];
    vec(edit, 1..4).prop_map(move |edits| {
        let mut out = bytes.clone();
        for (op, i, b) in edits {
            let i = i.min(out.len());
            match op {
                0 if i < out.len() => out[i] = b,
                1 => out.insert(i, b),
                2 if i < out.len() => {
                    out.remove(i);
                }
                3 => out.truncate(i),
                _ => {}
            }
        }
        out
    })
}

// ---------------------------------------------------------------------------------
// Whatever the input: no panic, a clear error or a stable envelope.

proptest! {
    #[test]
    fn arbitrary_bytes_decode_or_fail_clearly(bytes in vec(any::<u8>(), 0..512)) {
        check_decoding(&bytes)?;
    }

    #[test]
    fn arbitrary_json_decodes_or_fails_clearly(value in json_value()) {
        check_decoding(&serde_json::to_vec(&value).unwrap())?;
    }

    #[test]
    fn damaged_envelopes_decode_or_fail_clearly(
        bytes in valid_envelope().prop_flat_map(|(m, _)| damaged(bytes_of(&m)))
    ) {
        check_decoding(&bytes)?;
    }
}

// ---------------------------------------------------------------------------------
// Valid envelopes.

proptest! {
    #[test]
    fn generated_envelopes_pass_the_schema((map, _) in valid_envelope()) {
        let value = Value::Object(map);
        let errors: Vec<String> = SCHEMA.iter_errors(&value).map(|e| e.to_string()).collect();
        prop_assert!(errors.is_empty(), "{errors:?} in {value}");
    }

    #[test]
    fn valid_envelopes_round_trip_byte_for_byte((map, extra) in valid_envelope()) {
        let bytes = bytes_of(&map);
        let env = Envelope::from_slice(&bytes);
        prop_assert!(env.is_ok(), "{:?} for {}", env, String::from_utf8_lossy(&bytes));
        let env = env.unwrap();
        let again = env.to_bytes().unwrap();
        prop_assert_eq!(String::from_utf8(again).unwrap(), String::from_utf8(bytes).unwrap());
        let kept: Vec<&String> = env.extra.keys().collect();
        prop_assert_eq!(kept, extra.iter().collect::<Vec<_>>());
        check_decoding(&env.to_bytes().unwrap())?;
    }

    #[test]
    fn field_order_does_not_matter_and_unknown_fields_keep_theirs(
        (entries, canonical) in valid_envelope().prop_flat_map(|(map, _)| {
            let entries: Vec<(String, Value)> = map.clone().into_iter().collect();
            (Just(entries).prop_shuffle(), Just(map))
        })
    ) {
        let shuffled: Map<String, Value> = entries.into_iter().collect();
        let env = Envelope::from_slice(&bytes_of(&shuffled)).unwrap();
        // Expected: the known fields in canonical order, then the unknown ones in the
        // order the input had them.
        let mut expected: Map<String, Value> = canonical
            .iter()
            .filter(|(k, _)| known_field(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        expected.extend(shuffled.iter().filter(|(k, _)| !known_field(k)).map(|(k, v)| (k.clone(), v.clone())));
        prop_assert_eq!(
            String::from_utf8(env.to_bytes().unwrap()).unwrap(),
            String::from_utf8(bytes_of(&expected)).unwrap()
        );
    }

    #[test]
    fn empty_optional_fields_are_absent(
        (map, _) in valid_envelope(),
        empties in vec(select(vec![
            ("trace_id", json!("")), ("from", json!("")), ("user_id", json!("")),
            ("seq", json!(0)), ("is_final", json!(false)), ("payload", json!(null)),
            ("metadata", json!({})), ("frame_type", json!(null)), ("channel", json!(null)),
        ]), 1..4),
    ) {
        let mut with = map.clone();
        let mut without = map;
        for (field, empty) in empties {
            with.insert(field.into(), empty);
            without.shift_remove(field);
        }
        let env = Envelope::from_slice(&bytes_of(&with)).unwrap();
        prop_assert_eq!(&env, &Envelope::from_slice(&bytes_of(&without)).unwrap());
        check_decoding(&bytes_of(&with))?;
    }
}

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schema/envelope.schema.json"
    );
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).unwrap()
});

// ---------------------------------------------------------------------------------
// Mutations are refused, naming the field.

/// A value of a JSON type other than `keep` (`"string"`, `"integer"`, …; `null`
/// included unless `null_ok`).
fn wrong_type(keep: &'static str, null_ok: bool) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(|f| json!(f + 0.5)),
        any::<String>().prop_map(Value::String),
        Just(json!([1, "a"])),
        Just(json!({"a": 1})),
    ]
    .prop_filter("another type", move |v| {
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() => "integer",
            Value::Number(n) if n.is_i64() => "negative",
            Value::Number(_) => "float",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        kind != keep && !(null_ok && kind == "null")
    })
}

/// (field, wrong value) pairs over every typed field of the envelope.
fn wrong_field_type() -> impl Strategy<Value = (&'static str, Value)> {
    prop_oneof![
        (select(REQUIRED[2..].to_vec()), wrong_type("string", false)),
        (
            select(OPTIONAL_STRINGS.to_vec()),
            wrong_type("string", true)
        ),
        (Just("spec_version"), wrong_type("string", false)),
        (Just("schema_version"), wrong_type("integer", false)),
        (Just("seq"), wrong_type("integer", false)),
        (Just("is_final"), wrong_type("boolean", false)),
        (Just("metadata"), wrong_type("object", false)),
        (Just("frame_type"), wrong_type("string", true)),
        (
            Just("frame_type"),
            any::<String>()
                .prop_filter("not a frame type", |s| !FRAME_TYPES.contains(&s.as_str()))
                .prop_map(Value::String)
        ),
    ]
}

/// Event ids near and far from a UUID.
fn event_id_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        uuid_string().prop_map(|u| u.replace('-', "")),
        uuid_string().prop_map(|u| format!("{{{u}}}")),
        uuid_string().prop_map(|u| format!("urn:uuid:{u}")),
        (uuid_string(), 0usize..36, any::<char>()).prop_map(|(u, i, c)| {
            let mut chars: Vec<char> = u.chars().collect();
            chars[i] = c;
            chars.into_iter().collect()
        }),
        (uuid_string(), 0usize..36).prop_map(|(u, n)| u[..n].to_owned()),
        uuid_string().prop_map(|u| format!("{u}0")),
        uuid_string().prop_map(|u| format!(" {u}")),
        any::<String>(),
        uuid_string(),
    ]
}

/// Strings from an alphabet dense in the characters subject grammar cares about.
fn subject_like() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(
            select(vec![
                'a', 'Z', '0', '_', '-', '.', '.', ' ', '*', '>', 'é', '\t', '/', '\0'
            ]),
            0..12
        )
        .prop_map(String::from_iter),
        any::<String>(),
        event_type_string(),
    ]
}

/// Times near and far from RFC 3339: one character changed, inserted or removed, a
/// space for the `T`, and arbitrary strings.
fn time_candidate() -> impl Strategy<Value = String> {
    let chars = select(vec![
        '0', '1', '2', '3', '5', '9', '-', ':', '.', 'T', 'Z', '+', ' ', 'x',
    ]);
    prop_oneof![
        (time_string(), any::<prop::sample::Index>(), chars.clone()).prop_map(|(t, i, c)| {
            let mut v: Vec<char> = t.chars().collect();
            let i = i.index(v.len());
            v[i] = c;
            v.into_iter().collect()
        }),
        (time_string(), any::<prop::sample::Index>(), chars).prop_map(|(t, i, c)| {
            let mut v: Vec<char> = t.chars().collect();
            let i = i.index(v.len() + 1);
            v.insert(i, c);
            v.into_iter().collect()
        }),
        (time_string(), any::<prop::sample::Index>()).prop_map(|(t, i)| {
            let mut v: Vec<char> = t.chars().collect();
            v.remove(i.index(v.len()));
            v.into_iter().collect()
        }),
        time_string().prop_map(|t| format!("{} {}", &t[..10], &t[11..])),
        any::<String>(),
        time_string(),
    ]
}

fn with(mut map: Map<String, Value>, field: &str, value: Value) -> Vec<u8> {
    map.insert(field.into(), value);
    bytes_of(&map)
}

fn assert_invalid_field(
    result: Result<Envelope, EnvelopeError>,
    want: &str,
) -> Result<(), TestCaseError> {
    match result {
        Err(EnvelopeError::InvalidField { field, .. }) if field == want => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "expected an invalid {want}, got {other:?}"
        ))),
    }
}

proptest! {
    #[test]
    fn a_missing_required_field_is_named((map, _) in valid_envelope(), field in select(REQUIRED.to_vec())) {
        let mut map = map;
        map.shift_remove(field);
        let err = Envelope::from_slice(&bytes_of(&map)).unwrap_err();
        prop_assert!(err.to_string().contains(field), "{field}: {err}");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named((map, _) in valid_envelope(), (field, value) in wrong_field_type()) {
        let bytes = with(map, field, value);
        let err = Envelope::from_slice(&bytes).unwrap_err();
        prop_assert!(err.to_string().contains(field), "{field}: {err} for {}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn another_spec_version_is_refused(
        (map, _) in valid_envelope(),
        version in any::<String>().prop_filter("not acp/1.0", |s| s != "acp/1.0"),
    ) {
        let err = Envelope::from_slice(&with(map, "spec_version", json!(version))).unwrap_err();
        prop_assert!(err.to_string().contains("spec_version"), "{}", err);
        prop_assert_eq!(err, EnvelopeError::UnknownSpecVersion(version));
    }

    #[test]
    fn another_schema_version_is_refused((map, _) in valid_envelope(), version in any::<u64>().prop_filter("not 1", |n| *n != 1)) {
        let err = Envelope::from_slice(&with(map, "schema_version", json!(version))).unwrap_err();
        prop_assert!(err.to_string().contains("schema_version"), "{}", err);
        prop_assert_eq!(err, EnvelopeError::UnknownSchemaVersion(version));
    }

    #[test]
    fn event_ids_are_accepted_iff_they_are_hyphenated_uuids((map, _) in valid_envelope(), id in event_id_candidate()) {
        let result = Envelope::from_slice(&with(map, "event_id", json!(id)));
        if UUID.is_match(&id) {
            prop_assert!(result.is_ok(), "{id:?}: {result:?}");
        } else {
            assert_invalid_field(result, "event_id")?;
        }
    }

    #[test]
    fn event_types_are_accepted_iff_they_are_dotted_tokens((map, _) in valid_envelope(), event_type in subject_like()) {
        let result = Envelope::from_slice(&with(map, "event_type", json!(event_type)));
        if EVENT_TYPE.is_match(&event_type) {
            prop_assert!(result.is_ok(), "{event_type:?}: {result:?}");
        } else {
            assert_invalid_field(result, "event_type")?;
        }
    }

    #[test]
    fn times_are_accepted_iff_they_are_rfc3339((map, _) in valid_envelope(), time in time_candidate()) {
        let result = Envelope::from_slice(&with(map, "occurred_at", json!(time)));
        match time_is_valid(&time) {
            Some(true) => prop_assert!(result.is_ok(), "{time:?}: {result:?}"),
            Some(false) => assert_invalid_field(result, "occurred_at")?,
            None => {}
        }
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let bytes = vec![b' '; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        Envelope::from_slice(&bytes).unwrap_err(),
        EnvelopeError::TooLarge {
            size: MAX_ENVELOPE_BYTES + 1,
            limit: MAX_ENVELOPE_BYTES
        }
    );
}
