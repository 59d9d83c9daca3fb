//! [`C3Cache`]: the service, and the request flows behind it.
//!
//! * **unsafe methods** (POST, PUT, PATCH, DELETE) are forwarded; a
//!   successful response invalidates the target URI and the same-origin
//!   `Location`/`Content-Location`, cluster-wide, before it is returned;
//! * **GET/HEAD** look up the cache: a fresh hit is answered locally; a stale
//!   one is served under `stale-while-revalidate`, or revalidated upstream
//!   with its validators (and served under `stale-if-error` if that fails);
//!   a miss is forwarded once per node however many requests wait for it,
//!   and streamed to the client while being captured for the cache;
//! * everything else passes through.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use c3_core::C3;
use http::header::{
    self, AUTHORIZATION, CACHE_CONTROL, CONTENT_LOCATION, HeaderName, HeaderValue,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LOCATION, PRAGMA, RANGE, SET_COOKIE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, request};
use http_body::Body;
use tokio::sync::watch;
use tower_service::Service;

use super::Config;
use super::body::{C3Body, Capture};
use super::cache_control::{self, C3_CACHE_CONTROL, Directives};
use super::freshness::{self, Storage, secs_since_epoch};
use super::future::{BoxFuture, ResponseFuture};
use super::key::{RequestUri, user_tag, variant_key};
use super::policy::Policy;
use super::stored::{Entry, StoredResponse};

/// Response header by which a handler asks the layer to invalidate tags
/// (space-separated) once its write succeeded; removed before the response
/// leaves the layer.
pub const C3_INVALIDATE_TAG: HeaderName = HeaderName::from_static("c3-invalidate-tag");

/// RFC 9211 `Cache-Status`.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Hop-by-hop headers: never stored, never replayed (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// The result of a collapsed miss, for the requests that waited on it.
#[derive(Clone)]
pub(crate) enum Collapsed {
    Stored(Arc<StoredResponse>),
    /// Not storable (or the leader failed): each waiter goes upstream itself.
    Forward,
}

pub(crate) struct Shared<P> {
    pub(crate) c3: C3,
    pub(crate) config: Config,
    pub(crate) policy: P,
    pub(crate) collapse: Mutex<HashMap<String, watch::Receiver<Option<Collapsed>>>>,
}

/// A [`Service`] answering from a coherent HTTP cache. Build it with
/// [`C3CacheLayer`](super::C3CacheLayer).
pub struct C3Cache<S, P = super::DefaultPolicy> {
    inner: S,
    shared: Arc<Shared<P>>,
}

impl<S: Clone, P> Clone for C3Cache<S, P> {
    fn clone(&self) -> Self {
        C3Cache {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, P> std::fmt::Debug for C3Cache<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("C3Cache").finish_non_exhaustive()
    }
}

impl<S, P> C3Cache<S, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<P>>) -> Self {
        C3Cache { inner, shared }
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for C3Cache<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    P: Policy,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<C3Body<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this request; the clone
        // stays for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let span = http_span(&req);
        #[cfg(feature = "otel")]
        if shared.config.propagate_trace_context {
            continue_trace(&span, req.headers());
        }
        let f: BoxFuture<ResBody, S::Error> = match *req.method() {
            Method::GET | Method::HEAD => Box::pin(traced(span, lookup_flow(shared, inner, req))),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE => {
                Box::pin(traced(span, unsafe_flow(shared, inner, req)))
            }
            _ => {
                let mut inner = inner;
                return ResponseFuture::bypass(inner.call(req));
            }
        };
        ResponseFuture::cache(f)
    }
}

/// The layer's span for one request, with OpenTelemetry HTTP attributes;
/// the cache's own spans (`c3.get`, `c3.l2`, …) nest inside it.
fn http_span<B>(req: &Request<B>) -> tracing::Span {
    tracing::info_span!(
        target: "c3::http",
        "c3.http",
        http.request.method = %req.method(),
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        c3.cache_status = tracing::field::Empty,
    )
}

/// Parents `span` on the remote context carried by the request headers.
#[cfg(feature = "otel")]
fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    // Fails only if the span is disabled or already started; then there is
    // nothing to continue.
    let _ = span.set_parent(cx);
}

