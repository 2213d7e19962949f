//! Flows and their runs over HTTP (DESIGN §11, §15): what `weft flow` does, for
//! programs.
//!
//! | method and path | what | answer |
//! |---|---|---|
//! | `GET /v1/flows` | the flows the mesh's workers run | 200 `[{name, versions, instances, description, metadata: {trigger, schedule?, steps}}]` |
//! | `GET /v1/flows/{flow}/runs?status=&since=&limit=` | its runs, oldest first | 200 `[run summary]` |
//! | `POST /v1/flows/{flow}/runs` | start a run; the body is its input (`${trigger.payload}`) | 202 `{run_id, event_id}` |
//! | `GET /v1/runs/{id}` | one run (a flow's or an agent's) with every step's input, output, attempts, timings, errors | 200 |
//! | `POST /v1/runs/{id}/cancel` | cancel it; body `{"reason"?}` | 200 run summary |
//! | `POST /v1/runs/{id}/retry` | resume a failed run from its failed step | 200 run summary |
//! | `POST /v1/runs/{id}/approve` | decide an approval step; body `{"step", "deny"?: reason}` (an agent run's: `{"deny"?}`, the call it waits on) | 200 run summary |
//!
//! The actor journaled for an action is the `X-User-Id` header, else `http`. Errors:
//! 400 `INVALID_REQUEST` (bad name, query or body), 404 `NOT_FOUND` (no such run), 409
//! `CONFLICT` (the action does not fit the run's state), 503 `TRANSPORT_FAILURE` (the
//! journal or the run queue is unavailable).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use weft_bus::registry::{Kind, Registry};
use weft_flows::{FlowError, Run, RunFilter, RunStatus, Runs, Started};

use super::JsonPayload;
use crate::AppState;
use crate::error::ApiError;

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::Bus(e) => ApiError::Bus(Box::new(e)),
            FlowError::NotFound(_) => ApiError::NotFound(e.to_string()),
            FlowError::NotFailed { .. }
            | FlowError::Compensated(_)
            | FlowError::NotActive { .. }
            | FlowError::NotWaiting { .. } => ApiError::Conflict(e.to_string()),
            FlowError::Definition(_) => ApiError::InvalidRequest(e.to_string()),
            other => ApiError::Bus(Box::new(weft_bus::Error::new(
                weft_bus::ErrorKind::JetStream,
                other.to_string(),
            ))),
        }
    }
}

async fn runs(state: &AppState) -> Result<Runs, ApiError> {
    Ok(Runs::open(state.bus()).await?)
}

fn actor(headers: &HeaderMap) -> String {
    headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("http")
        .to_owned()
}

/// `GET /v1/flows`.
///
/// # Errors
/// 503 when the registry cannot be read.
#[utoipa::path(
    get,
    path = "/v1/flows",
    tag = "flows",
    summary = "List the flows the mesh's workers run",
    responses(
        (status = 200, description = "one entry per flow: name, versions, instances, metadata {trigger, schedule, steps}", body = Vec<Value>),
        (status = 503, description = "registry unavailable", body = crate::error::ErrorBody),
    )
)]
pub async fn list_flows(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let flows = Registry::open(state.bus())
        .await?
        .listing_kind(Kind::Flow)
        .await?;
    Ok(Json(serde_json::to_value(flows).unwrap_or_default()))
}

/// The query of `GET /v1/flows/{flow}/runs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Only runs in this status: running, waiting, cancelling, completed, failed,
    /// cancelled.
    status: Option<String>,
    /// Only runs started since then: a duration back from now (`2h`) or an RFC 3339
    /// time.
    since: Option<String>,
    /// At most the newest N runs. Default 100.
    limit: Option<usize>,
}

