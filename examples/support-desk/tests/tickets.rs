//! The `tickets` service against a real nats-server.

use std::time::Duration;

use serde_json::json;
use weft_bus::testing::TestServer;
use weft_bus::{Envelope, ErrorCode};

/// The triage flow's draft step asks for the ticket right after its `ticket.created`
/// event, possibly before the store consumer wrote it: `get` with `wait_ms` waits for
/// it instead of answering `NOT_FOUND` (which made the agent draft a reply without
/// the ticket's title).
#[tokio::test]
async fn get_waits_for_a_ticket_still_on_its_way_to_the_store() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let tickets = weft_example_support_desk::tickets::start(&bus)
        .await
        .unwrap();
    let get = "tickets.get".parse().unwrap();
    let event = Envelope::event(
        &"ticket.created".parse().unwrap(),
        json!({"title": "Printer on fire", "body": "really"}),
    );
    let id = event.event_id.clone();

    let err = bus.invoke(&get, json!({ "id": id })).await.unwrap_err();
    assert_eq!(
        err.remote().unwrap().code,
        ErrorCode::Other("NOT_FOUND".into())
    );

    let waiting = {
        let (bus, get, id) = (bus.clone(), get.clone(), id.clone());
        tokio::spawn(async move { bus.invoke(&get, json!({"id": id, "wait_ms": 5000})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    bus.publish_envelope(&event).await.unwrap();
    let ticket = waiting.await.unwrap().expect("the ticket once stored");
    assert_eq!(ticket["id"], id.as_str());
    assert_eq!(ticket["title"], "Printer on fire");
    tickets.stop().await.unwrap();
}
