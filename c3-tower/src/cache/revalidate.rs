//! Revalidation (RFC 9111 §4.3): ask the origin whether a stored response is
//! still good — in the foreground, or in the background under
//! `stale-while-revalidate`.
//!
//! A 304 refreshes the stored response's headers and freshness; a new
//! response replaces it. Both are **fills**, fenced before the conditional
//! request is sent: a write that invalidates the URI while the origin is
//! answering must not be undone by storing what the origin said before it.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, IF_MODIFIED_SINCE, IF_NONE_MATCH, SET_COOKIE};
use http::{Method, Request, Response, StatusCode, request};
use http_body::Body;
use tower_service::Service;

use super::body::C3Body;
use super::cache_control::Directives;
use super::collapse::LeaderGuard;
use super::context::get_parts;
use super::context::{CacheBody, Ctx, RequestBody, Upstream, call_ready};
use super::freshness::{self, Storage};
use super::policy::Policy;
use super::reuse::{self, Reuse};
use super::serve::serve;
use super::status::{CacheStatus, Fwd};
use super::store::{HOP_BY_HOP, storable_headers, store_entry, store_response};
use super::stored::StoredResponse;
use c3_core::unix_micros;

/// Revalidates `stored` (under `key`, `age` seconds old) before answering.
pub(crate) async fn revalidate<S, P, ReqBody, ResBody>(
    ctx: &Ctx<P>,
    mut inner: S,
    stored: Arc<StoredResponse>,
    key: String,
    age: u64,
    stale_if_error: bool,
) -> Result<Response<C3Body<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: Policy,
    ReqBody: Default,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let c3 = ctx.c3();
    let fill = c3.begin_fill(&[&key]).await.ok().map(Arc::new);
    let cond = conditional_request::<ReqBody>(&ctx.parts, &stored);
    let request_time = c3.now();
    let stale = |detail| CacheStatus::fwd(Fwd::Stale).detail(detail);
    match inner.call(cond).await {
        Ok(res) if res.status() == StatusCode::NOT_MODIFIED => {
            let (res_parts, _) = res.into_parts();
            Ok(not_modified(
                ctx,
                &stored,
                key,
                age,
                fill.as_deref(),
                &res_parts,
                request_time,
            )
            .await)
        }
        Ok(res) if res.status().is_server_error() && stale_if_error => Ok(serve(
            &stored,
            &ctx.parts,
            age,
            stale("stale-if-error").fwd_status(res.status().as_u16()),
        )),
        Ok(res) => {
            let status = CacheStatus::fwd(Fwd::Stale).fwd_status(res.status().as_u16());
            Ok(store_response(
                ctx,
                fill.map(|f| (key, f)),
                res,
                request_time,
                status,
                None,
            ))
        }
        Err(_) if stale_if_error => Ok(serve(&stored, &ctx.parts, age, stale("stale-if-error"))),
        Err(e) => Err(e),
    }
}

/// The origin answered the revalidation with 304: update the stored
/// response's headers and freshness, store it through the fill, and answer
/// from it.
async fn not_modified<P, ResBody>(
    ctx: &Ctx<P>,
    stored: &Arc<StoredResponse>,
    key: String,
    age: u64,
    fill: Option<&c3_core::Fill>,
    res_parts: &http::response::Parts,
    request_time: std::time::SystemTime,
) -> Response<C3Body<ResBody>>
where
    P: Policy,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let status = CacheStatus::fwd(Fwd::Stale).fwd_status(304);
    let Some((updated, storage)) = refreshed(
        ctx.c3(),
        &ctx.shared.config,
        &ctx.parts,
        stored,
        res_parts,
        request_time,
    ) else {
        return serve(stored, &ctx.parts, age, status);
    };
    let updated = Arc::new(updated);
    if let Some(fill) = fill {
        store_entry(
            &ctx.shared,
            fill,
            &ctx.uri,
            key,
            &storage,
            Arc::clone(&updated),
        )
        .await;
    }
    // Validated just now, so it answers even if already stale again —
    // but only a request it may answer at all (its Vary selection,
    // credentials).
    match reuse::decide(&updated, &ctx.parts, &ctx.dirs, ctx.now_us()) {
        Reuse::Never(_) => serve(stored, &ctx.parts, age, status.detail("not-updated")),
        _ => serve(&updated, &ctx.parts, updated.age(ctx.now_us()), status),
    }
}

