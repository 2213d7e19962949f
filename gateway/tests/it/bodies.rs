//! Property tests of the gateway's request parsing, over real HTTP against a gateway on
//! a real nats-server: arbitrary bodies (bytes and JSON), arbitrary path tokens,
//! `timeout_ms` values and header bytes sent to `POST /v1/events/{type}` and
//! `POST /v1/invoke/{target}` always get either the success answer (valid input: 202,
//! or 200 from an echo service that serves every target) or a 4xx with the JSON error
//! body `{code, message}`; never a 5xx, never a hang.
//!
//! Each property starts one server and one gateway and runs 64 cases against them
//! (`PROPTEST_CASES` changes the count).

use std::sync::LazyLock;
use std::time::Duration;

use futures::StreamExt;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestRunner};
use regex::Regex;
use serde_json::{Number, Value};
use weft_bus::testing::TestServer;
use weft_bus::{Bus, Envelope, FrameType};

use crate::common::{Running, start};

/// Each request's bound: a safety net, far above what one takes.
const HANG: Duration = Duration::from_secs(20);

static EVENT_TYPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$").unwrap());
static TARGET: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$").unwrap());

/// A server, a gateway and (for invokes) an echo service answering every
/// `weft.invoke.>` request with its payload; `run` checks a property on them.
struct Harness {
    rt: tokio::runtime::Runtime,
    gw: Option<Running>,
    _server: TestServer,
}

impl Harness {
    fn start() -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, gw) = rt.block_on(async {
            let server = TestServer::start().await;
            let bus = server.bus().await;
            echo_everything(&bus).await;
            let gw = start(&bus).await;
            (server, gw)
        });
        Harness {
            rt,
            gw: Some(gw),
            _server: server,
        }
    }

    /// Runs `check` on `strategy`'s cases (64 unless `PROPTEST_CASES` says otherwise).
    fn run<S: Strategy>(
        &self,
        name: &str,
        strategy: S,
        check: impl AsyncFn(&Running, S::Value) -> Result<(), TestCaseError>,
    ) {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(64);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let gw = self.gw.as_ref().unwrap();
        let result = runner.run(&strategy, |input| {
            self.rt.block_on(async {
                tokio::time::timeout(HANG, check(gw, input))
                    .await
                    .unwrap_or_else(|_| Err(TestCaseError::fail("no answer: the gateway hung")))
            })
        });
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.take() {
            self.rt.block_on(gw.stop());
        }
    }
}

/// Answers every invoke request with a final reply carrying the request's payload.
async fn echo_everything(bus: &Bus) {
    let client = bus.client().clone();
    let mut sub = client.subscribe("weft.invoke.>").await.unwrap();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let (Some(reply), Ok(req)) = (msg.reply, Envelope::from_slice(&msg.payload)) else {
                continue;
            };
            let answer = req.reply(FrameType::Final, req.payload_or_null().clone());
            let _ = client
                .publish(reply, answer.to_bytes().unwrap().into())
                .await;
        }
    });
    bus.client().flush().await.unwrap();
}

/// Any JSON, nested a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((any::<String>(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A request body: arbitrary bytes, JSON (compact or pretty), blank, or JSON cut short.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|v| serde_json::to_vec_pretty(&v).unwrap()),
        select(vec!["", " ", "\n\t "]).prop_map(|s| s.as_bytes().to_vec()),
        json_value().prop_flat_map(|v| {
            let bytes = v.to_string().into_bytes();
            let n = bytes.len();
            (Just(bytes), 0..=n).prop_map(|(b, cut)| b[..cut].to_vec())
        }),
    ]
}

/// What the gateway should read from `body`: its JSON (blank is `null`), or `None`.
fn body_json(body: &[u8]) -> Option<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(Value::Null);
    }
    serde_json::from_slice(body).ok()
}

/// A path token: dense in token characters, dots, wildcards and separators; arbitrary
/// Unicode too.
fn path_token() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(
            select(vec![
                'a', 'Z', '9', '_', '-', '.', '.', '*', '>', ' ', '/', '%', '?', '#', 'é', '\0'
            ]),
            1..10
        )
        .prop_map(String::from_iter),
        "[a-z]{1,5}(\\.[a-z]{1,5}){0,3}",
        any::<String>().prop_filter("not empty", |s| !s.is_empty()),
    ]
}

/// `s` percent-encoded byte for byte, except the unreserved characters, so the
/// gateway's decoded path segment is `s` again.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Checks a refusal: a 4xx with the body `{code, message}`.
async fn refused(resp: reqwest::Response, what: &str) -> Result<(u16, Value), TestCaseError> {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).map_err(|e| {
        TestCaseError::fail(format!("{what}: {status} body is not JSON ({e}): {text:?}"))
    })?;
    prop_assert!((400..500).contains(&status), "{what}: {status} {body}");
    prop_assert!(
        body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: {body}"
    );
    prop_assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    if status == 400 {
        prop_assert_eq!(&body["code"], "INVALID_REQUEST");
    }
    Ok((status, body))
}

