//! The spans `weft up --demo` exports follow the OpenTelemetry semantic conventions,
//! as a tracing backend reads them: an OTLP/protobuf receiver ([`crate::otlp`]) gets
//! the spans of an event (gateway → flow → agent → tools), an invoke and a streaming
//! invoke, and the test checks every span's name, kind, parent and attributes, with
//! their types (an integer is an integer), and that probes make no traces.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::otlp::{Attr, Kind, Receiver, Span};
use crate::{Up, http_client};

const EVENT: &str = "0af7651916cd43dd8448eb211c80319c";
const INVOKE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const STREAM: &str = "5b8efff798038103d269b633813fc60c";
const PROBE: &str = "1f2e3d4c5b6a79880123456789abcdef";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Span], name: &str, tree: &str) -> &'a Span {
    match named(spans, name)[..] {
        [s] => s,
        ref other => panic!("{} spans named {name:?} in:\n{tree}", other.len()),
    }
}

fn str_attr(s: &Span, key: &str) -> String {
    match s.attr(key) {
        Some(Attr::Str(v)) => v.clone(),
        other => panic!("{}: {key} is {other:?}, not a string", s.name),
    }
}

fn int_attr(s: &Span, key: &str) -> i64 {
    match s.attr(key) {
        Some(Attr::Int(v)) => *v,
        other => panic!("{}: {key} is {other:?}, not an integer", s.name),
    }
}

/// The messaging attributes every messaging span has.
fn assert_messaging(s: &Span, operation: &str, kind: &str, kind_of_span: Kind) {
    assert_eq!(s.kind, kind_of_span, "{}", s.name);
    assert_eq!(str_attr(s, "messaging.system"), "nats", "{}", s.name);
    assert_eq!(
        str_attr(s, "messaging.operation.name"),
        operation,
        "{}",
        s.name
    );
    assert_eq!(str_attr(s, "messaging.operation.type"), kind, "{}", s.name);
    assert!(
        str_attr(s, "messaging.destination.name").starts_with("weft."),
        "{}",
        s.name
    );
    assert_eq!(str_attr(s, "messaging.message.id").len(), 36, "{}", s.name);
}

