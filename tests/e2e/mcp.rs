//! MCP both ways against the official tools (issue "MCP both ways", docs/mcp.md):
//!
//! - the conformance suite `@modelcontextprotocol/conformance` in server mode against
//!   `/mcp` of `weft up --demo`, with the fixture service `test` its tool scenarios
//!   call;
//! - the official Python (`mcp`) and TypeScript (`@modelcontextprotocol/sdk`)
//!   clients over Streamable HTTP and over stdio (`weft mcp`);
//! - `weft mcp attach` with a stdio server written with the Python SDK;
//! - bad input at `/mcp`.
//!
//! The clients are installed by `scripts/install-mcp-clients` (cached outside the
//! checkout); without them these tests fail with the install hint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::Bus;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::stream::StreamWriter;

use crate::{Up, http_client};

/// Where `scripts/install-mcp-clients` put the official clients.
struct Clients {
    python: PathBuf,
    node_modules: PathBuf,
    conformance: PathBuf,
}

/// Installs (or finds in the cache) the official MCP clients.
///
/// # Panics
/// With the install hint when the script fails.
fn clients() -> Clients {
    let vars = crate::installed(
        "install-mcp-clients",
        "the MCP tests need Node 20 with npm and Python 3.11 with venv",
    );
    let get = |k: &str| {
        PathBuf::from(
            vars.get(k)
                .unwrap_or_else(|| panic!("install-mcp-clients printed no {k}")),
        )
    };
    Clients {
        python: get("MCP_PYTHON"),
        node_modules: get("MCP_NODE_MODULES"),
        conformance: get("MCP_CONFORMANCE"),
    }
}

/// This repository's `tests/mcp/<file>`.
fn script(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp")
        .join(file)
}

/// A 1×1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

/// A WAV header with no samples.
const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=";

/// What the fixture's streaming endpoints saw.
#[derive(Debug, Default)]
struct Seen {
    /// Calls of `test.slow` whose handler saw the caller cancel.
    cancelled: AtomicUsize,
}

/// The fixture service `test`: the tools the conformance suite calls (DESIGN §12
/// names them `test_<endpoint>`), plus `stream` and `slow` for the SDK clients.
async fn fixture(bus: &Bus) -> (ServiceHandle, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let blocks = |name: &str, content: Value| {
        Endpoint::new(name.to_owned(), move |_req: Request| {
            let content = content.clone();
            async move { Ok(json!({ "content": content })) }
        })
        .metadata("mcp.content", json!("blocks"))
    };
    let image = json!({"type": "image", "data": PNG, "mimeType": "image/png"});
    let resource = json!({"type": "resource", "resource": {
        "uri": "test://embedded-resource", "mimeType": "text/plain",
        "text": "This is an embedded resource content."}});
    let slow_seen = seen.clone();
    let handle = Service::new("test", "1.0.0")
        .description("The fixture of the MCP conformance suite's tool scenarios")
        .endpoint(
            Endpoint::new("simple_text", |_req: Request| async {
                Ok(json!("This is a simple text response for testing."))
            })
            .description("Returns simple text")
            .metadata("readOnlyHint", json!(true)),
        )
        .endpoint(blocks("image_content", json!([image])))
        .endpoint(blocks(
            "audio_content",
            json!([{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]),
        ))
        .endpoint(blocks("embedded_resource", json!([resource])))
        .endpoint(blocks(
            "multiple_content_types",
            json!([{"type": "text", "text": "Multiple content types test:"}, image, resource]),
        ))
        .endpoint(Endpoint::new("error_handling", |_req: Request| async {
            Err(weft_bus::ErrorPayload::new(
                weft_bus::ErrorCode::Other("TEST_ERROR".into()),
                "This tool intentionally returns an error for testing",
            ))
        }))
        .endpoint(Endpoint::streaming(
            "tool_with_progress",
            |_req: Request, out: StreamWriter| async move {
                for p in [0, 50, 100] {
                    out.delta(json!({"progress": p, "total": 100, "message": format!("{p}%")}))
                        .await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(json!("Progress complete"))
            },
        ))
        .endpoint(Endpoint::streaming(
            "stream",
            |_req: Request, out: StreamWriter| async move {
                for word in ["one", "two", "three"] {
                    out.delta(json!(word)).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(json!({"words": 3}))
            },
        ))
        .endpoint(Endpoint::streaming(
            "slow",
            move |_req: Request, out: StreamWriter| {
                let seen = slow_seen.clone();
                async move {
                    tokio::select! {
                        () = out.cancelled() => {
                            seen.cancelled.fetch_add(1, Ordering::SeqCst);
                            Err(weft_bus::ErrorPayload::new(weft_bus::ErrorCode::Other("CANCELLED".into()), "cancelled"))
                        }
                        () = tokio::time::sleep(Duration::from_secs(60)) => Ok(json!("never cancelled")),
                    }
                }
            },
        ))
        .serve(bus)
        .await
        .expect("serve the fixture");
    (handle, seen)
}

/// The fixture service `json` with endpoint `schema_2020_12_tool` (tool
/// `json_schema_2020_12_tool`), whose JSON Schema 2020-12 keywords the conformance
/// suite's `json-schema-2020-12` scenario expects in `tools/list` unchanged.
async fn schema_fixture(bus: &Bus) -> ServiceHandle {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"address": {"type": "object", "properties": {
            "street": {"type": "string"}, "city": {"type": "string"}}}},
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": false,
    });
    Service::new("json", "1.0.0")
        .endpoint(
            Endpoint::new("schema_2020_12_tool", |req: Request| async move {
                Ok(req.payload().clone())
            })
            .description("Echoes its arguments; its input schema uses JSON Schema 2020-12")
            .input_schema(schema),
        )
        .serve(bus)
        .await
        .expect("serve the schema fixture")
}

