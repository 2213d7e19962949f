//! Agent runs over HTTP (DESIGN §11, §15, §16): what `weft agent runs` shows, for
//! programs. One run and its approval are at `GET /v1/runs/{id}` and `POST
//! /v1/runs/{id}/approve` ([`super::flows`]), whichever kind it is.
//!
//! | method and path | what | answer |
//! |---|---|---|
//! | `GET /v1/agents/{agent}/runs?status=&since=&limit=` | its runs, oldest first | 200 `[run summary]` |

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde_json::Value;
use weft_agents::AgentError;
use weft_bus::runs::RunView;

use super::flows::RunsQuery;
use crate::AppState;
use crate::error::ApiError;

fn journal_error(e: AgentError) -> ApiError {
    match e {
        AgentError::InvalidInput(m) => ApiError::InvalidRequest(m),
        other => ApiError::Bus(Box::new(weft_bus::Error::new(
            weft_bus::ErrorKind::JetStream,
            other.to_string(),
        ))),
    }
}

/// Agent run `id`, if there is one.
pub(super) async fn find(state: &AppState, id: &str) -> Result<Option<RunView>, ApiError> {
    weft_agents::durable::find(state.bus(), id)
        .await
        .map_err(journal_error)
}

/// The shape of `GET /v1/runs/{id}` for an agent run (as `weft agent show --json`).
pub(super) fn detail(run: &RunView) -> Value {
    let mut v = serde_json::to_value(run).unwrap_or_default();
    v["input"] = run.input().clone();
    v["definition"] = run.definition().clone();
    v
}

/// Decides the tool call agent run `run` waits on.
pub(super) async fn approve(
    state: &AppState,
    run: &RunView,
    by: &str,
    deny: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    weft_agents::durable::approve(state.bus(), &run.id, by, deny)
        .await
        .map_err(|e| match e {
            AgentError::InvalidInput(m) => ApiError::Conflict(m),
            other => journal_error(other),
        })?;
    let run = find(state, &run.id).await?.unwrap_or_else(|| run.clone());
    Ok(Json(run.summary()))
}

/// `GET /v1/agents/{agent}/runs`.
///
/// # Errors
/// 400 for a bad agent name, status or since; 503 when the journal cannot be read.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent}/runs",
    tag = "agents",
    summary = "List an agent's runs, oldest first",
    params(("agent" = String, Path, description = "the agent's name"), RunsQuery),
    responses(
        (status = 200, description = "run summaries {id, kind, name, status, cause, created_at, updated_at, retries, error, steps}", body = Vec<Value>),
        (status = 400, description = "bad agent name or query", body = crate::error::ErrorBody),
        (status = 503, description = "journal unavailable", body = crate::error::ErrorBody),
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Path(agent) = path?;
    let Query(q) = query?;
    weft_bus::subject::validate_token("agent name", &agent)?;
    let (status, since) = q.parse()?;
    let mut list = weft_agents::durable::runs(state.bus(), Some(&agent), status, since.as_deref())
        .await
        .map_err(journal_error)?;
    let skip = list.len().saturating_sub(q.limit());
    list.drain(..skip);
    Ok(Json(list.iter().map(RunView::summary).collect()))
}
