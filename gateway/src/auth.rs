//! Bearer-token authentication (DESIGN §8): with
//! [`GatewayConfig::auth_token`](crate::GatewayConfig::auth_token) set, every route
//! except `/healthz` requires `Authorization: Bearer <token>`; anything else gets 401
//! `AUTH_FAILURE` with `WWW-Authenticate: Bearer`.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;
use crate::error::ApiError;

/// Middleware (for [`axum::middleware::from_fn_with_state`]) letting a request through
/// when no token is configured or when it carries the configured bearer token.
///
/// # Errors
/// [`ApiError::Unauthorized`] saying whether the header is missing, not a bearer
/// token, or the wrong token.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = state.config().auth_token.as_deref() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing Authorization header; send `Authorization: Bearer <token>`".into(),
                )
            })?
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim())
            })
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the Authorization header is not a bearer token; send `Authorization: Bearer <token>`"
                        .into(),
                )
            })?;
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::Unauthorized("invalid bearer token".into()));
        }
    }
    Ok(next.run(request).await)
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guess was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
