//! A2A 0.3 on the same endpoint as 1.0 (DESIGN §14), for older clients such as
//! go-micro's: the method names `message/send`, `message/stream`, `tasks/get`,
//! `tasks/cancel`, `tasks/resubscribe` (and `tasks/pushNotificationConfig/*`,
//! answered -32003: push is not offered), `kind` discriminators, lowercase roles and
//! states, and `final` on status updates.
//!
//! The official crates speak 1.0 only, so this module converts: a 0.3 request becomes
//! the 1.0 request of the same handler, and its answer goes back in 0.3 shapes.
//!
//! | 0.3 | 1.0 |
//! |---|---|
//! | `"role": "user"` / `"agent"` | `ROLE_USER` / `ROLE_AGENT` |
//! | `{"kind": "text", "text"}` | `{"text"}` |
//! | `{"kind": "data", "data"}` | `{"data"}` |
//! | `{"kind": "file", "file": {"bytes", "mimeType", "name"}}` | `{"raw", "mediaType", "filename"}` |
//! | `{"kind": "file", "file": {"uri", …}}` | `{"url", …}` |
//! | `"state": "working"`, `"input-required"`, `"unknown"` … | `TASK_STATE_WORKING`, `TASK_STATE_INPUT_REQUIRED`, `TASK_STATE_UNSPECIFIED` … |
//! | `configuration.blocking` (default true) | `returnImmediately = !blocking` |
//! | result: the Task or Message itself | `{"task"}` / `{"message"}` |
//! | stream events `kind: task / message / status-update (final) / artifact-update` | `task` / `message` / `statusUpdate` / `artifactUpdate` |
//!
//! A message that continues a task that already ended (go-micro sends the last
//! `taskId` with its `contextId`) starts a new task in the same context instead of
//! failing: the context, and so the agent's memory, carries on.

use a2a::{A2AError, JsonRpcId, StreamResponse};
use a2a_server::RequestHandler;
use a2a_server::ServiceParams;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Map, Value, json};

/// The 0.3 method names this endpoint answers.
pub const METHODS: [&str; 9] = [
    "message/send",
    "message/stream",
    "tasks/get",
    "tasks/cancel",
    "tasks/resubscribe",
    "tasks/pushNotificationConfig/set",
    "tasks/pushNotificationConfig/get",
    "tasks/pushNotificationConfig/list",
    "tasks/pushNotificationConfig/delete",
];

/// Whether `method` is a 0.3 method name.
pub fn is_compat(method: &str) -> bool {
    METHODS.contains(&method)
}

const STATES: [(&str, &str); 9] = [
    ("TASK_STATE_SUBMITTED", "submitted"),
    ("TASK_STATE_WORKING", "working"),
    ("TASK_STATE_INPUT_REQUIRED", "input-required"),
    ("TASK_STATE_COMPLETED", "completed"),
    ("TASK_STATE_CANCELED", "canceled"),
    ("TASK_STATE_FAILED", "failed"),
    ("TASK_STATE_REJECTED", "rejected"),
    ("TASK_STATE_AUTH_REQUIRED", "auth-required"),
    ("TASK_STATE_UNSPECIFIED", "unknown"),
];

fn invalid(msg: impl Into<String>) -> A2AError {
    A2AError::invalid_params(msg)
}

/// A 0.3 part as 1.0 JSON.
fn part_to_v1(part: &Value) -> Result<Value, A2AError> {
    let o = part
        .as_object()
        .ok_or_else(|| invalid("a part must be an object"))?;
    let mut out = Map::new();
    if let Some(m) = o.get("metadata") {
        out.insert("metadata".into(), m.clone());
    }
    let kind = o.get("kind").and_then(Value::as_str);
    if let Some(text) = o
        .get("text")
        .filter(|_| matches!(kind, None | Some("text")))
    {
        out.insert("text".into(), text.clone());
    } else if let Some(data) = o
        .get("data")
        .filter(|_| matches!(kind, None | Some("data")))
    {
        out.insert("data".into(), data.clone());
    } else if let Some(file) = o
        .get("file")
        .filter(|_| matches!(kind, None | Some("file")))
    {
        if let Some(bytes) = file.get("bytes") {
            out.insert("raw".into(), bytes.clone());
        } else if let Some(uri) = file.get("uri") {
            out.insert("url".into(), uri.clone());
        } else {
            return Err(invalid("a file part needs file.bytes or file.uri"));
        }
        if let Some(t) = file.get("mimeType") {
            out.insert("mediaType".into(), t.clone());
        }
        if let Some(n) = file.get("name") {
            out.insert("filename".into(), n.clone());
        }
    } else {
        return Err(invalid(format!(
            "unknown part {}: a 0.3 part is {{\"kind\": \"text\" | \"data\" | \"file\", …}}",
            kind.unwrap_or("without kind")
        )));
    }
    Ok(Value::Object(out))
}