/// Runs a flow inside `span` and records how it answered.
async fn traced<B, E>(
    span: tracing::Span,
    flow: impl std::future::Future<Output = Result<Response<B>, E>>,
) -> Result<Response<B>, E> {
    use tracing::Instrument;
    let r = flow.instrument(span.clone()).await;
    if let Ok(res) = &r {
        span.record("http.response.status_code", res.status().as_u16());
        if let Some(v) = res
            .headers()
            .get_all(CACHE_STATUS)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
        {
            span.record("c3.cache_status", v);
        }
    }
    r
}

fn status_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("c3"))
}

fn with_status<B>(mut res: Response<C3Body<B>>, value: &str) -> Response<C3Body<B>> {
    res.headers_mut().remove(C3_CACHE_CONTROL);
    res.headers_mut().append(CACHE_STATUS, status_value(value));
    res
}

/// Calls a service that may not have been polled ready yet.
async fn call_ready<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

/// POST/PUT/PATCH/DELETE: forward, then invalidate what the write changed.
async fn unsafe_flow<S, P, ReqBody, ResBody>(
    shared: Arc<Shared<P>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<C3Body<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let (parts, body) = req.into_parts();
    let target = RequestUri::from_request_with(
        &parts,
        &shared.config.default_scheme,
        shared.config.fixed_authority.as_deref(),
    );
    let mut res = inner.call(Request::from_parts(parts, body)).await?;
    let tags: Vec<String> = res
        .headers_mut()
        .remove(C3_INVALIDATE_TAG)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .map(|v| v.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let succeeded = res.status().is_success() || res.status().is_redirection();
    if succeeded {
        for tag in tags {
            if let Err(e) = shared.c3.invalidate_tag(&user_tag(&tag)).await {
                tracing::warn!(target: "c3::http", tag = %tag, error = %e, "could not invalidate a tag");
            }
        }
    }
    if let Some(target) = target
        && succeeded
    {
        let mut uris = vec![target.clone()];
        for h in [LOCATION, CONTENT_LOCATION] {
            if let Some(u) = res
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| target.resolve_same_origin(v))
            {
                uris.push(u);
            }
        }
        for u in uris {
            // Awaited, so the client's next read sees its write on every node.
            if let Err(e) = shared.c3.invalidate_tag(&u.uri_tag()).await {
                tracing::warn!(target: "c3::http", url = %u.url, error = %e, "could not invalidate after a write");
            }
        }
    }
    Ok(with_status(res.map(C3Body::inner), "c3; fwd=method"))
}

/// What the cache holds for a request.
enum Found {
    Hit {
        stored: Arc<StoredResponse>,
        key: String,
        tier: &'static str,
    },
    Miss {
        /// Where a response would be stored (`None`: it cannot be keyed).
        key: Option<String>,
        fwd: &'static str,
    },
}

async fn find<P>(shared: &Shared<P>, uri: &RequestUri, headers: &HeaderMap) -> Found {
    let c3 = &shared.c3;
    let get = |key: String| async move {
        let tier = if c3.is_cached_locally(&key) {
            "l1"
        } else {
            "l2"
        };
        match c3.get::<Entry>(&key).await {
            Ok(found) => (key, found, tier),
            Err(e) => {
                // An unavailable or unreadable L2 is a miss, not an HTTP error.
                tracing::debug!(target: "c3::http", error = %e, "cache lookup failed; treating as a miss");
                (key, None, tier)
            }
        }
    };
    let (primary, found, tier) = get(uri.primary_key()).await;
    match found.as_deref() {
        None => Found::Miss {
            key: Some(primary),
            fwd: "uri-miss",
        },
        Some(Entry::Response(r)) => Found::Hit {
            stored: Arc::clone(r),
            key: primary,
            tier,
        },
        Some(Entry::Variants { vary }) => {
            let Some(vkey) = variant_key(&primary, vary, headers) else {
                return Found::Miss {
                    key: None,
                    fwd: "vary-miss",
                };
            };
            match get(vkey).await {
                (vkey, Some(e), tier) => match &*e {
                    Entry::Response(r) => Found::Hit {
                        stored: Arc::clone(r),
                        key: vkey,
                        tier,
                    },
                    Entry::Variants { .. } => Found::Miss {
                        key: None,
                        fwd: "vary-miss",
                    },
                },
                (vkey, None, _) => Found::Miss {
                    key: Some(vkey),
                    fwd: "vary-miss",
                },
            }
        }
    }
}