impl RunsQuery {
    /// The status and since (RFC 3339) it asks for.
    pub(super) fn parse(&self) -> Result<(Option<RunStatus>, Option<String>), ApiError> {
        let status = self
            .status
            .as_ref()
            .map(|s| {
                serde_json::from_value::<RunStatus>(Value::String(s.clone()))
                    .map_err(|_| ApiError::InvalidRequest(format!("{s:?} is not a run status")))
            })
            .transpose()?;
        let since = self
            .since
            .as_ref()
            .map(|s| match humantime::parse_duration(s) {
                Ok(d) => Ok(weft_bus::envelope::rfc3339(
                    time::OffsetDateTime::now_utc() - d,
                )),
                Err(_)
                    if time::OffsetDateTime::parse(
                        s,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .is_ok() =>
                {
                    Ok(s.clone())
                }
                Err(_) => Err(ApiError::InvalidRequest(format!(
                    "since {s:?} is neither a duration (2h) nor an RFC 3339 time"
                ))),
            })
            .transpose()?;
        Ok((status, since))
    }

    /// How many runs at most (the newest): default 100.
    pub(super) fn limit(&self) -> usize {
        self.limit.unwrap_or(100)
    }
}

/// `GET /v1/flows/{flow}/runs`.
///
/// # Errors
/// 400 for a bad status or since; 503 when the journal cannot be read.
#[utoipa::path(
    get,
    path = "/v1/flows/{flow}/runs",
    tag = "flows",
    summary = "List a flow's runs, oldest first",
    params(("flow" = String, Path, description = "the flow's name"), RunsQuery),
    responses(
        (status = 200, description = "run summaries {id, flow, version, status, cause, trigger_event_id, created_at, updated_at, retries, error, steps}", body = Vec<Value>),
        (status = 400, description = "bad flow name or query", body = crate::error::ErrorBody),
        (status = 503, description = "journal unavailable", body = crate::error::ErrorBody),
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Path(flow) = path?;
    let Query(q) = query?;
    weft_bus::subject::validate_token("flow name", &flow)?;
    let (status, since) = q.parse()?;
    let filter = RunFilter {
        flow: Some(flow),
        status,
        since,
    };
    let mut list = runs(&state).await?.list(&filter).await?;
    let skip = list.len().saturating_sub(q.limit());
    list.drain(..skip);
    Ok(Json(list.iter().map(Run::summary).collect()))
}

/// `POST /v1/flows/{flow}/runs`.
///
/// # Errors
/// 400 for a bad name or body; 404 when no worker runs the flow; 503 when the run
/// queue does not take the start.
#[utoipa::path(
    post,
    path = "/v1/flows/{flow}/runs",
    tag = "flows",
    summary = "Start a run by hand",
    description = "The body is the run's input, `${trigger.payload}` in the flow's templates. A worker of the flow takes the start from the run queue.",
    params(("flow" = String, Path, description = "the flow's name")),
    request_body(content = Value, description = "the input"),
    responses(
        (status = 202, description = "queued; the run id", body = Value),
        (status = 400, description = "bad flow name or body", body = crate::error::ErrorBody),
        (status = 404, description = "no worker runs this flow", body = crate::error::ErrorBody),
        (status = 503, description = "run queue unavailable", body = crate::error::ErrorBody),
    )
)]
pub async fn start_run(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonPayload(input): JsonPayload,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    let Path(flow) = path?;
    weft_bus::subject::validate_token("flow name", &flow)?;
    let workers = Registry::open(state.bus())
        .await?
        .list_kind(Kind::Flow, Some(&flow))
        .await?;
    if workers.is_empty() {
        return Err(ApiError::NotFound(format!("no worker runs flow {flow}")));
    }
    let started = runs(&state).await?.start(&flow, input).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

/// `GET /v1/runs/{id}`.
///
/// # Errors
/// 404 for an unknown run; 503 when the journal cannot be read.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "flows",
    summary = "One run, step by step",
    params(("id" = String, Path, description = "the run id")),
    responses(
        (status = 200, description = "the run: its steps with input, output, attempts, timings, errors, and its definition", body = Value),
        (status = 404, description = "no such run", body = crate::error::ErrorBody),
        (status = 503, description = "journal unavailable", body = crate::error::ErrorBody),
    )
)]
pub async fn get_run(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = path?;
    if let Some(run) = runs(&state).await?.find(&id).await? {
        let mut v = serde_json::to_value(&run).unwrap_or_default();
        v["definition"] = run.definition().clone();
        return Ok(Json(v));
    }
    let run = super::agents::find(&state, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    Ok(Json(super::agents::detail(&run)))
}

/// The body of `POST /v1/runs/{id}/cancel`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why (kept in the journal).
    #[serde(default)]
    reason: String,
}

