//! The A2A bridge (DESIGN §14), both ways, on the official `a2a-lf` crates (A2A 1.0,
//! <https://a2a-protocol.org/latest/specification/>), with 0.3 compatibility of our own.
//!
//! **Inbound** ([`A2aServer`]): every agent in the registry is an A2A agent.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /a2a` | the directory: `{"agents": [{name, description, version, url, card_url}]}` |
//! | `GET /a2a/{agent}/.well-known/agent-card.json` | the agent's card ([`card`]) |
//! | `GET /.well-known/agent-card.json` | the default agent's card (`--a2a-default`, or the only agent) |
//! | `POST /a2a/{agent}` | JSON-RPC: 1.0 `SendMessage`, `SendStreamingMessage`, `GetTask`, `ListTasks`, `CancelTask`, `SubscribeToTask`; 0.3 `message/send`, `message/stream`, `tasks/get`, `tasks/cancel`, `tasks/resubscribe` ([`server`], [`compat`]) |
//! | `/a2a/{agent}/…` | the HTTP+JSON binding: `POST message:send`, `POST message:stream`, `GET tasks/{id}`, `GET tasks`, `POST tasks/{id}:cancel`, `GET tasks/{id}:subscribe` |
//!
//! Cards are public; everything else needs the gateway's token when it has one (401
//! otherwise). A task runs as a streaming `chat` of the agent on the bus
//! ([`executor`]); tasks live in the KV bucket `<prefix>_tasks` and their updates on
//! `P.a2a.task.<id>` ([`store`]), so any gateway instance answers for any task.
//!
//! **Outbound** ([`bridge`]): the bus service `a2a` (endpoint `send`) reaches remote
//! A2A agents for flows (`a2a` steps), agents (`delegate` to a URL) and `weft a2a
//! call`, and serves remote agents added with `weft a2a add` as agents of the mesh.

pub mod bridge;
pub mod card;
pub mod compat;
pub mod executor;
pub mod server;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a2a::AgentCapabilities;
use a2a_server::DefaultRequestHandler;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use weft_bus::Bus;
use weft_bus::registry::{Kind, Registration};

use crate::error::ApiError;
use executor::ChatExecutor;
use server::AgentHandler;
use store::Tasks;

/// How often a gateway looks for running tasks whose gateway is gone: 5 s.
pub const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of the A2A server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct A2aOptions {
    /// The agent whose card `/.well-known/agent-card.json` serves. Default: the only
    /// registered agent (none when there are several).
    pub default_agent: Option<String>,
    /// Whether the gateway requires a bearer token (cards then say so).
    pub auth: bool,
    /// Longest wait for the next frame of a chat. Default: the gateway's invoke
    /// timeout.
    pub idle_timeout: Duration,
}

/// One agent's handler and the crate's two bindings over it, built once per agent and
/// kept for the life of the process (the handler owns the running executions).
pub struct AgentEndpoint {
    /// The handler.
    pub handler: Arc<AgentHandler>,
    /// The JSON-RPC binding, at `/`.
    pub jsonrpc: axum::Router,
    /// The HTTP+JSON binding.
    pub rest: axum::Router,
}