/// `weft up --demo` with the fixture service, connected.
async fn mesh(extra: &[&str]) -> (Up, Bus, ServiceHandle, Arc<Seen>) {
    let mut args = vec!["--demo"];
    args.extend(extra);
    let mut up = Up::start(&args);
    up.proc.banner();
    let bus = Bus::connect(&format!("nats://127.0.0.1:{}", up.nats_port))
        .await
        .unwrap();
    let (handle, seen) = fixture(&bus).await;
    // The gateway's registry watch sees the fixture before a test lists tools.
    let url = format!("http://{}/mcp", up.http);
    wait_for_tool(&url, "test_simple_text").await;
    (up, bus, handle, seen)
}

/// Waits until `tools/list` at `url` shows `tool` (the registry watch is live).
async fn wait_for_tool(url: &str, tool: &str) {
    for _ in 0..100 {
        if list_tools(url).await.iter().any(|t| t == tool) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{tool} never appeared in tools/list at {url}");
}

/// The tool names of one stateless-looking session: initialize, then tools/list.
async fn list_tools(url: &str) -> Vec<String> {
    let client = http_client();
    let Some(session) = initialize(&client, url).await else {
        return Vec::new();
    };
    let reply = rpc(
        &client,
        url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    reply["result"]["tools"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `initialize` + `notifications/initialized`; the session id.
async fn initialize(client: &reqwest::Client, url: &str) -> Option<String> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "weft-e2e", "version": "1"}}})
            .to_string(),
        )
        .send()
        .await
        .ok()?;
    let session = resp
        .headers()
        .get("mcp-session-id")?
        .to_str()
        .ok()?
        .to_owned();
    let _ = resp.text().await;
    client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .send()
        .await
        .ok()?;
    Some(session)
}

/// One JSON-RPC request; the response message (from JSON or the SSE stream).
async fn rpc(client: &reqwest::Client, url: &str, session: Option<&str>, body: Value) -> Value {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let text = req
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sse_message(&text).unwrap_or_else(|| panic!("no JSON-RPC message in {text:?}"))
}

/// The last JSON `data:` of an SSE body, or the body itself when it is JSON.
fn sse_message(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Some(v);
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .next_back()
}

/// A scenario's checks: (status, error message).
type Checks = Vec<(String, String)>;

