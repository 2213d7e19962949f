//! A router across agents: the model picks which registered agent should answer a
//! message, by calling the tool `route_to_agent` (go-micro's router, on the one tool
//! loop). `weft chat` uses it when several agents run and none was named.
//!
//! The router is an in-process agent with one tool, no memory and at most
//! [`ROUTER_MAX_STEPS`] model calls; its system prompt lists the agents with their
//! descriptions and what they manage. The tool only records the choice: the chosen
//! agent then gets the message itself (and streams its answer to the caller).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use weft_bus::envelope::ErrorPayload;

use crate::agent::{Agent, AgentError, AgentInfo};
use crate::model::{Model, ToolSpec};
use crate::tool::{ToolOutcome, Tools};

/// The router's tool.
pub const ROUTE_TOOL: &str = "route_to_agent";

/// Most model calls of one routing decision: 2 (the tool call, then the model's word).
pub const ROUTER_MAX_STEPS: usize = 2;

/// Where a message should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this agent.
    Agent(String),
    /// Nowhere: the model answered itself (e.g. a greeting), with this text.
    Answer(String),
}

/// Picks agents for messages with a model (see the [module docs](self)).
#[derive(Clone)]
pub struct Router {
    model: Arc<dyn Model>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("model", &self.model.name())
            .finish()
    }
}

/// The routing tool: records the first valid choice.
struct RouteTool {
    names: Vec<String>,
    chosen: Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl Tools for RouteTool {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: ROUTE_TOOL.into(),
            description: "Send the user's message to the agent best suited to answer it.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"agent": {"type": "string", "enum": self.names}},
                "required": ["agent"]
            }),
        }]
    }

    async fn call(&self, _name: &str, arguments: &Value) -> ToolOutcome {
        let agent = arguments["agent"].as_str().unwrap_or_default();
        if !self.names.iter().any(|n| n == agent) {
            return Err(ErrorPayload::invalid_request(format!(
                "there is no agent {agent:?}; pick one of: {}",
                self.names.join(", ")
            )));
        }
        let mut chosen = self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        chosen.get_or_insert_with(|| agent.to_owned());
        Ok(json!({"routed_to": agent}))
    }
}

impl Router {
    /// A router deciding with `model`.
    pub fn new(model: Arc<dyn Model>) -> Router {
        Router { model }
    }

    /// Where `message` should go among `agents`.
    ///
    /// # Errors
    /// [`AgentError::Model`] when the model fails; [`AgentError::InvalidInput`] when
    /// `agents` is empty.
    pub async fn route(&self, agents: &[AgentInfo], message: &str) -> Result<Route, AgentError> {
        if agents.is_empty() {
            return Err(AgentError::InvalidInput(
                "there is no agent to route to".into(),
            ));
        }
        let mut prompt = String::from(
            "You route messages to agents. Call route_to_agent with the agent best suited to answer the user's message. The agents:\n",
        );
        for a in agents {
            prompt.push_str(&format!(
                "- {}: {} (tools of: {})\n",
                a.name,
                if a.description.is_empty() {
                    "no description"
                } else {
                    &a.description
                },
                if a.manages.is_empty() {
                    "none".into()
                } else {
                    a.manages.join(", ")
                }
            ));
        }
        let tool = Arc::new(RouteTool {
            names: agents.iter().map(|a| a.name.clone()).collect(),
            chosen: Mutex::new(None),
        });
        let router = Agent::new("router")
            .model(self.model.clone())
            .system_prompt(prompt)
            .max_steps(ROUTER_MAX_STEPS);
        let run = router.run(tool.clone(), Vec::new(), message).await;
        let chosen = tool
            .chosen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (chosen, run) {
            (Some(agent), _) => Ok(Route::Agent(agent)),
            (None, Ok(run)) => Ok(Route::Answer(run.reply)),
            // The model kept calling the tool wrongly until the step limit.
            (None, Err(AgentError::MaxSteps { .. })) => Ok(Route::Answer(String::new())),
            (None, Err(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scripted::ScriptedModel;

    fn info(name: &str, description: &str) -> AgentInfo {
        serde_json::from_value(json!({
            "name": name, "description": description, "versions": ["0.1.0"], "instances": 1,
            "manages": [], "model": "scripted"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_model_picks_an_agent_or_answers_itself() {
        let model = Arc::new(
            ScriptedModel::from_json(
                r#"{"rules": [
                  {"match": "(?i)ticket", "turns": [
                    {"tool_calls": [{"name": "route_to_agent", "arguments": {"agent": "support"}}]},
                    {"content": "sent"}]},
                  {"match": "(?i)nobody", "turns": [
                    {"tool_calls": [{"name": "route_to_agent", "arguments": {"agent": "ghost"}}]},
                    {"content": "hm"}]},
                  {"match": ".*", "turns": [{"content": "Hello!"}]}
                ]}"#,
            )
            .unwrap(),
        );
        let router = Router::new(model);
        let agents = [info("support", "tickets"), info("billing", "invoices")];
        assert_eq!(
            router.route(&agents, "my ticket is stuck").await.unwrap(),
            Route::Agent("support".into())
        );
        assert_eq!(
            router.route(&agents, "hi").await.unwrap(),
            Route::Answer("Hello!".into())
        );
        // An agent that does not exist is refused; the model answered instead.
        assert_eq!(
            router.route(&agents, "send to nobody").await.unwrap(),
            Route::Answer("hm".into())
        );
        assert!(router.route(&[], "x").await.is_err());
    }
}