/// The body of `POST /v1/runs/{id}/approve`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// The approval step (a flow run's; an agent run waits on one call at most).
    #[serde(default)]
    step: Option<String>,
    /// Deny, for this reason (absent: approve).
    #[serde(default)]
    deny: Option<String>,
}

fn body<T: serde::de::DeserializeOwned + Default>(v: Value) -> Result<T, ApiError> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v).map_err(|e| ApiError::InvalidRequest(format!("bad body: {e}")))
}

/// `POST /v1/runs/{id}/cancel`.
///
/// # Errors
/// 404, 409 (the run ended), 503.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "flows",
    summary = "Cancel a run",
    params(("id" = String, Path, description = "the run id")),
    request_body(content = CancelBody, description = "optional"),
    responses(
        (status = 200, description = "the run summary after the request", body = Value),
        (status = 404, description = "no such run", body = crate::error::ErrorBody),
        (status = 409, description = "the run ended", body = crate::error::ErrorBody),
    )
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonPayload(payload): JsonPayload,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = path?;
    let b: CancelBody = body(payload)?;
    let run = runs(&state)
        .await?
        .cancel(&id, &actor(&headers), &b.reason)
        .await?;
    Ok(Json(run.summary()))
}

/// `POST /v1/runs/{id}/retry`.
///
/// # Errors
/// 404, 409 (the run has not failed), 503.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/retry",
    tag = "flows",
    summary = "Resume a failed run from its failed step",
    params(("id" = String, Path, description = "the run id")),
    responses(
        (status = 200, description = "the run summary after the request", body = Value),
        (status = 404, description = "no such run", body = crate::error::ErrorBody),
        (status = 409, description = "the run has not failed", body = crate::error::ErrorBody),
    )
)]
pub async fn retry_run(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = path?;
    let run = runs(&state).await?.retry(&id, &actor(&headers)).await?;
    Ok(Json(run.summary()))
}

/// `POST /v1/runs/{id}/approve`.
///
/// # Errors
/// 400 (no step), 404, 409 (the step does not wait for an approval), 503.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/approve",
    tag = "flows",
    summary = "Approve or deny a run's approval step (a flow's), or the tool call an agent run waits on",
    params(("id" = String, Path, description = "the run id")),
    request_body(content = ApproveBody),
    responses(
        (status = 200, description = "the run summary after the decision", body = Value),
        (status = 400, description = "bad body (a flow run's approval needs a step)", body = crate::error::ErrorBody),
        (status = 404, description = "no such run", body = crate::error::ErrorBody),
        (status = 409, description = "the step (or the agent run) does not wait for an approval", body = crate::error::ErrorBody),
    )
)]
pub async fn approve_run(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonPayload(payload): JsonPayload,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = path?;
    let b: ApproveBody = body(payload)?;
    let flows = runs(&state).await?;
    if flows.find(&id).await?.is_none()
        && let Some(run) = super::agents::find(&state, &id).await?
    {
        return super::agents::approve(&state, &run, &actor(&headers), b.deny.as_deref()).await;
    }
    let step = b.step.ok_or_else(|| {
        ApiError::InvalidRequest("a flow run's approval needs {\"step\": name}".into())
    })?;
    let run = flows
        .approve(&id, &step, &actor(&headers), b.deny.as_deref())
        .await?;
    Ok(Json(run.summary()))
}
