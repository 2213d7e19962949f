//! Shared fixtures: a `tickets` service with two endpoints that count their calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use weft_bus::envelope::{ErrorCode, ErrorPayload};
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::{Bus, Envelope};

/// Calls of `tickets.list` and `tickets.get`, and the request envelopes of `list`.
#[derive(Clone, Default)]
pub struct Calls {
    pub list: Arc<AtomicUsize>,
    pub get: Arc<AtomicUsize>,
    pub list_requests: Arc<Mutex<Vec<Envelope>>>,
}

impl Calls {
    pub fn list(&self) -> usize {
        self.list.load(Ordering::SeqCst)
    }
    pub fn get(&self) -> usize {
        self.get.load(Ordering::SeqCst)
    }
}

pub fn tickets() -> Value {
    json!([
        {"id": "T-1", "title": "Printer on fire", "status": "open"},
        {"id": "T-2", "title": "Cannot log in", "status": "open"},
        {"id": "T-3", "title": "Coffee machine", "status": "closed"}
    ])
}

pub fn list_schema() -> Value {
    json!({"type": "object", "properties": {"status": {"type": "string", "enum": ["open", "closed"]}}})
}

pub fn get_schema() -> Value {
    json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]})
}

/// Serves `tickets` with `list {status?}` → `{count, tickets}` and `get {id}` → the
/// ticket or `NOT_FOUND`.
pub async fn tickets_service(bus: &Bus) -> (ServiceHandle, Calls) {
    let calls = Calls::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let handle = Service::new("tickets", "1.0.0")
        .description("Support tickets")
        .endpoint(
            Endpoint::new("list", move |req: Request| {
                c1.list.fetch_add(1, Ordering::SeqCst);
                c1.list_requests.lock().unwrap().push(req.envelope.clone());
                async move {
                    let status = req.payload()["status"].as_str().map(str::to_owned);
                    let found: Vec<Value> = tickets()
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|t| status.as_deref().is_none_or(|s| t["status"] == s))
                        .cloned()
                        .collect();
                    Ok(json!({"count": found.len(), "tickets": found}))
                }
            })
            .description("List tickets, optionally by status")
            .input_schema(list_schema()),
        )
        .endpoint(
            Endpoint::new("get", move |req: Request| {
                c2.get.fetch_add(1, Ordering::SeqCst);
                async move {
                    let id = req.payload()["id"].as_str().unwrap_or_default().to_owned();
                    tickets()
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|t| t["id"] == id.as_str())
                        .cloned()
                        .ok_or_else(|| {
                            ErrorPayload::new(
                                ErrorCode::Other("NOT_FOUND".into()),
                                format!("no ticket {id}"),
                            )
                        })
                }
            })
            .description("Get one ticket by id")
            .input_schema(get_schema()),
        )
        .serve(bus)
        .await
        .expect("serve tickets");
    (handle, calls)
}