/// A 1.0 part (JSON) in 0.3 shape.
fn part_to_v03(part: &Value) -> Value {
    let Some(o) = part.as_object() else {
        return part.clone();
    };
    let mut out = Map::new();
    if let Some(t) = o.get("text") {
        out.insert("kind".into(), json!("text"));
        out.insert("text".into(), t.clone());
    } else if let Some(d) = o.get("data") {
        out.insert("kind".into(), json!("data"));
        out.insert("data".into(), d.clone());
    } else {
        let mut file = Map::new();
        if let Some(b) = o.get("raw") {
            file.insert("bytes".into(), b.clone());
        }
        if let Some(u) = o.get("url") {
            file.insert("uri".into(), u.clone());
        }
        if let Some(m) = o.get("mediaType") {
            file.insert("mimeType".into(), m.clone());
        }
        if let Some(n) = o.get("filename") {
            file.insert("name".into(), n.clone());
        }
        out.insert("kind".into(), json!("file"));
        out.insert("file".into(), Value::Object(file));
    }
    if let Some(m) = o.get("metadata") {
        out.insert("metadata".into(), m.clone());
    }
    Value::Object(out)
}

fn parts_with(
    v: &mut Value,
    f: impl Fn(&Value) -> Result<Value, A2AError>,
) -> Result<(), A2AError> {
    if let Some(parts) = v.get_mut("parts").and_then(Value::as_array_mut) {
        for p in parts.iter_mut() {
            *p = f(p)?;
        }
    }
    Ok(())
}

/// A 0.3 message as a 1.0 [`a2a::Message`].
///
/// # Errors
/// -32602 naming what is wrong.
pub fn message_to_v1(message: &Value) -> Result<a2a::Message, A2AError> {
    let mut m = message.clone();
    let o = m
        .as_object_mut()
        .ok_or_else(|| invalid("params.message must be an object"))?;
    o.remove("kind");
    let role = match o.get("role").and_then(Value::as_str) {
        Some("user") => "ROLE_USER",
        Some("agent") => "ROLE_AGENT",
        other => {
            return Err(invalid(format!(
                "message.role must be \"user\" or \"agent\", not {other:?}"
            )));
        }
    };
    o.insert("role".into(), json!(role));
    parts_with(&mut m, part_to_v1)?;
    serde_json::from_value(m).map_err(|e| invalid(format!("params.message: {e}")))
}

/// A 1.0 message (JSON) in 0.3 shape.
fn message_to_v03(m: &mut Value) {
    if let Some(o) = m.as_object_mut() {
        o.insert("kind".into(), json!("message"));
        let role = match o.get("role").and_then(Value::as_str) {
            Some("ROLE_AGENT") => "agent",
            _ => "user",
        };
        o.insert("role".into(), json!(role));
    }
    let _ = parts_with(m, |p| Ok(part_to_v03(p)));
}

fn status_to_v03(status: &mut Value) {
    if let Some(s) = status.get_mut("state") {
        let v03 = STATES
            .iter()
            .find(|(v1, _)| s == v1)
            .map_or("unknown", |(_, v)| v);
        *s = json!(v03);
    }
    if let Some(m) = status.get_mut("message") {
        message_to_v03(m);
    }
}

fn artifact_to_v03(a: &mut Value) {
    let _ = parts_with(a, |p| Ok(part_to_v03(p)));
}

/// A 1.0 task in 0.3 shape.
pub fn task_to_v03(task: &a2a::Task) -> Value {
    let mut t = serde_json::to_value(task).unwrap_or(Value::Null);
    task_value_to_v03(&mut t);
    t
}

fn task_value_to_v03(t: &mut Value) {
    if let Some(o) = t.as_object_mut() {
        o.insert("kind".into(), json!("task"));
    }
    if let Some(s) = t.get_mut("status") {
        status_to_v03(s);
    }
    for key in ["history", "artifacts"] {
        if let Some(items) = t.get_mut(key).and_then(Value::as_array_mut) {
            for item in items {
                if key == "history" {
                    message_to_v03(item);
                } else {
                    artifact_to_v03(item);
                }
            }
        }
    }
}