#[test]
fn event_bodies_and_types_get_202_or_a_4xx_json_error() {
    let h = Harness::start();
    h.run(
        "POST /v1/events/{type}",
        (path_token(), body()),
        async |gw, (event_type, body)| {
            let what = format!("{event_type:?} with {:?}", String::from_utf8_lossy(&body));
            let resp = gw
                .post(&format!("/v1/events/{}", encode(&event_type)), body.clone())
                .await;
            if EVENT_TYPE.is_match(&event_type) && body_json(&body).is_some() {
                prop_assert_eq!(resp.status().as_u16(), 202, "{}", what);
                let answer: Value = resp.json().await.unwrap();
                prop_assert!(answer["event_id"].is_string(), "{answer}");
            } else {
                let (status, body) = refused(resp, &what).await?;
                prop_assert_eq!(status, expected_refusal(&event_type), "{}: {}", what, body);
            }
            Ok(())
        },
    );
}

/// The status refusing a bad path token: 404 for `.` and `..`, which URLs drop as dot
/// segments before the gateway sees them, else 400 `INVALID_REQUEST`.
fn expected_refusal(token: &str) -> u16 {
    if token == "." || token == ".." {
        404
    } else {
        400
    }
}

#[test]
fn invoke_bodies_targets_and_timeouts_get_200_or_a_4xx_json_error() {
    let h = Harness::start();
    let timeout = prop_oneof![
        Just(None),
        (1u64..60_000).prop_map(|n| Some(n.to_string())),
        select(vec![
            "0",
            "-1",
            "",
            "abc",
            "1.5",
            "99999999999999999999",
            " 5"
        ])
        .prop_map(|s| Some(s.to_owned())),
    ];
    h.run(
        "POST /v1/invoke/{target}",
        (path_token(), body(), timeout),
        async |gw, (target, body, timeout)| {
            let what = format!(
                "{target:?} timeout_ms={timeout:?} with {:?}",
                String::from_utf8_lossy(&body)
            );
            let query = timeout
                .as_deref()
                .map(|t| format!("?timeout_ms={}", encode(t)))
                .unwrap_or_default();
            let resp = gw
                .post(
                    &format!("/v1/invoke/{}{query}", encode(&target)),
                    body.clone(),
                )
                .await;
            let timeout_ok = timeout
                .as_deref()
                .is_none_or(|t| t.parse::<u64>().is_ok_and(|n| n >= 1));
            match body_json(&body) {
                Some(payload) if TARGET.is_match(&target) && timeout_ok => {
                    prop_assert_eq!(resp.status().as_u16(), 200, "{}", what);
                    let echoed: Value = resp.json().await.unwrap();
                    prop_assert_eq!(echoed, payload, "{}", what);
                }
                _ => {
                    let (status, body) = refused(resp, &what).await?;
                    prop_assert_eq!(status, expected_refusal(&target), "{}: {}", what, body);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn header_bytes_get_through_or_a_400_naming_the_header() {
    let h = Harness::start();
    let header = prop_oneof![
        vec(any::<u8>(), 0..12),
        "[ -~]{0,12}".prop_map(String::into_bytes)
    ]
    .prop_filter("a header value", |b| {
        reqwest::header::HeaderValue::from_bytes(b).is_ok()
    });
    h.run(
        "X-Session-Id on both routes",
        (header, any::<bool>()),
        async |gw, (value, invoke)| {
            let path = if invoke {
                "/v1/invoke/echo"
            } else {
                "/v1/events/header.checked"
            };
            let resp = gw
                .http
                .post(gw.url(path))
                .header(
                    "X-Session-Id",
                    reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
                )
                .body("{}")
                .send()
                .await
                .unwrap();
            let what = format!("{path} with X-Session-Id {value:?}");
            // Visible ASCII (and tabs) are text; anything else is refused.
            if value.iter().all(|b| (32..127).contains(b) || *b == b'\t') {
                let want = if invoke { 200 } else { 202 };
                prop_assert_eq!(resp.status().as_u16(), want, "{}", what);
            } else {
                let (status, body) = refused(resp, &what).await?;
                prop_assert_eq!(status, 400);
                prop_assert!(
                    body["message"].as_str().unwrap().contains("X-Session-Id"),
                    "{body}"
                );
            }
            Ok(())
        },
    );
}

/// Found by the invoke property above: serde_json without its `float_roundtrip`
/// feature parses some shortest float representations to a neighbouring float, so a
/// number moved at every hop (HTTP body, request envelope, reply envelope). The bus's
/// own tests cannot see this: their jsonschema dev-dependency turns the feature on.
#[test]
fn floats_come_back_exactly_through_an_invoke() {
    let h = Harness::start();
    let body = "[-6.715017579129219e+217,1.4521735516261434e+234,2.2250738585072014e-308]";
    let echoed = h.rt.block_on(async {
        let resp = h.gw.as_ref().unwrap().post("/v1/invoke/echo", body).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    });
    assert_eq!(echoed, body);
}
