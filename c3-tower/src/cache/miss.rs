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
use std::time::SystemTime;

use bytes::Bytes;
use c3_core::Fill;
use http::header::{self, AUTHORIZATION, SET_COOKIE};
use http::{Request, Response, request};
use http_body::Body;
use tokio::sync::watch;
use tower_service::Service;

use super::body::{C3Body, Capture};
use super::cache_control::C3_CACHE_CONTROL;
use super::context::{Ctx, forwarded};
use super::freshness::{self, Storage};
use super::key::{RequestUri, selection, user_tag, variant_key};
use super::lookup::{Found, find};
use super::policy::Policy;
use super::reuse::{self, Reuse};
use super::serve::serve;
use super::service::Shared;
use super::status::{CACHE_STATUS, CacheStatus, Fwd};
use super::stored::{Entry, StoredResponse};
use c3_core::unix_micros;

/// Hop-by-hop headers: never stored, never replayed (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// A request upstream on this node that others may wait for.
pub(crate) struct Upstream {
    rx: watch::Receiver<Option<Collapsed>>,
}

/// The result of a collapsed miss, for the requests that waited on it.
#[derive(Clone)]
pub(crate) enum Collapsed {
    /// The leader's response is in the cache: look it up.
    Stored,
    /// Not storable (or the leader failed): each waiter goes upstream itself.
    Forward,
}

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
        match join_or_lead(&ctx.shared, key) {
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

/// Waits for the leader's outcome; `true` if it stored its response.
async fn wait_for_leader(
    mut rx: watch::Receiver<Option<Collapsed>>,
    timeout: std::time::Duration,
) -> bool {
    let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
    matches!(waited, Ok(Ok(r)) if matches!(*r, Some(Collapsed::Stored)))
}

/// Joins the request upstream for `key`, or — if there is none — becomes it.
/// Joining is always safe: a waiter does not take the leader's response, it
/// looks the cache up again once the leader has stored (see the module docs).
fn join_or_lead<P>(
    shared: &Arc<Shared<P>>,
    key: &str,
) -> Result<watch::Receiver<Option<Collapsed>>, LeaderGuard<P>> {
    let mut map = shared.collapse.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(up) = map.get(key) {
        return Ok(up.rx.clone());
    }
    let (tx, rx) = watch::channel(None);
    map.insert(key.to_owned(), Upstream { rx: rx.clone() });
    Err(LeaderGuard {
        shared: Arc::clone(shared),
        key: key.to_owned(),
        tx,
        rx,
    })
}

/// Publishes `Forward` to waiters unless the leader published a result; runs
/// on every exit path, including a dropped future or a panic.
pub(crate) struct LeaderGuard<P> {
    shared: Arc<Shared<P>>,
    key: String,
    tx: watch::Sender<Option<Collapsed>>,
    /// Ours, to recognise our entry in the map (a newer leader may have
    /// replaced it).
    rx: watch::Receiver<Option<Collapsed>>,
}

impl<P> LeaderGuard<P> {
    /// Becomes the only request upstream for `key` on this node, if no other
    /// is (`None`: one is).
    pub(crate) fn try_lead(shared: &Arc<Shared<P>>, key: String) -> Option<LeaderGuard<P>> {
        join_or_lead(shared, &key).err()
    }

    fn publish(&self, c: Collapsed) {
        self.tx.send_replace(Some(c));
        let mut map = self
            .shared
            .collapse
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|up| up.rx.same_channel(&self.rx))
        {
            map.remove(&self.key);
        }
    }
}

impl<P> Drop for LeaderGuard<P> {
    fn drop(&mut self) {
        if self.tx.borrow().is_none() {
            self.publish(Collapsed::Forward);
        }
    }
}

/// Decides whether `res` can be stored; if so, streams it to the client while
/// capturing it, and stores it through `fill` (and wakes collapsed waiters)
/// when complete. `target`: the key chosen before the response arrived, and
/// the fill fenced when the request went upstream.
pub(crate) fn store_response<P, B>(
    ctx: &Ctx<P>,
    target: Option<(String, Arc<Fill>)>,
    res: Response<B>,
    request_time: SystemTime,
    status: CacheStatus,
    leader: Option<LeaderGuard<P>>,
) -> Response<C3Body<B>>
where
    P: Policy,
    B: Body<Data = Bytes> + Send + 'static,
{
    let c3 = ctx.c3();
    let config = &ctx.shared.config;
    let response_time = c3.now();
    let (mut res_parts, body) = res.into_parts();
    let decision = target.ok_or("no key").and_then(|(key, fill)| {
        let (key, storage, selected) =
            storable(ctx, key, &res_parts, &body, request_time, response_time)?;
        Ok((key, fill, storage, selected))
    });
    let Ok((key, fill, storage, selected)) = decision else {
        drop(leader); // waiters go upstream themselves
        return forwarded(Response::from_parts(res_parts, body), status);
    };

    let stored_headers = storable_headers(&res_parts.headers);
    let (capture, done) = Capture::new(config.max_body_bytes);
    let shared = Arc::clone(&ctx.shared);
    let uri = ctx.uri.clone();
    let code = res_parts.status;
    // The store outlives the response; its span stays in the request's
    // trace, under the request's `c3.http` span (the current one here).
    let span = tracing::info_span!(target: "c3::http", "c3.http.store");
    let store = async move {
        let Ok(body) = done.await else {
            return; // not read to the end, or too large: nothing stored
        };
        let stored = Arc::new(StoredResponse::new(
            code,
            stored_headers,
            body,
            unix_micros(response_time),
            &storage,
            selected,
        ));
        // Waiters only get a response that is now the cache's: one the fence
        // refused may predate a write they must see.
        let kept = store_entry(&shared, &fill, &uri, key, &storage, stored).await;
        if let Some(l) = leader {
            l.publish(if kept {
                Collapsed::Stored
            } else {
                Collapsed::Forward
            });
        }
    };
    tokio::spawn(tracing::Instrument::instrument(store, span));
    res_parts.headers.remove(C3_CACHE_CONTROL);
    res_parts
        .headers
        .append(CACHE_STATUS, status.stored().header_value());
    Response::from_parts(res_parts, C3Body::capturing(body, capture))
}