/// `name` without the `-YYYY-MM-DDT…` the conformance suite appends to result folders.
fn without_timestamp(name: &str) -> &str {
    let b = name.as_bytes();
    let stamp = |i: usize| {
        b.len() > i + 11
            && b[i] == b'-'
            && b[i + 1..i + 5].iter().all(u8::is_ascii_digit)
            && b[i + 5] == b'-'
            && b[i + 8] == b'-'
            && b[i + 11] == b'T'
    };
    (0..b.len())
        .find(|&i| stamp(i))
        .map_or(name, |i| &name[..i])
}

/// The scenarios of the conformance suite that apply to a server offering tools.
const APPLICABLE: &[&str] = &[
    "server-initialize",
    "ping",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-error",
    "tools-call-with-progress",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
    // Pending in 0.1.13 (run with --suite all):
    "json-schema-2020-12",
];

#[tokio::test]
async fn the_conformance_suite_passes_every_tools_scenario() {
    let clients = clients();
    let (up, bus, _fixture, _seen) = mesh(&[]).await;
    let _schema = schema_fixture(&bus).await;
    let url = format!("http://{}/mcp", up.http);
    wait_for_tool(&url, "json_schema_2020_12_tool").await;
    let results = tempfile::tempdir().unwrap();
    // tokio's Command: the fixture's heartbeats run on this runtime meanwhile.
    let out = tokio::process::Command::new("node")
        .arg(&clients.conformance)
        .args(["server", "--url", &url, "--suite", "all", "-o"])
        .arg(results.path())
        .output()
        .await
        .expect("run the conformance suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Each scenario's checks (`<dir>/server-<scenario>-<time>/checks.json`): a scenario
    // passes when every check is SUCCESS or INFO (a WARNING is not a pass).
    let mut statuses: BTreeMap<String, Checks> = BTreeMap::new();
    for entry in std::fs::read_dir(results.path()).unwrap().flatten() {
        let dir = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = dir.strip_prefix("server-") else {
            continue;
        };
        let scenario = without_timestamp(rest).to_owned();
        let checks: Value = serde_json::from_str(
            &std::fs::read_to_string(entry.path().join("checks.json")).unwrap(),
        )
        .unwrap();
        for c in checks.as_array().unwrap() {
            statuses.entry(scenario.clone()).or_default().push((
                c["status"].as_str().unwrap_or("?").to_owned(),
                c["errorMessage"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    let passed = |s: &str| {
        statuses
            .get(s)
            .is_some_and(|cs| cs.iter().all(|(st, _)| st == "SUCCESS" || st == "INFO"))
    };
    println!("conformance 0.1.13, --suite all, against /mcp:");
    for (scenario, checks) in &statuses {
        let mark = if passed(scenario) {
            "pass"
        } else if APPLICABLE.contains(&scenario.as_str()) {
            "FAIL"
        } else {
            "n/a "
        };
        let problems: Vec<&str> = checks
            .iter()
            .map(|(_, m)| m.as_str())
            .filter(|m| !m.is_empty())
            .collect();
        println!("  {mark} {scenario} {problems:?}");
    }
    let failed: Vec<(&&str, Option<&Checks>)> = APPLICABLE
        .iter()
        .filter(|s| !passed(s))
        .map(|s| (s, statuses.get(*s)))
        .collect();
    assert!(
        failed.is_empty(),
        "scenarios that apply to a tools server failed or did not run: {failed:#?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A POST of `body` to `/mcp`: status and JSON body.
async fn post_raw(
    url: &str,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http_client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        sse_message(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

#[tokio::test]
async fn bad_input_at_mcp_gets_its_exact_error() {
    let (up, _bus, _fixture, _seen) = mesh(&[]).await;
    let url = format!("http://{}/mcp", up.http);

    let (status, body, _) = post_raw(&url, r#"{"jsonrpc":"2.0","id":1,"method":"#, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "{body}"
    );
    assert_eq!(body["id"], Value::Null);

    let (status, body, _) = post_raw(&url, r#"{"hello":1}"#, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "{body}"
    );

    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#,
        "a".repeat(1024 * 1024)
    );
    let (status, body, _) = post_raw(&url, big, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (413, Some(-32600)),
        "{body}"
    );

    let client = http_client();
    let session = initialize(&client, &url).await.expect("a session");
    let call = |id: u64, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "foo/bar"}),
    )
    .await;
    assert_eq!(reply["error"]["code"], -32601, "{reply}");
    assert_eq!(reply["id"], 3);
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        call(4, json!({"arguments": {}})),
    )
    .await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert_eq!(reply["id"], 4);
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        call(5, json!({"name": "no_such_tool", "arguments": {}})),
    )
    .await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool \"no_such_tool\""),
        "{reply}"
    );
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        call(
            6,
            json!({"name": "tickets_classify", "arguments": {"title": 5}}),
        ),
    )
    .await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    let paths: Vec<&str> = reply["error"]["data"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/title"), "{reply}");

    // A rebinding page's Host or Origin is refused on a loopback gateway.
    let resp = http_client()
        .post(&url)
        .header("host", "evil.example.com")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Still serving after all that.
    assert!(
        list_tools(&url)
            .await
            .contains(&"tickets_classify".to_owned())
    );
    let log = up.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn the_gateway_token_covers_mcp() {
    let up = Up::start(&["--token", "s3cret"]);
    let mut up = up;
    up.proc.banner();
    let url = format!("http://{}/mcp", up.http);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    for token in [None, Some("wrong")] {
        let (status, body, headers) = post_raw(&url, init.clone(), token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer", "{token:?}");
        assert_eq!(body["code"], "AUTH_FAILURE");
    }
    let (status, body, _) = post_raw(&url, init, Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "weft");
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
}

/// Runs an SDK client to its end: registers service `late` (endpoint `ping`) when the
/// client prints `READY list_changed` on stderr, and returns its JSON report.
async fn run_client(bus: &Bus, mut command: tokio::process::Command) -> (Value, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the MCP client");
    let stderr = child.stderr.take().unwrap();
    let bus = bus.clone();
    let watcher = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut log = String::new();
        let mut late = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "READY list_changed" && late.is_none() {
                late = Some(
                    Service::new("late", "1.0.0")
                        .endpoint(
                            Endpoint::new("ping", |_req: Request| async { Ok(json!("pong")) })
                                .description("Answers pong"),
                        )
                        .serve(&bus)
                        .await
                        .expect("serve late"),
                );
            }
            log.push_str(&line);
            log.push('\n');
        }
        if let Some(late) = late {
            late.stop().await.ok();
        }
        log
    });
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the MCP client ran over 180 s")
        .expect("the MCP client ran");
    let log = watcher.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client report is not JSON ({e}): {stdout}\nstderr:\n{log}"));
    (report, log)
}

/// Asserts every check of a client report passed, and that `test.slow` saw the cancel.
fn assert_report(report: &Value, log: &str, seen: &Seen) {
    let checks = report["checks"].as_object().expect("checks");
    let failed: Vec<(&String, &Value)> = checks.iter().filter(|(_, c)| c["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "failed checks: {failed:#?}\nreport: {report:#}\nstderr:\n{log}"
    );
    for name in [
        "list_tools",
        "call",
        "schema_violation",
        "unknown_tool",
        "bus_error",
        "list_changed",
        "progress",
        "cancel",
    ] {
        assert!(
            checks.contains_key(name),
            "check {name} did not run: {report:#}"
        );
    }
    assert!(
        seen.cancelled.load(Ordering::SeqCst) >= 1,
        "the client cancelled test_slow but its handler never saw the cancel\n{report:#}"
    );
}

/// The Python client (`py_client.py`) with `args`.
fn python_client(clients: &Clients, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(&clients.python);
    c.arg(script("py_client.py")).args(args);
    c
}

/// The TypeScript client (`ts_client.mjs`) with `args`.
fn ts_client(clients: &Clients, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("node");
    c.arg(script("ts_client.mjs"))
        .args(args)
        .env("MCP_NODE_MODULES", &clients.node_modules);
    c
}

/// An SDK client against `/mcp` of a fresh mesh: every check passes at `version`.
async fn client_over_http(
    client: impl FnOnce(&Clients, &str) -> tokio::process::Command,
    version: &str,
) {
    let clients = clients();
    let (up, bus, _fixture, seen) = mesh(&[]).await;
    let url = format!("http://{}/mcp", up.http);
    let (report, log) = run_client(&bus, client(&clients, &url)).await;
    assert_eq!(report["protocolVersion"], version, "{report:#}");
    assert_report(&report, &log, &seen);
}

#[tokio::test]
async fn the_python_sdk_client_uses_the_mesh_over_http_at_2026_07_28() {
    client_over_http(|c, url| python_client(c, &["--url", url]), "2026-07-28").await;
}

#[tokio::test]
async fn the_python_sdk_client_uses_the_mesh_over_http_with_initialize() {
    let client = |c: &Clients, url: &str| python_client(c, &["--url", url, "--mode", "legacy"]);
    client_over_http(client, "2025-11-25").await;
}

#[tokio::test]
async fn the_typescript_sdk_client_uses_the_mesh_over_http() {
    client_over_http(|c, url| ts_client(c, &["--url", url]), "2025-11-25").await;
}

#[tokio::test]
async fn both_sdk_clients_use_the_mesh_over_stdio_with_weft_mcp() {
    let clients = clients();
    let (up, bus, _fixture, seen) = mesh(&[]).await;
    let nats = format!("nats://127.0.0.1:{}", up.nats_port);
    let weft = env!("CARGO_BIN_EXE_weft");
    let stdio = ["--stdio", "--", weft, "mcp", "--server", &nats];
    let (report, log) = run_client(&bus, python_client(&clients, &stdio)).await;
    assert_report(&report, &log, &seen);
    let before = seen.cancelled.load(Ordering::SeqCst);
    let (report, log) = run_client(&bus, ts_client(&clients, &stdio)).await;
    assert_report(&report, &log, &seen);
    assert!(
        seen.cancelled.load(Ordering::SeqCst) > before,
        "the TypeScript client's cancel was not seen"
    );
}

/// The pids of the children of `parent` whose command name starts with `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may hold spaces, so split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && comm.starts_with(name) {
            out.push(pid);
        }
    }
    out
}