/// A 1.0 stream event in 0.3 shape.
pub fn event_to_v03(event: &StreamResponse) -> Value {
    match event {
        StreamResponse::Task(t) => task_to_v03(t),
        StreamResponse::Message(m) => {
            let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
            message_to_v03(&mut v);
            v
        }
        StreamResponse::StatusUpdate(u) => {
            let mut v = serde_json::to_value(u).unwrap_or(Value::Null);
            if let Some(s) = v.get_mut("status") {
                status_to_v03(s);
            }
            if let Some(o) = v.as_object_mut() {
                o.insert("kind".into(), json!("status-update"));
                o.insert("final".into(), json!(super::store::ends_stream(event)));
            }
            v
        }
        StreamResponse::ArtifactUpdate(u) => {
            let mut v = serde_json::to_value(u).unwrap_or(Value::Null);
            if let Some(a) = v.get_mut("artifact") {
                artifact_to_v03(a);
            }
            if let Some(o) = v.as_object_mut() {
                o.insert("kind".into(), json!("artifact-update"));
            }
            v
        }
    }
}

/// The 1.0 `SendMessageRequest` of 0.3 `message/send` or `message/stream` params.
///
/// # Errors
/// -32602 naming what is wrong.
fn send_request(params: &Value) -> Result<a2a::SendMessageRequest, A2AError> {
    let message = message_to_v1(
        params
            .get("message")
            .ok_or_else(|| invalid("params.message is required"))?,
    )?;
    let c = params.get("configuration");
    let blocking = c
        .and_then(|c| c.get("blocking"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let history_length = c
        .and_then(|c| c.get("historyLength"))
        .and_then(Value::as_i64)
        .map(|n| n as i32);
    let accepted_output_modes = c
        .and_then(|c| c.get("acceptedOutputModes"))
        .and_then(|m| serde_json::from_value(m.clone()).ok());
    Ok(a2a::SendMessageRequest {
        message,
        configuration: Some(a2a::SendMessageConfiguration {
            accepted_output_modes,
            task_push_notification_config: None,
            history_length,
            return_immediately: Some(!blocking),
        }),
        metadata: params
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok()),
        tenant: None,
    })
}

fn id_param(params: &Value) -> Result<String, A2AError> {
    params
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| invalid("params.id (the task id) is required"))
}

fn reply(id: JsonRpcId, result: Result<Value, A2AError>) -> Response {
    let body = match result {
        Ok(v) => a2a::JsonRpcResponse::success(id, v),
        Err(e) => a2a::JsonRpcResponse::error(id, e.to_jsonrpc_error()),
    };
    axum::Json(body).into_response()
}

/// Drops a `taskId` that names a task that already ended, so the message starts a new
/// task in the same context (see the [module docs](self)).
async fn continue_context<H: RequestHandler>(
    handler: &H,
    params: &ServiceParams,
    request: &mut a2a::SendMessageRequest,
) {
    let Some(task_id) = request.message.task_id.clone() else {
        return;
    };
    let get = a2a::GetTaskRequest {
        id: task_id,
        history_length: Some(0),
        tenant: None,
    };
    if let Ok(task) = handler.get_task(params, get).await
        && task.status.state.is_terminal()
    {
        request.message.task_id = None;
        if request.message.context_id.is_none() {
            request.message.context_id = Some(task.context_id);
        }
    }
}

