//! Service `tickets`: classifies tickets by rules and keeps the tickets it sees in the
//! KV bucket `<prefix>_tickets`.
//!
//! - `classify`: `{title, body?}` → `{category, priority}` (keyword rules);
//! - `get`: `{id, wait_ms?}` → the ticket, or `NOT_FOUND`; with `wait_ms` (at most
//!   10 000) it waits that long for a ticket whose `ticket.created` event is still on
//!   its way to the store (the triage flow's draft step asks right after the event);
//! - `list`: `{status?}` → `{tickets: [...], count}`.
//!
//! Tickets are stored by the durable subscriber `tickets_store` on `ticket.>`: a
//! `ticket.created` event becomes an open ticket whose id is the event id; a
//! `ticket.triaged` event adds the classification and the drafted reply.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_bus::consumer::{self, ConsumerHandle, Delivery, DeliveryError, DurableConfig};
use weft_bus::resources::{bucket_config, create_bucket};
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::{Bus, ErrorCode, ErrorPayload};

/// The longest wait `get` accepts: 10 000 ms.
pub const MAX_GET_WAIT_MS: u64 = 10_000;

/// A stored ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// The `event_id` of its `ticket.created` event.
    pub id: String,
    /// Title.
    pub title: String,
    /// Body.
    #[serde(default)]
    pub body: String,
    /// `open` (the demo never closes tickets).
    pub status: String,
    /// Set once triaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Set once triaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The reply the support agent drafted, once triaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_reply: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// The input of `classify`.
#[derive(Debug, Deserialize)]
struct ClassifyInput {
    title: String,
    #[serde(default)]
    body: String,
}

/// Classifies by keywords: `{category, priority}`.
pub fn classify(title: &str, body: &str) -> Value {
    let text = format!("{title} {body}").to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    let category = if has(&["log in", "login", "password", "account", "sign in", "2fa"]) {
        "account"
    } else if has(&["invoice", "charge", "refund", "billing", "payment", "price"]) {
        "billing"
    } else if has(&["error", "crash", "bug", "broken", "500", "fails", "slow"]) {
        "technical"
    } else {
        "general"
    };
    let priority = if has(&[
        "urgent", "asap", "down", "outage", "cannot", "can't", "blocked",
    ]) {
        "high"
    } else if has(&["soon", "annoying", "wrong"]) {
        "medium"
    } else {
        "low"
    };
    json!({ "category": category, "priority": priority })
}

/// The running `tickets` service and its store subscriber.
pub struct Tickets {
    service: ServiceHandle,
    store: ConsumerHandle,
}

impl Tickets {
    /// Stops the service and the store subscriber.
    ///
    /// # Errors
    /// When the registry entry cannot be deleted.
    pub async fn stop(self) -> weft_bus::Result<()> {
        self.store.stop().await;
        self.service.stop().await
    }
}

fn not_found(id: &str) -> ErrorPayload {
    ErrorPayload::new(
        ErrorCode::Other("NOT_FOUND".into()),
        format!("no ticket {id}"),
    )
}

fn store_failure(e: impl std::fmt::Display) -> ErrorPayload {
    ErrorPayload::new(ErrorCode::TransportFailure, format!("ticket store: {e}")).retryable()
}

async fn all_tickets(kv: &kv::Store) -> Result<Vec<Ticket>, ErrorPayload> {
    let mut out: Vec<Ticket> = weft_bus::kv::read_all(kv, "")
        .await
        .map_err(store_failure)?
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Ok(out)
}

