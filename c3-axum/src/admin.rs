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
/// only slower — also while a node started with `start_degraded` waits for
/// PostgreSQL).
///
/// It works in a router of any state that can hand out the [`C3`](c3_core::C3)
/// (`C3: FromRef<YourState>`), not only `Router<C3>`:
///
/// ```
/// use axum::extract::FromRef;
/// use axum::{Router, routing::get};
///
/// #[derive(Clone)]
/// struct AppState {
///     cache: c3_core::C3,
///     greeting: String,
/// }
///
/// // One line of glue (or `#[derive(FromRef)]` with axum's `macros` feature).
/// impl FromRef<AppState> for c3_core::C3 {
///     fn from_ref(state: &AppState) -> Self {
///         state.cache.clone()
///     }
/// }
///
/// let app: Router<AppState> = Router::new().route("/health", get(c3_axum::health));
/// ```
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use c3_core::MemoryServer;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::{C3CacheLayer, CacheTags};

    async fn node() -> C3 {
        C3::builder()
            .memory(&MemoryServer::new())
            .build()
            .await
            .unwrap()
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let res = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn post(uri: &str, token: Option<&str>) -> Request<Body> {
        let mut b = Request::post(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn admin_routes_need_the_bearer_token() {
        let c3 = node().await;
        c3.set("k", &1u32).await.unwrap();
        let app: Router = Router::new().nest("/admin", admin_router(c3.clone(), "s3cret"));

        for token in [None, Some("wrong"), Some("s3cre"), Some("s3crett")] {
            let (status, headers, _) = call(&app, post("/admin/delete/key/k", token)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        }
        assert!(
            c3.get::<u32>("k").await.unwrap().is_some(),
            "nothing deleted"
        );

        let (status, _, body) = call(&app, post("/admin/delete/key/k", Some("s3cret"))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"invalidated":1}"#)
        );
        assert!(c3.get::<u32>("k").await.unwrap().is_none());

        let stats = Request::get("/admin/stats")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = call(&app, stats).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["writes"], 2, "{body}");

        // An oversized key is the caller's mistake, not an outage.
        let long = "x".repeat(5000);
        let (status, _, _) = call(
            &app,
            post(&format!("/admin/invalidate/key/{long}"), Some("s3cret")),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn an_empty_token_refuses_everything() {
        let app: Router = admin_router(node().await, "");
        let (status, _, _) = call(&app, post("/invalidate/tag/t", Some(""))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn admin_invalidates_tagged_http_responses() {
        let c3 = node().await;
        let app: Router = Router::new()
            .route(
                "/item",
                get(|| async {
                    (
                        CacheTags::new(["items"]),
                        [(header::CACHE_CONTROL, "max-age=600")],
                        "item",
                    )
                }),
            )
            .route_layer(C3CacheLayer::new(c3.clone()))
            .nest("/admin", admin_router(c3.clone(), "t"));
        let get_item = || {
            Request::get("http://app.test/item")
                .body(Body::empty())
                .unwrap()
        };
        let writes = c3.stats().writes;
        let (_, h, _) = call(&app, get_item()).await;
        assert_eq!(h["cache-status"], "c3; fwd=uri-miss; stored");
        // The store follows the body in a task; the memory backend commits
        // as soon as that task runs.
        for _ in 0..10_000 {
            if c3.stats().writes > writes {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(c3.stats().writes > writes, "the response was stored");
        let (_, h, _) = call(&app, get_item()).await;
        assert!(h["cache-status"].to_str().unwrap().starts_with("c3; hit"));

        let (status, _, body) =
            call(&app, post("/admin/invalidate/http-tag/items", Some("t"))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"invalidated":1}"#)
        );
        let (_, h, _) = call(&app, get_item()).await;
        assert!(!h["cache-status"].to_str().unwrap().contains("hit"));

        // route_layer: unmatched paths never reach the cache.
        let (status, h, _) = call(
            &app,
            Request::get("http://app.test/none")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!h.contains_key("cache-status"));
    }

    #[tokio::test]
    async fn health_reports_the_listener_state() {
        let c3 = node().await;
        let app: Router = Router::new()
            .route("/health", get(health))
            .with_state(c3.clone());
        let req = || Request::get("/health").body(Body::empty()).unwrap();
        let (status, _, body) = call(&app, req()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains(r#""listener":"listening""#), "{body}");

        c3.shutdown().await;
        let (status, _, body) = call(&app, req()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""listener":"stopped""#), "{body}");
    }
}