/// Answers one 0.3 JSON-RPC request with `handler` (see the [module docs](self)).
pub async fn dispatch<H: RequestHandler>(
    handler: &H,
    params: &ServiceParams,
    id: JsonRpcId,
    method: &str,
    body: Value,
) -> Response {
    let p = body.get("params").cloned().unwrap_or(Value::Null);
    match method {
        "message/send" => {
            let result = async {
                let mut request = send_request(&p)?;
                continue_context(handler, params, &mut request).await;
                Ok(match handler.send_message(params, request).await? {
                    a2a::SendMessageResponse::Task(t) => task_to_v03(&t),
                    a2a::SendMessageResponse::Message(m) => {
                        event_to_v03(&StreamResponse::Message(m))
                    }
                })
            }
            .await;
            reply(id, result)
        }
        "message/stream" | "tasks/resubscribe" => {
            let stream = async {
                if method == "message/stream" {
                    let mut request = send_request(&p)?;
                    continue_context(handler, params, &mut request).await;
                    handler.send_streaming_message(params, request).await
                } else {
                    let request = a2a::SubscribeToTaskRequest {
                        id: id_param(&p)?,
                        tenant: None,
                    };
                    handler.subscribe_to_task(params, request).await
                }
            }
            .await;
            match stream {
                Ok(s) => {
                    let events = s.map(|e| e.map(|e| event_to_v03(&e))).boxed();
                    a2a_server::sse::sse_jsonrpc_stream(id, events).into_response()
                }
                Err(e) => reply(id, Err(e)),
            }
        }
        "tasks/get" => {
            let result = async {
                let request = a2a::GetTaskRequest {
                    id: id_param(&p)?,
                    history_length: p
                        .get("historyLength")
                        .and_then(Value::as_i64)
                        .map(|n| n as i32),
                    tenant: None,
                };
                Ok(task_to_v03(&handler.get_task(params, request).await?))
            }
            .await;
            reply(id, result)
        }
        "tasks/cancel" => {
            let result = async {
                let request = a2a::CancelTaskRequest {
                    id: id_param(&p)?,
                    metadata: None,
                    tenant: None,
                };
                Ok(task_to_v03(&handler.cancel_task(params, request).await?))
            }
            .await;
            reply(id, result)
        }
        _ => reply(id, Err(A2AError::push_notification_not_supported())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_micro_messages_convert() {
        // The request body of go-micro's A2A guide.
        let m = message_to_v1(&json!({
            "role": "user", "kind": "message", "messageId": "m1",
            "parts": [{"kind": "text", "text": "hello"}, {"kind": "data", "data": {"a": 1}}]
        }))
        .unwrap();
        assert_eq!(m.role, a2a::Role::User);
        assert_eq!(m.text(), Some("hello"));
        assert_eq!(m.parts.len(), 2);
        let file = message_to_v1(&json!({"role": "user", "messageId": "m2",
            "parts": [{"kind": "file", "file": {"uri": "https://x/y.pdf", "mimeType": "application/pdf"}}]}))
        .unwrap();
        assert_eq!(file.parts[0].media_type.as_deref(), Some("application/pdf"));
        for bad in [
            json!({"role": "robot", "messageId": "m", "parts": []}),
            json!({"role": "user", "messageId": "m", "parts": [{"kind": "video"}]}),
            json!("text"),
        ] {
            assert_eq!(
                message_to_v1(&bad).unwrap_err().code,
                a2a::error_code::INVALID_PARAMS,
                "{bad}"
            );
        }
    }

    #[test]
    fn tasks_and_events_render_in_0_3_shapes() {
        let mut msg = a2a::Message::new(a2a::Role::Agent, vec![a2a::Part::text("done")]);
        msg.task_id = Some("t1".into());
        let task = a2a::Task {
            id: "t1".into(),
            context_id: "c1".into(),
            status: a2a::TaskStatus {
                state: a2a::TaskState::InputRequired,
                message: Some(msg),
                timestamp: None,
            },
            artifacts: None,
            history: Some(vec![a2a::Message::new(
                a2a::Role::User,
                vec![a2a::Part::text("hi")],
            )]),
            metadata: None,
        };
        let v = task_to_v03(&task);
        assert_eq!(v["kind"], "task");
        assert_eq!(v["status"]["state"], "input-required");
        assert_eq!(v["status"]["message"]["role"], "agent");
        assert_eq!(
            v["status"]["message"]["parts"][0],
            json!({"kind": "text", "text": "done"})
        );
        assert_eq!(v["history"][0]["kind"], "message");
        let done = StreamResponse::StatusUpdate(a2a::TaskStatusUpdateEvent {
            task_id: "t1".into(),
            context_id: "c1".into(),
            status: a2a::TaskStatus {
                state: a2a::TaskState::Completed,
                message: None,
                timestamp: None,
            },
            metadata: None,
        });
        let e = event_to_v03(&done);
        assert_eq!(e["kind"], "status-update");
        assert_eq!(e["final"], true);
        assert_eq!(e["status"]["state"], "completed");
    }

    #[test]
    fn blocking_is_the_default() {
        let p = json!({"message": {"role": "user", "messageId": "m", "parts": [{"kind": "text", "text": "x"}]}});
        let r = send_request(&p).unwrap();
        assert_eq!(r.configuration.unwrap().return_immediately, Some(false));
        let p = json!({"message": p["message"], "configuration": {"blocking": false}});
        assert_eq!(
            send_request(&p)
                .unwrap()
                .configuration
                .unwrap()
                .return_immediately,
            Some(true)
        );
    }
}
