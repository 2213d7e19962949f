//! Agents defined in a file (`weft agent run FILE`), so an operator needs no Rust to
//! add one: JSON, or YAML for files ending in `.yaml` / `.yml`.
//!
//! ```yaml
//! name: support
//! description: Answers questions about tickets
//! manages: [tickets]
//! prompt: You are the support desk agent. Use the tickets tools.
//! provider: anthropic          # openai | anthropic | gemini | ollama | scripted; default WEFT_MODEL_PROVIDER
//! model: claude-sonnet-4-5     # default WEFT_MODEL, then the provider's default
//! # script: support.script.json  (the scripted provider's script)
//! guardrails:
//!   max_steps: 8
//!   loop_limit: 3
//!   approve: ["tickets_close*"]  # pauses the run for a person: weft agent approve RUN
//!   tool_timeout_ms: 30000
//!   run_timeout_ms: 300000
//! builtins: [plan, delegate]
//! memory:
//!   messages: 50
//!   tokens: 8000
//!   summarize: false
//! ```
//!
//! Every field but `name` is optional, with the defaults of [`Agent`]; unknown fields
//! are errors that name them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::Agent;
use crate::builtin::Builtin;
use crate::model::Model;

/// An agent as a file defines it (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefinition {
    /// The agent's name (one token).
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Semver version. Default `0.1.0`.
    #[serde(default)]
    pub version: Option<String>,
    /// The services whose endpoints are its tools.
    #[serde(default)]
    pub manages: Vec<String>,
    /// The system prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The model provider: `openai`, `anthropic`, `gemini`, `ollama` or `scripted`.
    /// Default `WEFT_MODEL_PROVIDER`.
    #[serde(default)]
    pub provider: Option<String>,
    /// The model id. Default `WEFT_MODEL`, then the provider's default.
    #[serde(default)]
    pub model: Option<String>,
    /// The scripted provider's script, relative to the definition file.
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// Limits on the tool loop.
    #[serde(default)]
    pub guardrails: Guardrails,
    /// Built-in tools: `plan`, `delegate`.
    #[serde(default)]
    pub builtins: Vec<Builtin>,
    /// Memory limits.
    #[serde(default)]
    pub memory: MemoryLimits,
}

/// The `guardrails` of an [`AgentDefinition`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Most model calls per run ([`Agent::max_steps`]).
    pub max_steps: Option<usize>,
    /// Most identical tool calls per run ([`Agent::loop_limit`]).
    pub loop_limit: Option<usize>,
    /// Tool-name patterns that need approval ([`Agent::approve`]).
    #[serde(default)]
    pub approve: Vec<String>,
    /// How long one tool call may take, in ms ([`Agent::tool_timeout`]).
    pub tool_timeout_ms: Option<u64>,
    /// How long one served chat may take, in ms ([`Agent::run_timeout`]).
    pub run_timeout_ms: Option<u64>,
}

/// The `memory` of an [`AgentDefinition`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimits {
    /// Most messages per session ([`Agent::memory_limit`]).
    pub messages: Option<usize>,
    /// Most tokens per session, approximately ([`Agent::memory_tokens`]).
    pub tokens: Option<usize>,
    /// Summarize older turns instead of dropping them ([`Agent::summarize_memory`]).
    #[serde(default)]
    pub summarize: bool,
}

/// Why a definition could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DefinitionError {
    /// The file.
    pub path: String,
    /// What is wrong (with line and column when the parser says).
    pub message: String,
}

impl AgentDefinition {
    /// Reads `path`: YAML when it ends in `.yaml` or `.yml`, else JSON. A relative
    /// `script` is made relative to the file's folder.
    ///
    /// # Errors
    /// [`DefinitionError`] naming the file, when it cannot be read or parsed (unknown
    /// fields included) or its name is not a token.
    pub fn from_file(path: impl AsRef<Path>) -> Result<AgentDefinition, DefinitionError> {
        let path = path.as_ref();
        let error = |message: String| DefinitionError {
            path: path.display().to_string(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        let mut definition: AgentDefinition = if yaml {
            yaml_serde::from_str(&text).map_err(|e| error(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| error(e.to_string()))?
        };
        weft_bus::subject::validate_token("agent name", &definition.name)
            .map_err(|e| error(e.to_string()))?;
        if let (Some(script), Some(dir)) = (&definition.script, path.parent())
            && script.is_relative()
        {
            definition.script = Some(dir.join(script));
        }
        Ok(definition)
    }

    /// The agent, on `model`.
    pub fn into_agent(self, model: Arc<dyn Model>) -> Agent {
        let mut agent = Agent::new(self.name)
            .description(self.description)
            .manages(self.manages)
            .model(model)
            .builtins(self.builtins)
            .summarize_memory(self.memory.summarize);
        if let Some(v) = self.version {
            agent = agent.version(v);
        }
        if let Some(p) = self.prompt {
            agent = agent.system_prompt(p);
        }
        if let Some(n) = self.guardrails.max_steps {
            agent = agent.max_steps(n);
        }
        if let Some(n) = self.guardrails.loop_limit {
            agent = agent.loop_limit(n);
        }
        if !self.guardrails.approve.is_empty() {
            agent = agent.approve(self.guardrails.approve);
        }
        if let Some(ms) = self.guardrails.tool_timeout_ms {
            agent = agent.tool_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.guardrails.run_timeout_ms {
            agent = agent.run_timeout(Duration::from_millis(ms));
        }
        if let Some(n) = self.memory.messages {
            agent = agent.memory_limit(n);
        }
        if let Some(n) = self.memory.tokens {
            agent = agent.memory_tokens(n);
        }
        agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn yaml_and_json_definitions_read_the_same() {
        let (_d, yaml) = write(
            "a.yaml",
            "name: support\nmanages: [tickets]\nprovider: scripted\nscript: s.json\nguardrails:\n  approve: [\"tickets_*\"]\n  loop_limit: 2\nbuiltins: [plan, delegate]\nmemory:\n  messages: 10\n  summarize: true\n",
        );
        let (_e, json) = write(
            "a.json",
            r#"{"name": "support", "manages": ["tickets"], "provider": "scripted", "script": "s.json",
                "guardrails": {"approve": ["tickets_*"], "loop_limit": 2},
                "builtins": ["plan", "delegate"], "memory": {"messages": 10, "summarize": true}}"#,
        );
        let a = AgentDefinition::from_file(&yaml).unwrap();
        let b = AgentDefinition::from_file(&json).unwrap();
        assert_eq!(a.builtins, [Builtin::Plan, Builtin::Delegate]);
        assert_eq!(a.script, Some(yaml.parent().unwrap().join("s.json")));
        assert_eq!(
            (a.name.as_str(), &a.guardrails, &a.memory),
            (b.name.as_str(), &b.guardrails, &b.memory)
        );
    }

    #[test]
    fn mistakes_name_the_file_and_the_field() {
        let (_d, p) = write("bad.yaml", "name: support\nmanage: [tickets]\n");
        let e = AgentDefinition::from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.yaml") && e.contains("unknown field `manage`"),
            "{e}"
        );
        let (_d, p) = write("bad.json", r#"{"name": "sup port"}"#);
        let e = AgentDefinition::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("agent name"), "{e}");
        let e = AgentDefinition::from_file("/nonexistent/x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read it"), "{e}");
    }
}