/// The HTTP server span of a request.
fn assert_http(s: &Span, route: &str, path: &str, status: i64) {
    assert_eq!(s.kind, Kind::Server, "{}", s.name);
    assert_eq!(s.name, format!("POST {route}"));
    assert_eq!(str_attr(s, "http.request.method"), "POST");
    assert_eq!(str_attr(s, "http.route"), route);
    assert_eq!(str_attr(s, "url.path"), path);
    assert_eq!(str_attr(s, "url.scheme"), "http");
    assert_eq!(str_attr(s, "server.address"), "127.0.0.1");
    assert!(int_attr(s, "server.port") > 0);
    assert_eq!(str_attr(s, "client.address"), "127.0.0.1");
    assert!(int_attr(s, "client.port") > 0);
    assert_eq!(str_attr(s, "network.protocol.version"), "1.1");
    assert_eq!(int_attr(s, "http.response.status_code"), status);
    assert_eq!(
        s.parent_span_id.as_deref(),
        Some(CALLER_SPAN),
        "the caller's span is the parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_follow_the_semantic_conventions() {
    let otlp = Receiver::start().await;
    let endpoint = otlp.endpoint();
    let mut up = Up::start_env(&["--demo"], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    tokio::task::block_in_place(|| up.proc.banner());
    let client = http_client();
    let post = |path: &str, trace: &str, body: &str| {
        client
            .post(format!("http://{}{path}", up.http))
            .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = client
            .get(format!("http://{}{probe}", up.http))
            .header("traceparent", format!("00-{PROBE}-{CALLER_SPAN}-01"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{probe}: {}", r.status());
    }
    let event = post(
        "/v1/events/ticket.created",
        EVENT,
        r#"{"title":"Cannot log in","body":"The reset link fails"}"#,
    )
    .await
    .unwrap();
    assert_eq!(event.status(), 202);
    let invoke = post(
        "/v1/invoke/support",
        INVOKE,
        r#"{"message":"How many tickets are open?"}"#,
    )
    .await
    .unwrap();
    assert_eq!(invoke.status(), 200);
    let stream = post(
        "/v1/invoke/tickets.classify/stream",
        STREAM,
        r#"{"title":"refund please"}"#,
    )
    .await
    .unwrap();
    assert_eq!(stream.status(), 200);
    let sse = stream.text().await.unwrap();
    assert!(sse.contains("agent.response.final"), "{sse}");
    // The flow is done once its announcement was published.
    otlp.wait_for(
        |spans| {
            spans.iter().any(|s| {
                s.trace_id == EVENT
                    && s.str("messaging.destination.name") == Some("weft.events.ticket.triaged")
            })
        },
        Duration::from_secs(60),
    )
    .await;
    let status = tokio::task::block_in_place(|| up.proc.interrupt(Duration::from_secs(30)));
    assert!(
        status.is_some_and(|s| s.success()),
        "weft up failed:\n{}",
        up.log()
    );

    otlp.assert_unique_keys();
    assert!(
        otlp.trace(PROBE).is_empty(),
        "a probe exported a trace:\n{}",
        otlp.tree(PROBE)
    );
    let all = otlp.spans();
    assert!(
        all.iter().all(|s| !s.name.starts_with("GET ")),
        "probes made spans: {:?}",
        all.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let resource = &all[0].resource;
    for key in ["service.name", "service.version", "service.instance.id"] {
        assert!(
            matches!(resource.get(key), Some(Attr::Str(_))),
            "{key}: {resource:?}"
        );
    }

    // An event: gateway → publish → the flow (process, run, steps) and the tickets
    // store → classify invoke, the agent (run, model calls, tool) → announcement.
    let spans = otlp.trace(EVENT);
    let tree = otlp.tree(EVENT);
    eprintln!("the trace of one demo event:\n{tree}");
    let http = one(&spans, "POST /v1/events/{event_type}", &tree);
    assert_http(
        http,
        "/v1/events/{event_type}",
        "/v1/events/ticket.created",
        202,
    );
    let publishes = named(&spans, "publish weft.events.{event_type}");
    assert_eq!(
        publishes.len(),
        3,
        "the ticket, the agent run's end and the flow's announcement:\n{tree}"
    );
    for p in &publishes {
        assert_messaging(p, "publish", "send", Kind::Producer);
        assert_eq!(
            str_attr(p, "messaging.destination.template"),
            "weft.events.{event_type}"
        );
        assert!(int_attr(p, "messaging.message.body.size") > 100);
        assert!(int_attr(p, "weft.stream.sequence") >= 1);
        assert_eq!(p.attr("weft.duplicate"), Some(&Attr::Bool(false)));
    }
    let published = publishes
        .iter()
        .find(|p| p.str("messaging.destination.name") == Some("weft.events.ticket.created"))
        .unwrap_or_else(|| panic!("{tree}"));
    assert!(published.is_child_of(http), "{tree}");
    // The agent's run announces its end inside its `invoke_agent` span's parent, the
    // served request.
    let run_end = publishes
        .iter()
        .find(|p| p.str("messaging.destination.name") == Some("weft.events.agent.run.completed"))
        .unwrap_or_else(|| panic!("{tree}"));
    let agent_run = one(&spans, "invoke_agent support", &tree);
    assert_eq!(run_end.parent_span_id, agent_run.parent_span_id, "{tree}");
    let processes = named(&spans, "process weft.events.{event_type}");
    let groups: BTreeSet<String> = processes
        .iter()
        .map(|p| {
            assert_messaging(p, "process", "process", Kind::Consumer);
            assert_eq!(int_attr(p, "weft.delivery.attempt"), 1);
            assert!(int_attr(p, "weft.stream.sequence") >= 1);
            assert_eq!(p.attr("weft.replayed"), Some(&Attr::Bool(false)));
            str_attr(p, "messaging.consumer.group.name")
        })
        .collect();
    assert_eq!(
        groups,
        BTreeSet::from(["flow_triage".to_owned(), "tickets_store".to_owned()]),
        "{tree}"
    );
    let flow_delivery = processes
        .iter()
        .find(|p| p.str("messaging.consumer.group.name") == Some("flow_triage"))
        .unwrap();
    assert!(flow_delivery.is_child_of(published), "{tree}");
    let run = one(&spans, "flow.run", &tree);
    assert_eq!(run.kind, Kind::Internal);
    assert!(run.is_child_of(flow_delivery), "{tree}");
    assert_eq!(str_attr(run, "weft.flow.name"), "triage");
    assert_eq!(str_attr(run, "weft.flow.status"), "completed");
    assert_eq!(str_attr(run, "weft.flow.run_id").len(), 36);
    let steps = named(&spans, "flow.step");
    assert_eq!(steps.len(), 3, "{tree}");
    for step in &steps {
        assert!(step.is_child_of(run), "{tree}");
        assert_eq!(int_attr(step, "weft.flow.step.attempt"), 1);
        assert_eq!(
            str_attr(step, "weft.flow.run_id"),
            str_attr(run, "weft.flow.run_id")
        );
    }
    let step = |name: &str| {
        *steps
            .iter()
            .find(|s| s.str("weft.flow.step") == Some(name))
            .unwrap_or_else(|| panic!("no step {name}:\n{tree}"))
    };
    let send = one(&spans, "send weft.invoke.tickets.classify", &tree);
    assert_messaging(send, "send", "send", Kind::Client);
    assert!(send.is_child_of(step("classify")), "{tree}");
    let receive = one(&spans, "receive weft.invoke.tickets.classify", &tree);
    assert_messaging(receive, "receive", "receive", Kind::Server);
    assert!(receive.is_child_of(send), "{tree}");
    assert_eq!(str_attr(receive, "messaging.consumer.group.name"), "q");
    assert_eq!(str_attr(receive, "weft.endpoint"), "classify");
    // the agent, asked by the draft step
    let ask = one(&spans, "send weft.invoke.support", &tree);
    assert!(ask.is_child_of(step("draft")), "{tree}");
    let chat = one(&spans, "receive weft.invoke.support", &tree);
    assert!(chat.is_child_of(ask), "{tree}");
    let agent = one(&spans, "invoke_agent support", &tree);
    assert!(agent.is_child_of(chat), "{tree}");
    assert_eq!(str_attr(agent, "gen_ai.operation.name"), "invoke_agent");
    assert_eq!(str_attr(agent, "gen_ai.agent.name"), "support");
    assert!(str_attr(agent, "gen_ai.conversation.id").starts_with("triage-"));
    let models = named(&spans, "chat scripted");
    assert_eq!(models.len(), 2, "two model turns:\n{tree}");
    for m in &models {
        assert_eq!(m.kind, Kind::Client);
        assert!(m.is_child_of(agent), "{tree}");
        assert_eq!(str_attr(m, "gen_ai.operation.name"), "chat");
        assert_eq!(str_attr(m, "gen_ai.provider.name"), "scripted");
    }
    let tool = one(&spans, "execute_tool tickets_get", &tree);
    assert!(tool.is_child_of(agent), "{tree}");
    assert_eq!(str_attr(tool, "gen_ai.operation.name"), "execute_tool");
    assert_eq!(str_attr(tool, "gen_ai.tool.type"), "function");
    let get = one(&spans, "send weft.invoke.tickets.get", &tree);
    assert!(get.is_child_of(tool), "{tree}");
    one(&spans, "receive weft.invoke.tickets.get", &tree);
    let announce = publishes
        .iter()
        .find(|p| p.str("messaging.destination.name") == Some("weft.events.ticket.triaged"))
        .unwrap();
    assert!(announce.is_child_of(step("announce")), "{tree}");

    // An invoke: the gateway's span, the agent's server span under it.
    let spans = otlp.trace(INVOKE);
    let tree = otlp.tree(INVOKE);
    let http = one(&spans, "POST /v1/invoke/{target}", &tree);
    assert_http(http, "/v1/invoke/{target}", "/v1/invoke/support", 200);
    let send = one(&spans, "send weft.invoke.support", &tree);
    assert!(send.is_child_of(http), "{tree}");
    assert_eq!(send.attr("weft.stream"), Some(&Attr::Bool(false)));
    assert!(one(&spans, "receive weft.invoke.support", &tree).is_child_of(send));
    one(&spans, "execute_tool tickets_list", &tree);

    // A streaming invoke of a plain endpoint (started, then final).
    let spans = otlp.trace(STREAM);
    let tree = otlp.tree(STREAM);
    let http = one(&spans, "POST /v1/invoke/{target}/stream", &tree);
    assert_http(
        http,
        "/v1/invoke/{target}/stream",
        "/v1/invoke/tickets.classify/stream",
        200,
    );
    let send = one(&spans, "send weft.invoke.tickets.classify", &tree);
    assert_eq!(send.attr("weft.stream"), Some(&Attr::Bool(true)));
    assert!(send.is_child_of(http), "{tree}");
    let receive = one(&spans, "receive weft.invoke.tickets.classify", &tree);
    assert!(receive.is_child_of(send), "{tree}");
    assert_eq!(
        receive.attr("weft.stream"),
        Some(&Attr::Bool(false)),
        "a plain endpoint"
    );
}