/// GET and HEAD.
async fn lookup_flow<S, P, ReqBody, ResBody>(
    shared: Arc<Shared<P>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<C3Body<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    P: Policy,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    let (parts, body) = req.into_parts();
    let c3 = &shared.c3;
    let mut req_dirs = cache_control::parse(&parts.headers, &CACHE_CONTROL);
    if !req_dirs.present
        && parts
            .headers
            .get(PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
    {
        req_dirs.no_cache = true;
    }
    let uri = RequestUri::from_request_with(
        &parts,
        &shared.config.default_scheme,
        shared.config.fixed_authority.as_deref(),
    )
    .filter(|u| {
        u.primary_key().len() <= c3.max_key_bytes() && u.uri_tag().len() <= c3.max_key_bytes()
    });
    let Some(uri) =
        uri.filter(|_| shared.policy.cacheable(&parts) && !parts.headers.contains_key(RANGE))
    else {
        let res = inner.call(Request::from_parts(parts, body)).await?;
        return Ok(with_status(res.map(C3Body::inner), "c3; fwd=bypass"));
    };
    let head = parts.method == Method::HEAD;
    let now = c3.now();
    let now_us = micros(now);

    let found = find(&shared, &uri, &parts.headers).await;
    let (stored, key, tier) = match found {
        Found::Hit { stored, key, tier } => (stored, key, tier),
        Found::Miss { key, fwd } => {
            if req_dirs.only_if_cached {
                return Ok(gateway_timeout());
            }
            return miss(&shared, inner, parts, body, &uri, key, fwd, head).await;
        }
    };

    // RFC 9111 §3.5: a request with credentials only gets responses that
    // explicitly allow sharing.
    if parts.headers.contains_key(AUTHORIZATION) && !stored.auth_ok {
        let res = inner.call(Request::from_parts(parts, body)).await?;
        return Ok(with_status(
            res.map(C3Body::inner),
            "c3; fwd=bypass; detail=authorization",
        ));
    }

    let age = stored.age(now_us);
    let ttl = stored.ttl(now_us);
    let must_check = stored.no_cache || req_dirs.no_cache;
    let within_request_limits = req_dirs.max_age.is_none_or(|m| age <= m)
        && req_dirs.min_fresh.is_none_or(|m| ttl >= m as i64);
    if !must_check && ttl > 0 && within_request_limits {
        return Ok(serve(
            &stored,
            &parts,
            age,
            &format!("c3; hit; ttl={ttl}; detail={tier}"),
            head,
        ));
    }
    let staleness = (-ttl).max(0) as u64;
    if !must_check && ttl <= 0 && !stored.must_revalidate {
        if let Some(max_stale) = req_dirs.max_stale
            && max_stale.is_none_or(|m| staleness <= m)
        {
            return Ok(serve(
                &stored,
                &parts,
                age,
                "c3; hit; detail=max-stale",
                head,
            ));
        }
        if staleness <= stored.swr {
            revalidate_in_background(
                &shared,
                inner.clone(),
                &parts,
                &uri,
                key,
                Arc::clone(&stored),
            );
            return Ok(serve(
                &stored,
                &parts,
                age,
                "c3; hit; detail=stale-while-revalidate",
                head,
            ));
        }
    }
    if req_dirs.only_if_cached {
        return Ok(gateway_timeout());
    }

    // Revalidate: ask upstream whether the stored response is still good.
    let cond = conditional_request::<ReqBody>(&parts, &stored);
    let request_time = c3.now();
    let sie_ok = !stored.must_revalidate && staleness <= stored.sie;
    match inner.call(cond).await {
        Ok(res) if res.status() == StatusCode::NOT_MODIFIED => {
            let (res_parts, _) = res.into_parts();
            match refreshed(&shared, &parts, &stored, &res_parts, request_time) {
                Some((updated, storage)) => {
                    let updated = Arc::new(updated);
                    store_entry(&shared, &uri, key, &storage, Arc::clone(&updated)).await;
                    Ok(serve(
                        &updated,
                        &parts,
                        updated.age(micros(c3.now())),
                        "c3; fwd=stale; fwd-status=304",
                        head,
                    ))
                }
                None => Ok(serve(
                    &stored,
                    &parts,
                    age,
                    "c3; fwd=stale; fwd-status=304",
                    head,
                )),
            }
        }
        Ok(res) if res.status().is_server_error() && sie_ok => Ok(serve(
            &stored,
            &parts,
            age,
            &format!(
                "c3; fwd=stale; fwd-status={}; detail=stale-if-error",
                res.status().as_u16()
            ),
            head,
        )),
        Ok(res) => {
            let fwd_status = res.status().as_u16();
            Ok(store_response(
                &shared,
                &parts,
                &uri,
                Some(key),
                res,
                request_time,
                &format!("c3; fwd=stale; fwd-status={fwd_status}"),
                None,
            ))
        }
        Err(_) if sie_ok => Ok(serve(
            &stored,
            &parts,
            age,
            "c3; fwd=stale; detail=stale-if-error",
            head,
        )),
        Err(e) => Err(e),
    }
}

/// A miss: collapse identical GETs, forward, and store what may be stored.
#[allow(clippy::too_many_arguments)]
async fn miss<S, P, ReqBody, ResBody>(
    shared: &Arc<Shared<P>>,
    mut inner: S,
    parts: request::Parts,
    body: ReqBody,
    uri: &RequestUri,
    key: Option<String>,
    fwd: &'static str,
    head: bool,
) -> Result<Response<C3Body<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: Policy,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let c3 = &shared.c3;
    // HEAD is answered from a stored GET, but never stored itself; requests
    // with credentials are not collapsed with anybody else's.
    let collapsible = !head && key.is_some() && !parts.headers.contains_key(AUTHORIZATION);
    let mut leader = None;
    if collapsible && let Some(key) = &key {
        let joined = {
            let mut map = shared.collapse.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key) {
                Some(rx) => Some(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx);
                    leader = Some(LeaderGuard {
                        shared: Arc::clone(shared),
                        key: key.clone(),
                        tx,
                    });
                    None
                }
            }
        };
        if let Some(mut rx) = joined {
            let waited =
                tokio::time::timeout(shared.config.collapse_timeout, rx.wait_for(Option::is_some))
                    .await;
            if let Ok(Ok(result)) = waited
                && let Some(Collapsed::Stored(stored)) = result.clone()
            {
                let age = stored.age(micros(c3.now()));
                return Ok(serve(
                    &stored,
                    &parts,
                    age,
                    "c3; hit; detail=collapsed",
                    head,
                ));
            }
        }
    }
    let request_time = c3.now();
    let req = Request::from_parts(parts.clone(), body);
    let res = inner.call(req).await?;
    let store_key = if head { None } else { key };
    Ok(store_response(
        shared,
        &parts,
        uri,
        store_key,
        res,
        request_time,
        &format!("c3; fwd={fwd}"),
        leader,
    ))
}

