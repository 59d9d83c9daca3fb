//! The admin router and the health handler.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use c3_core::{C3, ListenerState};
use http::{HeaderMap, StatusCode, header};

use crate::extract::Cache;

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminRejection {
    /// No `Authorization: Bearer <token>`, or the wrong token.
    Unauthorized,
}

impl AdminRejection {
    /// The HTTP status this rejection answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            AdminRejection::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AdminRejection {
    fn into_response(self) -> Response {
        tracing::debug!(target: "c3::axum::rejection", rejection = ?self, "admin request refused");
        (
            self.status(),
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or invalid bearer token",
        )
            .into_response()
    }
}

#[derive(Clone)]
struct AdminState {
    c3: C3,
    token: Arc<str>,
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), AdminRejection> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AdminRejection::Unauthorized)?;
    // Compare every byte, so the time taken does not reveal the prefix matched.
    let (a, b) = (given.as_bytes(), state.token.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    if diff == 0 && !b.is_empty() {
        Ok(())
    } else {
        Err(AdminRejection::Unauthorized)
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn result(r: Result<usize, c3_core::Error>) -> Response {
    match r {
        Ok(n) => json(StatusCode::OK, serde_json::json!({ "invalidated": n })),
        Err(e) if e.is_invalid_key() => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": e.to_string() }),
        ),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

/// Admin endpoints, all requiring `Authorization: Bearer <token>`:
///
/// | route | effect |
/// |---|---|
/// | `GET /stats` | this node's [`Stats`](c3_core::Stats) as JSON |
/// | `POST /invalidate/key/{key}` | `C3::invalidate` (drop every node's L1 copy) |
/// | `POST /delete/key/{key}` | `C3::delete` (remove from L2 and every L1) |
/// | `POST /invalidate/tag/{tag}` | `C3::invalidate_tag` (entries tagged by the app) |
/// | `POST /invalidate/http-tag/{tag}` | HTTP responses tagged by `Surrogate-Key`/`Cache-Tag` |
///
/// Nest it under a path of your choice: `.nest("/admin/cache", admin_router(c3, token))`.
/// An empty token refuses every request.
pub fn admin_router<S>(c3: C3, token: impl Into<String>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let state = AdminState {
        c3,
        token: Arc::from(token.into()),
    };
    Router::new()
        .route(
            "/stats",
            get(|State(s): State<AdminState>, h: HeaderMap| async move {
                authorize(&s, &h)?;
                let stats = serde_json::to_value(s.c3.stats()).unwrap_or_default();
                Ok::<_, AdminRejection>(json(StatusCode::OK, stats))
            }),
        )
        .route(
            "/invalidate/key/{*key}",
            post(
                |State(s): State<AdminState>, h: HeaderMap, Path(key): Path<String>| async move {
                    authorize(&s, &h)?;
                    Ok::<_, AdminRejection>(result(s.c3.invalidate(&key).await.map(|()| 1)))
                },
            ),
        )
        .route(
            "/delete/key/{*key}",
            post(
                |State(s): State<AdminState>, h: HeaderMap, Path(key): Path<String>| async move {
                    authorize(&s, &h)?;
                    Ok::<_, AdminRejection>(result(s.c3.delete(&key).await.map(|()| 1)))
                },
            ),
        )
        .route(
            "/invalidate/tag/{*tag}",
            post(
                |State(s): State<AdminState>, h: HeaderMap, Path(tag): Path<String>| async move {
                    authorize(&s, &h)?;
                    Ok::<_, AdminRejection>(result(s.c3.invalidate_tag(&tag).await))
                },
            ),
        )
        .route(
            "/invalidate/http-tag/{*tag}",
            post(
                |State(s): State<AdminState>, h: HeaderMap, Path(tag): Path<String>| async move {
                    authorize(&s, &h)?;
                    Ok::<_, AdminRejection>(result(c3_tower::invalidate_tag(&s.c3, &tag).await))
                },
            ),
        )
        .with_state(state)
}

/// Health handler: `200 {"listener":"listening", ...}` while LISTEN is active,
/// `503` otherwise (L1 is bypassed then; the node still answers correctly,
/// only slower).
pub async fn health(Cache(c3): Cache) -> Response {
    let state = c3.listener_state();
    let status = if state == ListenerState::Listening {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({ "listener": state.to_string(), "node_id": c3.node_id() }),
    )
}