/// Whether the response may be stored and under which key: RFC 9111's
/// rules (`freshness::decide`), the body limit, and the variant key when it
/// varies. Returns the key, how to store, and the request's values of the
/// `Vary` headers.
fn storable<P, B>(
    ctx: &Ctx<P>,
    key: String,
    res_parts: &http::response::Parts,
    body: &B,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Result<(String, Storage, String), &'static str>
where
    P: Policy,
    B: Body,
{
    let (c3, config) = (ctx.c3(), &ctx.shared.config);
    let storage = freshness::decide(
        &ctx.parts,
        &super::context::request_directives(&ctx.parts.headers),
        res_parts,
        config,
        request_time,
        response_time,
    )?;
    let too_big = body
        .size_hint()
        .exact()
        .is_some_and(|n| n > config.max_body_bytes as u64);
    if too_big {
        return Err("body too large");
    }
    // The key chosen before the response arrived is the primary one; a
    // response that varies goes under its variant key instead.
    let selected = selection(&storage.vary, &ctx.parts.headers).ok_or("vary key")?;
    let key = if storage.vary.is_empty() {
        key
    } else {
        Some(variant_key(&ctx.uri.primary_key(), &selected))
            .filter(|k| k.len() <= c3.max_key_bytes())
            .ok_or("vary key")?
    };
    Ok((key, storage, selected))
}

/// The response headers worth storing: no hop-by-hop fields (also those
/// `Connection` names), no `Age` (recomputed), no `Set-Cookie`, no c3
/// override.
pub(crate) fn storable_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut stored = headers.clone();
    for h in HOP_BY_HOP {
        stored.remove(h);
    }
    stored.remove(header::AGE);
    stored.remove(C3_CACHE_CONTROL);
    stored.remove(SET_COOKIE);
    if let Some(connection) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        for name in connection.split(',') {
            stored.remove(name.trim());
        }
    }
    stored
}

/// Stores a response (and, for a varying one, the primary marker) through
/// `fill`, tagged with its URI and its surrogate keys. Returns whether the
/// response was stored.
pub(crate) async fn store_entry<P>(
    shared: &Shared<P>,
    fill: &Fill,
    uri: &RequestUri,
    key: String,
    storage: &Storage,
    stored: Arc<StoredResponse>,
) -> bool {
    let c3 = &shared.c3;
    let uri_tag = uri.uri_tag();
    let user_tags: Vec<String> = storage
        .tags
        .iter()
        .map(|t| user_tag(t))
        .filter(|t| t.len() <= c3.max_key_bytes())
        .collect();
    let mut tags: Vec<&str> = vec![uri_tag.as_str()];
    tags.extend(user_tags.iter().map(String::as_str));
    let ttl = Some(storage.keep);
    let entry = Entry::Response(stored);
    match fill.store(&key, &entry, ttl, &tags).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::debug!(target: "c3::http", error = %e, "could not store a response");
            return false;
        }
    }
    if !storage.vary.is_empty() {
        let marker = Entry::Variants {
            vary: storage.vary.clone(),
        };
        if let Err(e) = fill
            .store(&uri.primary_key(), &marker, ttl, &[uri_tag.as_str()])
            .await
        {
            tracing::debug!(target: "c3::http", error = %e, "could not store a vary marker");
        }
    }
    true
}

/// The request parts of a background GET: no body, the same target,
/// headers and extensions (what routers and middleware left for the
/// handler; cloned up front, as the GET may outlive the client's request).
pub(crate) fn get_parts(parts: &request::Parts) -> request::Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = http::Method::GET;
    p.uri = parts.uri.clone();
    p.version = parts.version;
    p.headers = parts.headers.clone();
    p.extensions = parts.extensions.clone();
    p
}