/// `weft call target payload` against `nats`: (success, stdout, stderr).
async fn weft_call(nats: &str, target: &str, payload: &str) -> (bool, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["call", target, payload, "--server", nats])
        .env_remove("NATS_URL")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_attached_python_mcp_server_is_a_service_that_agents_and_mcp_clients_use() {
    let clients = clients();
    let fixture_server = script("fixture_server.py");
    let attach = format!(
        "fix={} {}",
        clients.python.display(),
        fixture_server.display()
    );
    let mut up = Up::start(&["--demo", "--mcp-attach", &attach]);
    let banner = up.proc.banner();
    assert!(banner.contains("mcp attach   fix (stdio: "), "{banner}");
    let nats = format!("nats://127.0.0.1:{}", up.nats_port);
    let url = format!("http://{}/mcp", up.http);
    // Tool `math.mul` is endpoint `math-2e-mul`, so tool `fix_math-2e-mul` on /mcp.
    wait_for_tool(&url, "fix_math-2e-mul").await;

    // `weft call` reaches each tool; structured results come back as they were.
    let (ok, reply, err) = weft_call(&nats, "fix.echo", r#"{"text":"hi"}"#).await;
    assert!(ok, "{err}");
    assert_eq!(reply, json!({"text": "hi"}));
    let (ok, reply, err) = weft_call(&nats, "fix.math-2e-mul", r#"{"a":3,"b":4}"#).await;
    assert!(ok, "{err}");
    assert_eq!(reply, json!({"product": 12}));
    let (ok, _, err) = weft_call(&nats, "fix.fail", "{}").await;
    assert!(!ok);
    assert!(err.contains("TOOL_ERROR: fixture failure"), "{err}");

    // The support agent (scripted model) calls the external tool.
    let (ok, reply, err) =
        weft_call(&nats, "support", r#"{"message":"use fix_echo with hello"}"#).await;
    assert!(ok, "{err}");
    assert_eq!(reply["tool_calls"][0]["name"], "fix_echo", "{reply}");
    assert_eq!(
        reply["tool_calls"][0]["result"],
        json!({"text": "hello"}),
        "{reply}"
    );
    assert!(
        reply["reply"]
            .as_str()
            .unwrap()
            .starts_with("fix_echo answered:"),
        "{reply}"
    );

    // Through the mesh's own MCP server, the attached tool keeps its schema and result.
    let client = http_client();
    let session = initialize(&client, &url).await.unwrap();
    let listed = rpc(
        &client,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let mul = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fix_math-2e-mul")
        .cloned()
        .unwrap();
    assert_eq!(mul["inputSchema"]["required"], json!(["a", "b"]), "{mul}");
    let called = rpc(
        &client,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "fix_math-2e-mul", "arguments": {"a": 6, "b": 7}}}),
    )
    .await;
    assert_eq!(
        called["result"]["structuredContent"],
        json!({"product": 42}),
        "{called}"
    );

    // A tool added at run time appears on the bus (the bridge re-registers on
    // tools/list_changed).
    let (ok, _, err) = weft_call(&nats, "fix.enable_extra", "{}").await;
    assert!(ok, "{err}");
    wait_for_tool(&url, "fix_extra").await;
    let (ok, reply, err) = weft_call(&nats, "fix.extra", "{}").await;
    assert!(ok, "{err}");
    assert_eq!(reply, json!("extra tool"));

    // Killing the server process is survived: the bridge starts it again.
    let pids = children_named(up.proc.child.id(), "python");
    assert_eq!(pids.len(), 1, "one stdio server child: {pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut answered = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let (true, reply, _) = weft_call(&nats, "fix.echo", r#"{"text":"again"}"#).await {
            answered = Some(reply);
            break;
        }
    }
    assert_eq!(
        answered,
        Some(json!({"text": "again"})),
        "no answer after the kill\n{}",
        up.log()
    );
    let restarted = children_named(up.proc.child.id(), "python");
    assert!(
        restarted.len() == 1 && restarted != pids,
        "{pids:?} → {restarted:?}"
    );
    assert!(
        up.log().contains("MCP server lost; connecting again"),
        "{}",
        up.log()
    );

    // Ctrl-C: the bridge deregisters and its server exits with weft up.
    let status = up
        .proc
        .interrupt(Duration::from_secs(20))
        .expect("weft up stopped on Ctrl-C");
    assert!(status.success(), "{status:?}\n{}", up.log());
    let server = PathBuf::from(format!("/proc/{}", restarted[0]));
    for _ in 0..50 {
        if !server.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!server.exists(), "the stdio server outlived weft up");
}