/// Starts the `tickets` service and its store subscriber.
///
/// # Errors
/// When the bucket, the consumer or the service cannot be created.
pub async fn start(bus: &Bus) -> weft_bus::Result<Tickets> {
    let kv = create_bucket(
        bus.jetstream(),
        bucket_config(
            &bus.names().bucket("tickets"),
            "Support desk demo: tickets",
            weft_bus::resources::mesh_replicas(bus).await?,
        ),
    )
    .await?;

    let mut config = DurableConfig::new("tickets_store", vec!["ticket.>".parse()?]);
    config.deliver_all = true;
    let store_kv = kv.clone();
    let store = consumer::start(bus, config, move |d: Delivery| {
        let kv = store_kv.clone();
        async move { store_event(&kv, d).await }
    })
    .await?;

    let get_kv = kv.clone();
    let list_kv = kv;
    let service = Service::new("tickets", "0.1.0")
        .description("Support tickets: classify them, look them up, list them")
        .endpoint(
            Endpoint::new("classify", |req: Request| async move {
                let input: ClassifyInput = req.parse()?;
                Ok(classify(&input.title, &input.body))
            })
            .description("Classify a ticket by its title and body into a category (account, billing, technical, general) and a priority (low, medium, high)")
            .input_schema(json!({
                "type": "object",
                "properties": {"title": {"type": "string"}, "body": {"type": "string"}},
                "required": ["title"]
            }))
            .output_schema(json!({
                "type": "object",
                "properties": {
                    "category": {"enum": ["account", "billing", "technical", "general"]},
                    "priority": {"enum": ["low", "medium", "high"]}
                }
            })),
        )
        .endpoint(
            Endpoint::new("get", move |req: Request| {
                let kv = get_kv.clone();
                async move {
                    let id = req.payload()["id"]
                        .as_str()
                        .ok_or_else(|| ErrorPayload::invalid_request("tickets.get needs {\"id\": \"…\"}"))?
                        .to_owned();
                    if weft_bus::subject::validate_token("ticket id", &id).is_err() {
                        return Err(not_found(&id));
                    }
                    let wait = req.payload()["wait_ms"].as_u64().unwrap_or(0).min(MAX_GET_WAIT_MS);
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
                    let mut pause = Duration::from_millis(20);
                    loop {
                        if let Some(bytes) = kv.get(&id).await.map_err(store_failure)? {
                            return serde_json::from_slice(&bytes).map_err(store_failure);
                        }
                        if tokio::time::Instant::now() + pause > deadline {
                            return Err(not_found(&id));
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(250));
                    }
                }
            })
            .description("Get one ticket by id")
            .input_schema(json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "ticket id"},
                    "wait_ms": {
                        "type": "integer", "minimum": 0, "maximum": MAX_GET_WAIT_MS,
                        "description": "wait up to this many ms for a ticket created just now"
                    }
                },
                "required": ["id"]
            })),
        )
        .endpoint(
            Endpoint::new("list", move |req: Request| {
                let kv = list_kv.clone();
                async move {
                    let status = req.payload()["status"].as_str().map(str::to_owned);
                    let tickets: Vec<Ticket> = all_tickets(&kv)
                        .await?
                        .into_iter()
                        .filter(|t| status.as_deref().is_none_or(|s| t.status == s))
                        .collect();
                    Ok(json!({ "count": tickets.len(), "tickets": tickets }))
                }
            })
            .description("List tickets, optionally only those with a given status (e.g. open)")
            .input_schema(json!({
                "type": "object",
                "properties": {"status": {"type": "string", "enum": ["open", "closed"]}}
            })),
        )
        .serve(bus)
        .await?;
    Ok(Tickets { service, store })
}

async fn store_event(kv: &kv::Store, d: Delivery) -> Result<(), DeliveryError> {
    let env = d.envelope;
    let p = env.payload_or_null();
    let retry = |e: &dyn std::fmt::Display| DeliveryError::Retry(format!("ticket store: {e}"));
    match env.event_type.as_str() {
        "ticket.created" => {
            let title = p["title"].as_str().ok_or_else(|| {
                DeliveryError::Permanent("ticket.created without a string \"title\"".into())
            })?;
            let ticket = Ticket {
                id: env.event_id.clone(),
                title: title.to_owned(),
                body: p["body"].as_str().unwrap_or_default().to_owned(),
                status: "open".into(),
                category: None,
                priority: None,
                draft_reply: None,
                created_at: env.occurred_at.clone(),
            };
            let bytes = serde_json::to_vec(&ticket).map_err(|e| retry(&e))?;
            kv.put(&ticket.id, bytes.into())
                .await
                .map_err(|e| retry(&e))?;
        }
        "ticket.triaged" => {
            let Some(id) = p["ticket_id"].as_str() else {
                return Err(DeliveryError::Permanent(
                    "ticket.triaged without \"ticket_id\"".into(),
                ));
            };
            let Some(bytes) = kv.get(id).await.map_err(|e| retry(&e))? else {
                return Err(DeliveryError::Retry(format!("ticket {id} not stored yet")));
            };
            let mut ticket: Ticket = serde_json::from_slice(&bytes).map_err(|e| retry(&e))?;
            ticket.category = p["classification"]["category"].as_str().map(str::to_owned);
            ticket.priority = p["classification"]["priority"].as_str().map(str::to_owned);
            ticket.draft_reply = p["reply"].as_str().map(str::to_owned);
            let bytes = serde_json::to_vec(&ticket).map_err(|e| retry(&e))?;
            kv.put(id, bytes.into()).await.map_err(|e| retry(&e))?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn keywords_pick_category_and_priority() {
        assert_eq!(
            classify("Cannot log in", "password reset fails"),
            serde_json::json!({"category": "account", "priority": "high"})
        );
        assert_eq!(classify("Refund for invoice 7", "")["category"], "billing");
        assert_eq!(classify("App crash", "")["category"], "technical");
        assert_eq!(classify("Hello", "")["priority"], "low");
    }
}