/// Starts one background revalidation of a stale entry
/// (`stale-while-revalidate`); at most one per key per node at a time.
pub(crate) fn in_background<S, P, ReqBody, ResBody>(
    ctx: &Ctx<P>,
    mut inner: S,
    key: String,
    stored: Arc<StoredResponse>,
) where
    S: Upstream<ReqBody, ResBody>,
    P: Policy,
    ReqBody: RequestBody,
    ResBody: CacheBody,
{
    let Some(guard) = LeaderGuard::try_lead(&ctx.shared.collapse, format!("{key} revalidate"))
    else {
        return;
    };
    let bg = Ctx {
        shared: Arc::clone(&ctx.shared),
        parts: get_parts(&ctx.parts),
        dirs: Directives::default(),
        uri: ctx.uri.clone(),
    };
    let cond = conditional_request::<ReqBody>(&ctx.parts, &stored);
    // In the trace of the request that found the response stale.
    let span = tracing::info_span!(target: "c3::http", "c3.http.revalidate");
    let revalidation = async move {
        let _guard = guard;
        let Ok(fill) = bg.c3().begin_fill(&[&key]).await else {
            return;
        };
        let request_time = bg.c3().now();
        let Ok(res) = call_ready(&mut inner, cond).await else {
            return;
        };
        if res.status() == StatusCode::NOT_MODIFIED {
            let (res_parts, _) = res.into_parts();
            if let Some((updated, storage)) = refreshed(
                bg.c3(),
                &bg.shared.config,
                &bg.parts,
                &stored,
                &res_parts,
                request_time,
            ) {
                store_entry(&bg.shared, &fill, &bg.uri, key, &storage, Arc::new(updated)).await;
            }
        } else if !res.status().is_server_error() {
            // A new representation: store it by reading the body to the end.
            let res = store_response(
                &bg,
                Some((key, Arc::new(fill))),
                res,
                request_time,
                CacheStatus::fwd(Fwd::Stale),
                None,
            );
            let mut body = std::pin::pin!(res.into_body());
            while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                if frame.is_err() {
                    break;
                }
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(revalidation, span));
}

/// A GET for the stored response's URI carrying its validators — and the
/// client's request's extensions, where routers and middleware leave what
/// the handler reads (path parameters, `Extension`s, connection info): the
/// inner service must answer it as it would the client's own request.
fn conditional_request<ReqBody: Default>(
    parts: &request::Parts,
    stored: &StoredResponse,
) -> Request<ReqBody> {
    let mut req = Request::new(ReqBody::default());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.extensions_mut() = parts.extensions.clone();
    let h = req.headers_mut();
    *h = parts.headers.clone();
    h.remove(IF_NONE_MATCH);
    h.remove(IF_MODIFIED_SINCE);
    h.remove(header::IF_MATCH);
    h.remove(header::IF_UNMODIFIED_SINCE);
    h.remove(header::IF_RANGE);
    h.remove(header::RANGE);
    if let Some(etag) = stored.etag() {
        h.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.last_modified() {
        h.insert(IF_MODIFIED_SINCE, lm.clone());
    }
    req
}

/// The stored response updated by a 304 (RFC 9111 §4.3.4), with its new storage.
fn refreshed(
    c3: &c3_core::C3,
    config: &super::Config,
    parts: &request::Parts,
    stored: &StoredResponse,
    not_modified: &http::response::Parts,
    request_time: SystemTime,
) -> Option<(StoredResponse, Storage)> {
    let mut headers = stored.headers.clone();
    for name in not_modified.headers.keys() {
        if name == header::CONTENT_LENGTH
            || HOP_BY_HOP.contains(&name.as_str())
            || name == SET_COOKIE
        {
            continue;
        }
        // Every value of a repeated field replaces the stored ones.
        headers.remove(name);
        for v in not_modified.headers.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    let (mut synth, ()) = Response::new(()).into_parts();
    synth.status = stored.status;
    synth.headers = headers;
    let response_time = c3.now();
    let storage = freshness::decide(
        parts,
        &Directives::default(),
        &synth,
        config,
        request_time,
        response_time,
    )
    .ok()?;
    // What is stored (and served) is what a miss would store: without the
    // fields meant for this cache (`C3-Cache-Control`), hop-by-hop fields
    // and those the 304's `Connection` names, and `Age`.
    let headers = storable_headers(&synth.headers);
    Some((
        // The selection the stored response was chosen by still holds.
        StoredResponse::new(
            stored.status,
            headers,
            stored.body.clone(),
            unix_micros(response_time),
            &storage,
            stored.selected.clone(),
        ),
        storage,
    ))
}
