//! A miss: collapse identical requests, forward, and store what may be
//! stored — as a **fill**, fenced when the request is forwarded.
//!
//! # Why the store is fenced
//!
//! A GET that reached the origin before another replica's PUT may get its
//! response back after that PUT has invalidated the URI everywhere. Storing
//! it then with a plain `set` would put the older body in L2 for every
//! replica until the next write or `max-age`. So the fill is begun
//! ([`C3::begin_fill`](c3_core::C3::begin_fill)) *before* the request goes
//! upstream, and L2 refuses the store if the URI's tag, the entry's key or
//! any surrogate key it carries was invalidated after that moment — also
//! when the invalidation's notification has not reached this replica yet,
//! and also when nothing was stored for the URI at the time.
//!
//! # Collapsing
//!
//! Requests that miss the same storage key on this node while one of them
//! is upstream wait for that one (the leader) instead of going upstream
//! themselves. When the leader's response is stored, each waiter looks the
//! cache up again and asks [`reuse::decide`] whether what it finds may
//! answer *it* (its `Vary` selection, `no-cache`, its own `max-age`…); a
//! waiter the cache cannot answer goes upstream on its own. The second
//! lookup matters: a write may invalidate the leader's response between its
//! store and the moment the waiters wake, and they must not be handed what
//! the cache no longer holds.

use std::sync::Arc;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::C3Body;
use super::collapse::{join_or_lead, wait_for_leader};
use super::context::Ctx;
use super::find::{Found, find};
use super::policy::Policy;
use super::reuse::{self, Reuse};
use super::serve::serve;
use super::status::{CacheStatus, Fwd};
use super::store::store_response;

/// Forwards a request the cache could not answer, and stores the response
/// under `key` if it may be stored.
pub(crate) async fn miss<S, P, ReqBody, ResBody>(
    ctx: &Ctx<P>,
    mut inner: S,
    body: ReqBody,
    key: Option<String>,
    fwd: Fwd,
) -> Result<Response<C3Body<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: Policy,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    // HEAD is answered from a stored GET, but never stored itself.
    let key = key.filter(|_| !ctx.head());
    let mut leader = None;
    // Requests with credentials are not collapsed with anybody else's.
    if let Some(key) = &key
        && !ctx.parts.headers.contains_key(AUTHORIZATION)
    {
        match join_or_lead(&ctx.shared.collapse, key) {
            Ok(rx) => {
                // The leader's response is not handed over as is: a write may
                // have invalidated it between its store and now, and a
                // request must never get what the cache no longer holds. So
                // the waiter looks the cache up again — usually an L1 hit on
                // the entry the leader just stored.
                if wait_for_leader(rx, ctx.shared.config.collapse_timeout).await
                    && let Found::Hit { stored, .. } =
                        find(&ctx.shared, &ctx.uri, &ctx.parts.headers).await
                {
                    match reuse::decide(&stored, &ctx.parts, &ctx.dirs, ctx.now_us()) {
                        Reuse::Fresh { age, .. } | Reuse::MaxStale { age } => {
                            return Ok(serve(
                                &stored,
                                &ctx.parts,
                                age,
                                CacheStatus::hit().detail("collapsed"),
                            ));
                        }
                        // Not an answer for this request: upstream on its own.
                        _ => {}
                    }
                }
            }
            Err(l) => leader = Some(l),
        }
    }
    // The fence goes up before the request does (see the module docs).
    let fill = match &key {
        Some(k) => ctx.c3().begin_fill(&[k]).await.ok().map(Arc::new),
        None => None,
    };
    let request_time = ctx.c3().now();
    let res = inner
        .call(Request::from_parts(ctx.parts.clone(), body))
        .await?;
    Ok(store_response(
        ctx,
        key.zip(fill),
        res,
        request_time,
        CacheStatus::fwd(fwd),
        leader,
    ))
}
