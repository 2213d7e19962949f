//! Agent Cards derived from registry entries of kind `agent` (DESIGN §14; A2A 1.0
//! §8 "Agent Discovery"), never written by hand.
//!
//! | card field | from |
//! |---|---|
//! | `name`, `description`, `version` | the registration |
//! | `skills` | `chat` (the agent itself), then one per managed service (metadata `manages`) |
//! | `supportedInterfaces` | `JSONRPC` 1.0 and `HTTP+JSON` 1.0 at `{base}/a2a/{agent}`, and `JSONRPC` 0.3 at the same URL |
//! | `capabilities` | `streaming: true`, `pushNotifications: false` |
//! | `securitySchemes`, `securityRequirements` | a bearer scheme, when the gateway requires a token |
//!
//! [`card_json`] serves the 1.0 card merged with its 0.3 rendering (as the Python
//! `a2a-sdk` 1.x does), so 0.3 clients find `url`, `preferredTransport`,
//! `protocolVersion` and 0.3-shaped security schemes, and 1.0 clients read
//! `supportedInterfaces` and ignore the rest.

use std::collections::HashMap;

use a2a::{AgentCapabilities, AgentCard, AgentInterface, AgentSkill, HttpAuthSecurityScheme};
use a2a::{SecurityScheme, TRANSPORT_PROTOCOL_HTTP_JSON, TRANSPORT_PROTOCOL_JSONRPC};
use serde_json::{Value, json};
use weft_bus::registry::Registration;

/// The name of the bearer security scheme on cards of a gateway with a token.
pub const BEARER_SCHEME: &str = "bearer";

/// The protocol version of the compatibility interface.
pub const COMPAT_VERSION: &str = "0.3";

/// The URL of `agent`'s endpoint under `base` (`http://host:port`, no trailing `/`).
pub fn agent_url(base: &str, agent: &str) -> String {
    format!("{}/a2a/{agent}", base.trim_end_matches('/'))
}