/// The time from `after` to the next list-changed notification, at most `limit`.
async fn within(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>,
    after: std::time::Instant,
    limit: Duration,
) -> Duration {
    let at = tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no tools/list_changed within {limit:?}"))
        .unwrap();
    at.duration_since(after)
}

/// Reads the session's standalone SSE stream (`GET /mcp`) and sends the time of each
/// `notifications/tools/list_changed` on it.
async fn list_changed_stream(
    url: &str,
    session: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<std::time::Instant> {
    use futures::StreamExt as _;
    let resp = http_client()
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET /mcp");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                if line.contains("notifications/tools/list_changed") {
                    let _ = tx.send(std::time::Instant::now());
                }
            }
        }
    });
    rx
}

#[tokio::test]
async fn tools_list_changed_follows_services_registering_leaving_and_expiring() {
    let (up, bus, _fixture, _seen) = mesh(&[]).await;
    let url = format!("http://{}/mcp", up.http);
    let client = http_client();
    let session = initialize(&client, &url).await.unwrap();
    let mut changed = list_changed_stream(&url, &session).await;
    // Registering: a notification within 2 s.
    let t = std::time::Instant::now();
    let service = Service::new("late", "1.0.0")
        .endpoint(
            Endpoint::new("ping", |_req: Request| async { Ok(json!("pong")) }).description("pong"),
        )
        .serve(&bus)
        .await
        .unwrap();
    let took = within(&mut changed, t, Duration::from_secs(2)).await;
    println!("list_changed after registering: {took:?}");

    // Leaving cleanly: within 2 s.
    let t = std::time::Instant::now();
    service.stop().await.unwrap();
    let took = within(&mut changed, t, Duration::from_secs(2)).await;
    println!("list_changed after leaving: {took:?}");

    // Expiring: an instance that stops heartbeating (as if killed) goes at the TTL
    // (the default 15 s), and the notification follows within 2 s of that.
    let mut r =
        weft_bus::registry::Registration::new(weft_bus::registry::Kind::Service, "ghost", "1.0.0");
    r.endpoints.push(weft_bus::registry::EndpointInfo {
        name: "boo".into(),
        subject: "weft.invoke.ghost.boo".into(),
        description: "gone soon".into(),
        input_schema: None,
        output_schema: None,
        default: false,
        streaming: false,
        metadata: Default::default(),
    });
    let registered = weft_bus::registry::Registry::open(&bus)
        .await
        .unwrap()
        .register(r)
        .await
        .unwrap();
    within(
        &mut changed,
        std::time::Instant::now(),
        Duration::from_secs(2),
    )
    .await;
    let t = std::time::Instant::now();
    drop(registered); // no more heartbeats, no delete
    let took = within(&mut changed, t, Duration::from_secs(15 + 2)).await;
    println!("list_changed after the last heartbeat: {took:?} (TTL 15 s)");
    assert!(
        took >= Duration::from_secs(10),
        "the ghost went before its TTL: {took:?}"
    );
    assert!(!list_tools(&url).await.contains(&"ghost_boo".to_owned()));
}