/// Publishes `Forward` to waiters unless the leader published a result; runs
/// on every exit path, including a dropped future or a panic.
struct LeaderGuard<P> {
    shared: Arc<Shared<P>>,
    key: String,
    tx: watch::Sender<Option<Collapsed>>,
}

impl<P> LeaderGuard<P> {
    fn publish(&self, c: Collapsed) {
        self.tx.send_replace(Some(c));
        self.shared
            .collapse
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
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
/// capturing it, and stores it (and wakes collapsed waiters) when complete.
#[allow(clippy::too_many_arguments)]
fn store_response<P, B>(
    shared: &Arc<Shared<P>>,
    parts: &request::Parts,
    uri: &RequestUri,
    key: Option<String>,
    res: Response<B>,
    request_time: SystemTime,
    cache_status: &str,
    leader: Option<LeaderGuard<P>>,
) -> Response<C3Body<B>>
where
    P: Policy,
    B: Body<Data = Bytes> + Send + 'static,
{
    let c3 = &shared.c3;
    let response_time = c3.now();
    let (mut res_parts, body) = res.into_parts();
    let req_dirs = cache_control::parse(&parts.headers, &CACHE_CONTROL);
    let decision = key.ok_or("no key").and_then(|key| {
        let storage = freshness::decide(
            parts,
            &req_dirs,
            &res_parts,
            &shared.config,
            request_time,
            response_time,
        )?;
        let too_big = body
            .size_hint()
            .exact()
            .is_some_and(|n| n > shared.config.max_body_bytes as u64);
        if too_big {
            return Err("body too large");
        }
        // The key chosen before the response arrived is the primary one; a
        // response that varies goes under its variant key instead.
        let key = if storage.vary.is_empty() {
            key
        } else {
            variant_key(&uri.primary_key(), &storage.vary, &parts.headers)
                .filter(|k| k.len() <= c3.max_key_bytes())
                .ok_or("vary key")?
        };
        Ok((key, storage))
    });
    let Ok((key, storage)) = decision else {
        drop(leader); // waiters go upstream themselves
        let res = Response::from_parts(res_parts, C3Body::inner(body));
        return with_status(res, cache_status);
    };

    let mut stored_headers = res_parts.headers.clone();
    for h in HOP_BY_HOP {
        stored_headers.remove(h);
    }
    stored_headers.remove(header::AGE);
    stored_headers.remove(C3_CACHE_CONTROL);
    stored_headers.remove(SET_COOKIE);
    if let Some(connection) = res_parts
        .headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        for name in connection.split(',') {
            stored_headers.remove(name.trim());
        }
    }
    let (capture, done) = Capture::new(shared.config.max_body_bytes);
    let shared2 = Arc::clone(shared);
    let uri = uri.clone();
    let status = res_parts.status;
    tokio::spawn(async move {
        let Ok(body) = done.await else {
            return; // not read to the end, or too large: nothing stored
        };
        let stored = Arc::new(StoredResponse {
            status,
            headers: stored_headers,
            body,
            response_time_us: micros(response_time),
            initial_age: storage.initial_age,
            lifetime: storage.lifetime,
            swr: storage.swr,
            sie: storage.sie,
            must_revalidate: storage.must_revalidate,
            no_cache: storage.no_cache,
            auth_ok: storage.auth_ok,
        });
        store_entry(&shared2, &uri, key, &storage, Arc::clone(&stored)).await;
        if let Some(l) = leader {
            l.publish(Collapsed::Stored(stored));
        }
    });
    res_parts.headers.remove(C3_CACHE_CONTROL);
    res_parts.headers.append(
        CACHE_STATUS,
        status_value(&format!("{cache_status}; stored")),
    );
    Response::from_parts(res_parts, C3Body::capturing(body, capture))
}

/// Writes a response (and, for a varying one, the primary marker) to c3,
/// tagged with its URI and its surrogate keys.
async fn store_entry<P>(
    shared: &Shared<P>,
    uri: &RequestUri,
    key: String,
    storage: &Storage,
    stored: Arc<StoredResponse>,
) {
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
    let entry = Entry::Response(Arc::clone(&stored));
    let ttl = Some(storage.keep);
    if let Err(e) = c3.set_tagged(&key, &entry, ttl, &tags).await {
        tracing::debug!(target: "c3::http", error = %e, "could not store a response");
        return;
    }
    if !storage.vary.is_empty() {
        let marker = Entry::Variants {
            vary: storage.vary.clone(),
        };
        if let Err(e) = c3
            .set_tagged(&uri.primary_key(), &marker, ttl, &[uri_tag.as_str()])
            .await
        {
            tracing::debug!(target: "c3::http", error = %e, "could not store a vary marker");
        }
    }
}

/// Starts one background revalidation of a stale entry (stale-while-revalidate).
fn revalidate_in_background<S, P, ReqBody, ResBody>(
    shared: &Arc<Shared<P>>,
    mut inner: S,
    parts: &request::Parts,
    uri: &RequestUri,
    key: String,
    stored: Arc<StoredResponse>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    P: Policy,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    // One revalidation per key at a time on this node: it joins the collapse
    // table like a miss would.
    let flag_key = format!("{key} revalidate");
    let (tx, rx) = watch::channel(None);
    {
        let mut map = shared.collapse.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&flag_key) {
            return;
        }
        map.insert(flag_key.clone(), rx);
    }
    let guard = LeaderGuard {
        shared: Arc::clone(shared),
        key: flag_key,
        tx,
    };
    let shared = Arc::clone(shared);
    let cond = conditional_request::<ReqBody>(parts, &stored);
    let parts = strip_body_parts(parts);
    let uri = uri.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let request_time = shared.c3.now();
        let Ok(res) = call_ready(&mut inner, cond).await else {
            return;
        };
        if res.status() == StatusCode::NOT_MODIFIED {
            let (res_parts, _) = res.into_parts();
            if let Some((updated, storage)) =
                refreshed(&shared, &parts, &stored, &res_parts, request_time)
            {
                store_entry(&shared, &uri, key, &storage, Arc::new(updated)).await;
            }
        } else if !res.status().is_server_error() {
            // A new representation: store it by reading the body to the end.
            let res = store_response(
                &shared,
                &parts,
                &uri,
                Some(key),
                res,
                request_time,
                "c3",
                None,
            );
            let mut body = std::pin::pin!(res.into_body());
            while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                if frame.is_err() {
                    break;
                }
            }
        }
    });
}