/// The inbound A2A server of one gateway instance. Cheap to clone.
#[derive(Clone)]
pub struct A2aServer {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    tasks: Tasks,
    owner: String,
    options: A2aOptions,
    endpoints: Mutex<HashMap<String, Arc<AgentEndpoint>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for A2aServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A2aServer")
            .field("owner", &self.inner.owner)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl A2aServer {
    /// The server of gateway instance `owner` (its registry instance id): opens the
    /// task bucket and starts the reaper ([`Tasks::reap`], every [`REAP_INTERVAL`]).
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when the task bucket or the registry cannot be
    /// opened (`weft up` creates them).
    pub async fn start(bus: &Bus, owner: &str, options: A2aOptions) -> weft_bus::Result<A2aServer> {
        let tasks = Tasks::open(bus).await?;
        bus.registry_watch().await?;
        let stop = CancellationToken::new();
        let reaper = tasks.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = reaper.reap().await {
                    tracing::debug!(error = %e, "cannot look for orphaned A2A tasks now");
                }
                tokio::select! {
                    () = stopped.cancelled() => return,
                    () = tokio::time::sleep(REAP_INTERVAL) => {}
                }
            }
        });
        Ok(A2aServer {
            inner: Arc::new(Inner {
                bus: bus.clone(),
                tasks,
                owner: owner.to_owned(),
                options,
                endpoints: Mutex::default(),
                stop,
            }),
        })
    }

    /// Stops the reaper and fails this instance's running tasks (their chats end with
    /// this process). Returns how many it failed.
    pub async fn shutdown(&self) -> usize {
        self.inner.stop.cancel();
        match self.inner.tasks.fail_owned(&self.inner.owner).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fail this gateway's running A2A tasks; other gateways will");
                0
            }
        }
    }

    /// The task store.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// The registered agents, newest instance of each, by name.
    ///
    /// # Errors
    /// 503 when the registry cannot be read.
    pub async fn agents(&self) -> Result<Vec<Registration>, ApiError> {
        let watch = self
            .inner
            .bus
            .registry_watch()
            .await
            .map_err(ApiError::from)?;
        Ok(watch.newest_each(Kind::Agent))
    }

    async fn registration(&self, agent: &str) -> Result<Registration, ApiError> {
        let watch = self
            .inner
            .bus
            .registry_watch()
            .await
            .map_err(ApiError::from)?;
        watch.newest(Kind::Agent, agent).ok_or_else(|| {
            ApiError::NotFound(format!(
                "no agent named {agent:?} is registered; GET /a2a lists the agents"
            ))
        })
    }

    /// The agent of `/.well-known/agent-card.json`.
    ///
    /// # Errors
    /// 404 when there is none.
    pub async fn default_agent(&self) -> Result<String, ApiError> {
        if let Some(a) = &self.inner.options.default_agent {
            return Ok(a.clone());
        }
        let agents = self.agents().await?;
        match agents.as_slice() {
            [only] => Ok(only.name.clone()),
            [] => Err(ApiError::NotFound("no agent is registered".into())),
            _ => Err(ApiError::NotFound(format!(
                "{} agents are registered and none is the default (--a2a-default AGENT); GET /a2a lists their cards",
                agents.len()
            ))),
        }
    }

    /// The card of `agent` served under `base`, as JSON ([`card::card_json`]).
    ///
    /// # Errors
    /// 404 for an agent that is not registered.
    pub async fn card(&self, agent: &str, base: &str) -> Result<Value, ApiError> {
        let r = self.registration(agent).await?;
        Ok(card::card_json(&card::card(
            &r,
            base,
            self.inner.options.auth,
        )))
    }

    /// The endpoint of `agent`, built on first use.
    ///
    /// # Errors
    /// 404 for an agent that is not registered.
    pub async fn endpoint(&self, agent: &str) -> Result<Arc<AgentEndpoint>, ApiError> {
        if let Some(e) = self
            .inner
            .endpoints
            .lock()
            .ok()
            .and_then(|m| m.get(agent).cloned())
        {
            return Ok(e);
        }
        self.registration(agent).await?;
        let i = &self.inner;
        let executor = ChatExecutor::new(
            i.bus.clone(),
            agent,
            i.tasks.clone(),
            i.options.idle_timeout,
            weft_bus::stream::DEFAULT_STREAM_TIMEOUT,
        );
        let inner = DefaultRequestHandler::new(executor, i.tasks.for_agent(agent, &i.owner))
            .with_capabilities(AgentCapabilities {
                streaming: Some(true),
                push_notifications: Some(false),
                extensions: None,
                extended_agent_card: Some(false),
            });
        let handler = Arc::new(AgentHandler::new(inner, i.tasks.clone(), agent));
        let endpoint = Arc::new(AgentEndpoint {
            jsonrpc: a2a_server::jsonrpc::jsonrpc_router(Arc::clone(&handler)),
            rest: a2a_server::rest::rest_router(Arc::clone(&handler)),
            handler,
        });
        let mut map = i
            .endpoints
            .lock()
            .map_err(|_| ApiError::NotReady("the A2A endpoint cache is poisoned".into()))?;
        Ok(Arc::clone(map.entry(agent.to_owned()).or_insert(endpoint)))
    }
}