/// The managed services of an agent's registration (metadata `manages`).
pub fn manages(registration: &Registration) -> Vec<String> {
    registration
        .metadata
        .get("manages")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The Agent Card of `registration` served under `base`; `auth` when the gateway
/// requires a bearer token.
pub fn card(registration: &Registration, base: &str, auth: bool) -> AgentCard {
    let name = &registration.name;
    let url = agent_url(base, name);
    let description = if registration.description.is_empty() {
        format!("The Weft agent {name}")
    } else {
        registration.description.clone()
    };
    let skill = |id: &str, description: String| AgentSkill {
        id: id.to_owned(),
        name: id.to_owned(),
        description,
        tags: vec![id.to_owned()],
        examples: None,
        input_modes: None,
        output_modes: None,
        security_requirements: None,
    };
    let mut skills = vec![skill("chat", description.clone())];
    for service in manages(registration) {
        skills.push(skill(
            &service,
            format!("Uses the tools of the {service} service"),
        ));
    }
    let mut compat = AgentInterface::new(url.clone(), TRANSPORT_PROTOCOL_JSONRPC);
    compat.protocol_version = COMPAT_VERSION.into();
    let (security_schemes, security_requirements) = if auth {
        (
            Some(HashMap::from([(
                BEARER_SCHEME.to_owned(),
                SecurityScheme::HttpAuth(HttpAuthSecurityScheme {
                    scheme: "Bearer".into(),
                    description: Some("the gateway's token: Authorization: Bearer <token>".into()),
                    bearer_format: None,
                }),
            )])),
            Some(vec![HashMap::from([(
                BEARER_SCHEME.to_owned(),
                Vec::new(),
            )])]),
        )
    } else {
        (None, None)
    };
    AgentCard {
        name: name.clone(),
        description,
        version: registration.version.clone(),
        supported_interfaces: vec![
            AgentInterface::new(url.clone(), TRANSPORT_PROTOCOL_JSONRPC),
            AgentInterface::new(url.clone(), TRANSPORT_PROTOCOL_HTTP_JSON),
            compat,
        ],
        capabilities: AgentCapabilities {
            streaming: Some(true),
            push_notifications: Some(false),
            extensions: None,
            extended_agent_card: Some(false),
        },
        default_input_modes: vec!["text/plain".into(), "application/json".into()],
        default_output_modes: vec!["text/plain".into()],
        skills,
        provider: None,
        documentation_url: None,
        icon_url: None,
        security_schemes,
        security_requirements,
        signatures: None,
    }
}

/// `card` as served: its 1.0 JSON deep-merged with the 0.3 fields (see the
/// [module docs](self)).
pub fn card_json(card: &AgentCard) -> Value {
    let mut v = serde_json::to_value(card).unwrap_or(Value::Null);
    let Some(o) = v.as_object_mut() else { return v };
    let compat = card
        .supported_interfaces
        .iter()
        .find(|i| i.protocol_version == COMPAT_VERSION);
    if let Some(i) = compat {
        o.insert("url".into(), json!(i.url));
        o.insert("preferredTransport".into(), json!(i.protocol_binding));
        o.insert("protocolVersion".into(), json!("0.3.0"));
        let others: Vec<Value> = card
            .supported_interfaces
            .iter()
            .filter(|j| j.protocol_version == a2a::VERSION)
            .map(|j| json!({"url": j.url, "transport": j.protocol_binding}))
            .collect();
        o.insert("additionalInterfaces".into(), Value::Array(others));
    }
    if card.security_schemes.is_some() {
        if let Some(s) = o
            .get_mut("securitySchemes")
            .and_then(|s| s.get_mut(BEARER_SCHEME))
            .and_then(Value::as_object_mut)
        {
            s.insert("type".into(), json!("http"));
            s.insert("scheme".into(), json!("bearer"));
        }
        o.insert("security".into(), json!([{ BEARER_SCHEME: [] }]));
    }
    v
}

/// A weak ETag of a served card: a hash of its JSON, so it changes whenever the card
/// does (the card's `version` alone does not).
pub fn etag(json: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.to_string().hash(&mut h);
    format!("W/\"{:016x}\"", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_bus::registry::Kind;

    fn support() -> Registration {
        let mut r = Registration::new(Kind::Agent, "support", "1.2.0");
        r.description = "Answers questions about tickets".into();
        r.metadata.insert("manages".into(), json!(["tickets"]));
        r
    }

    #[test]
    fn cards_come_from_registrations() {
        let c = card(&support(), "http://127.0.0.1:8080/", false);
        assert_eq!(c.name, "support");
        assert_eq!(c.version, "1.2.0");
        let skills: Vec<&str> = c.skills.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(skills, ["chat", "tickets"]);
        assert_eq!(
            c.supported_interfaces[0].url,
            "http://127.0.0.1:8080/a2a/support"
        );
        assert_eq!(c.supported_interfaces[0].protocol_version, "1.0");
        assert_eq!(c.capabilities.streaming, Some(true));
        assert!(c.security_schemes.is_none());
        // The served JSON parses back as a 1.0 card and carries the 0.3 fields.
        let j = card_json(&c);
        let back: AgentCard = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(back.supported_interfaces.len(), 3);
        assert_eq!(j["url"], "http://127.0.0.1:8080/a2a/support");
        assert_eq!(j["protocolVersion"], "0.3.0");
        assert_eq!(j["preferredTransport"], "JSONRPC");
        assert!(j.get("security").is_none());
    }

    #[test]
    fn a_token_adds_a_bearer_scheme_in_both_shapes() {
        let j = card_json(&card(&support(), "https://gw", true));
        let s = &j["securitySchemes"]["bearer"];
        assert_eq!(s["httpAuthSecurityScheme"]["scheme"], "Bearer");
        assert_eq!(s["type"], "http");
        assert_eq!(j["security"], json!([{"bearer": []}]));
        let back: AgentCard = serde_json::from_value(j).unwrap();
        assert!(back.security_requirements.is_some());
    }

    #[test]
    fn etags_follow_the_content() {
        let a = card_json(&card(&support(), "http://a", false));
        let mut r = support();
        r.description = "changed".into();
        let b = card_json(&card(&r, "http://a", false));
        assert_ne!(etag(&a), etag(&b));
        assert_eq!(etag(&a), etag(&a.clone()));
    }
}