fn strip_body_parts(parts: &request::Parts) -> request::Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = Method::GET;
    p.uri = parts.uri.clone();
    p.version = parts.version;
    p.headers = parts.headers.clone();
    p
}

/// A GET for the stored response's URI carrying its validators.
fn conditional_request<ReqBody: Default>(
    parts: &request::Parts,
    stored: &StoredResponse,
) -> Request<ReqBody> {
    let mut req = Request::new(ReqBody::default());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    let h = req.headers_mut();
    *h = parts.headers.clone();
    h.remove(IF_NONE_MATCH);
    h.remove(IF_MODIFIED_SINCE);
    h.remove(header::IF_MATCH);
    h.remove(header::IF_UNMODIFIED_SINCE);
    h.remove(header::IF_RANGE);
    if let Some(etag) = stored.etag() {
        h.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.last_modified() {
        h.insert(IF_MODIFIED_SINCE, lm.clone());
    }
    req
}

/// The stored response updated by a 304 (RFC 9111 §4.3.4), with its new storage.
fn refreshed<P>(
    shared: &Shared<P>,
    parts: &request::Parts,
    stored: &StoredResponse,
    not_modified: &http::response::Parts,
    request_time: SystemTime,
) -> Option<(StoredResponse, Storage)> {
    let mut headers = stored.headers.clone();
    for (name, value) in &not_modified.headers {
        if name == header::CONTENT_LENGTH
            || HOP_BY_HOP.contains(&name.as_str())
            || name == SET_COOKIE
        {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
    for name in not_modified.headers.keys() {
        // insert() above kept only the last value of repeated fields; copy all.
        let values: Vec<HeaderValue> = not_modified.headers.get_all(name).iter().cloned().collect();
        if values.len() > 1 {
            headers.remove(name);
            for v in values {
                headers.append(name.clone(), v);
            }
        }
    }
    let (mut synth, ()) = Response::new(()).into_parts();
    synth.status = stored.status;
    synth.headers = headers;
    let response_time = shared.c3.now();
    let req_dirs = Directives::default();
    let storage = freshness::decide(
        parts,
        &req_dirs,
        &synth,
        &shared.config,
        request_time,
        response_time,
    )
    .ok()?;
    let mut headers = synth.headers;
    headers.remove(header::AGE);
    Some((
        StoredResponse {
            status: stored.status,
            headers,
            body: stored.body.clone(),
            response_time_us: micros(response_time),
            initial_age: storage.initial_age,
            lifetime: storage.lifetime,
            swr: storage.swr,
            sie: storage.sie,
            must_revalidate: storage.must_revalidate,
            no_cache: storage.no_cache,
            auth_ok: storage.auth_ok,
        },
        storage,
    ))
}

/// Answers from a stored response, or with 304 if the request's own
/// validators match it.
fn serve<B>(
    stored: &StoredResponse,
    parts: &request::Parts,
    age: u64,
    cache_status: &str,
    head: bool,
) -> Response<C3Body<B>> {
    if not_modified_for(parts, stored) {
        let mut res = Response::new(C3Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in stored.headers.get_all(&name) {
                res.headers_mut().append(name.clone(), v.clone());
            }
        }
        res.headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        res.headers_mut()
            .append(CACHE_STATUS, status_value(cache_status));
        return res;
    }
    let body = if head {
        C3Body::empty()
    } else {
        C3Body::full(stored.body.clone())
    };
    let mut res = Response::new(body);
    *res.status_mut() = stored.status;
    *res.headers_mut() = stored.headers.clone();
    res.headers_mut()
        .insert(header::AGE, HeaderValue::from(age));
    res.headers_mut()
        .append(CACHE_STATUS, status_value(cache_status));
    res
}

/// RFC 9110 §13.1.2/§13.1.3, weak comparison for If-None-Match.
fn not_modified_for(parts: &request::Parts, stored: &StoredResponse) -> bool {
    if !stored.status.is_success() {
        return false;
    }
    if parts.headers.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.etag().and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        let ours = weak(etag);
        return parts
            .headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || weak(t) == ours);
    }
    let since = parts
        .headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = stored
        .last_modified()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified) {
        (Some(since), Some(modified)) => secs_since_epoch(modified) <= secs_since_epoch(since),
        _ => false,
    }
}

fn gateway_timeout<B>() -> Response<C3Body<B>> {
    let mut res = Response::new(C3Body::empty());
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    res.headers_mut().append(
        CACHE_STATUS,
        HeaderValue::from_static("c3; fwd=miss; detail=only-if-cached"),
    );
    res
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