#[tokio::test]
async fn mcp_services_limits_the_tools_and_hints_become_annotations() {
    let (up, _bus, _fixture, _seen) = mesh(&["--mcp-services", "tickets,test"]).await;
    let url = format!("http://{}/mcp", up.http);
    let client = http_client();
    let session = initialize(&client, &url).await.unwrap();
    let listed = rpc(
        &client,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let tools = listed["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"tickets_classify") && names.contains(&"test_simple_text"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"support_chat"),
        "support is not in --mcp-services: {names:?}"
    );
    let simple = tools
        .iter()
        .find(|t| t["name"] == "test_simple_text")
        .unwrap();
    assert_eq!(
        simple["annotations"],
        json!({"readOnlyHint": true}),
        "{simple}"
    );
    assert_eq!(simple["description"], "Returns simple text");
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "support_chat", "arguments": {"message": "hi"}}}),
    )
    .await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");

    // The calls are counted.
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "test_error_handling", "arguments": {}}}),
    )
    .await;
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    let metrics = client
        .get(format!("http://{}/metrics", up.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} not in\n{metrics}"))
    };
    assert!(value(r#"weft_mcp_requests_total{method="tools/list",outcome="ok"}"#) >= 1.0);
    assert_eq!(
        value(r#"weft_mcp_tool_calls_total{outcome="unknown_tool"}"#),
        1.0
    );
    assert_eq!(
        value(r#"weft_mcp_tool_calls_total{outcome="tool_error"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_continues_the_callers_trace_into_the_invoke() {
    use crate::otlp::{Kind, Receiver};
    const HEADER_TRACE: &str = "6e0c63257de34c926f9efcd03927272e";
    const META_TRACE: &str = "7a3f9c0e1d2b4a5968778695a4b3c2d1";
    const CALLER: &str = "00f067aa0ba902b7";
    let otlp = Receiver::start().await;
    let endpoint = otlp.endpoint();
    let mut up = Up::start_env(&["--demo"], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    tokio::task::block_in_place(|| up.proc.banner());
    let url = format!("http://{}/mcp", up.http);
    wait_for_tool(&url, "tickets_classify").await;
    let client = http_client();
    let session = initialize(&client, &url).await.unwrap();
    let call = |id: u64, meta: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "tickets_classify", "arguments": {"title": "Cannot log in"}, "_meta": meta}})
    };

    // The HTTP request's traceparent.
    let reply = client
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("traceparent", format!("00-{HEADER_TRACE}-{CALLER}-01"))
        .body(call(2, json!({})).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(reply.contains("structuredContent"), "{reply}");
    // `_meta.traceparent` (SEP-414), no header.
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        call(
            3,
            json!({"traceparent": format!("00-{META_TRACE}-{CALLER}-01")}),
        ),
    )
    .await;
    assert_eq!(reply["result"]["isError"], false, "{reply}");

    let spans = otlp
        .wait_for(
            |spans| {
                [HEADER_TRACE, META_TRACE].iter().all(|t| {
                    spans.iter().any(|s| {
                        s.trace_id == *t && s.name == "receive weft.invoke.tickets.classify"
                    })
                })
            },
            Duration::from_secs(30),
        )
        .await;
    for trace in [HEADER_TRACE, META_TRACE] {
        let tree = otlp.tree(trace);
        let of = |name: &str| {
            spans
                .iter()
                .find(|s| s.trace_id == trace && s.name == name)
                .unwrap_or_else(|| panic!("no {name:?} in trace {trace}:\n{tree}"))
        };
        let tool = of("tools/call tickets_classify");
        assert_eq!(tool.kind, Kind::Server, "{tree}");
        assert_eq!(tool.str("mcp.method.name"), Some("tools/call"));
        assert_eq!(tool.str("gen_ai.tool.name"), Some("tickets_classify"));
        assert_eq!(tool.str("gen_ai.operation.name"), Some("execute_tool"));
        assert_eq!(tool.str("mcp.protocol.version"), Some("2025-11-25"));
        let send = of("send weft.invoke.tickets.classify");
        assert!(
            send.is_child_of(tool),
            "the invoke is inside the tool call:\n{tree}"
        );
        let receive = of("receive weft.invoke.tickets.classify");
        assert!(receive.is_child_of(send), "{tree}");
        if trace == HEADER_TRACE {
            let http = of("POST /mcp");
            assert!(
                tool.is_child_of(http),
                "the HTTP request's span is the parent:\n{tree}"
            );
            assert_eq!(http.parent_span_id.as_deref(), Some(CALLER), "{tree}");
        } else {
            assert_eq!(
                tool.parent_span_id.as_deref(),
                Some(CALLER),
                "_meta.traceparent is the parent:\n{tree}"
            );
        }
    }
}

#[tokio::test]
async fn two_endpoints_with_one_tool_name_are_shown_by_weft_ls_and_never_shadow() {
    let mut up = Up::start(&[]);
    up.proc.banner();
    let nats = format!("nats://127.0.0.1:{}", up.nats_port);
    let bus = Bus::connect(&nats).await.unwrap();
    let answer = |text: &'static str| move |_req: Request| async move { Ok(json!(text)) };
    let _a = Service::new("a", "1.0.0")
        .endpoint(Endpoint::new("b_c", answer("from a.b_c")))
        .serve(&bus)
        .await
        .unwrap();
    let _ab = Service::new("a_b", "1.0.0")
        .endpoint(Endpoint::new("c", answer("from a_b.c")))
        .serve(&bus)
        .await
        .unwrap();
    let url = format!("http://{}/mcp", up.http);
    wait_for_tool(&url, "a_b_c").await;
    let tools = list_tools(&url).await;
    assert_eq!(
        tools.iter().filter(|t| *t == "a_b_c").count(),
        1,
        "{tools:?}"
    );
    let client = http_client();
    let session = initialize(&client, &url).await.unwrap();
    let reply = rpc(
        &client,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "a_b_c", "arguments": {}}}),
    )
    .await;
    assert_eq!(
        reply["result"]["content"][0]["text"], "from a.b_c",
        "{reply}"
    );
    let ls = crate::weft_output(&["ls", "--server", &nats]);
    assert!(
        ls.contains("a_b.c (tool a_b_c): tool name a_b_c is already a.b_c's"),
        "{ls}"
    );
    assert!(
        up.log().contains("endpoint left out of the MCP tools"),
        "{}",
        up.log()
    );
}
