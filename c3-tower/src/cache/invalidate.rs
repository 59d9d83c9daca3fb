//! Unsafe methods (RFC 9111 §4.4): forward, and after a non-error response
//! invalidate the target URI, the same-origin `Location` and
//! `Content-Location`, and the tags the handler named in
//! [`C3_INVALIDATE_TAG`] — on every node, before the response is returned,
//! so the client's next read sees its write wherever it lands.
//!
//! Every method not known to be safe comes here: POST, PUT, PATCH, DELETE,
//! and extension methods such as `M-SEARCH` or `PURGE`.
//!
//! # When the invalidation cannot be committed
//!
//! The write has happened at the origin; until its invalidation commits,
//! other replicas may serve the older response. A lost connection is
//! retried (a pooled connection killed under us fails once, the next one
//! works). If L2 still cannot be reached, the layer answers **503** instead
//! of the origin's success, with `Cache-Status: …; detail=invalidation-failed`:
//! a success would promise a coherence the cache cannot give, and the client
//! can retry or re-read. (The origin's own answer is logged.)

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_LOCATION, HeaderName, LOCATION};
use http::{Request, Response};
use tower_service::Service;

use super::body::C3Body;
use super::context::Shared;
use super::context::forwarded;
use super::key::{RequestUri, user_tag};
use super::status::CACHE_STATUS;
use super::status::{CacheStatus, Fwd};

/// Response header by which a handler asks the layer to invalidate tags
/// (space-separated) once its write succeeded; removed before the response
/// leaves the layer.
pub const C3_INVALIDATE_TAG: HeaderName = HeaderName::from_static("c3-invalidate-tag");

/// The unsafe-method flow.
pub(crate) async fn forward<S, P, ReqBody, ResBody>(
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
    // Every header line counts (`remove` would hand back only the first
    // value, and drop the others unread).
    let tags: Vec<String> = res
        .headers()
        .get_all(C3_INVALIDATE_TAG)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .map(str::to_owned)
        .collect();
    res.headers_mut().remove(C3_INVALIDATE_TAG);
    // "Non-error": 2xx and 3xx.
    let succeeded = res.status().is_success() || res.status().is_redirection();
    if !succeeded {
        return Ok(forwarded(res, CacheStatus::fwd(Fwd::Method)));
    }
    let mut to_invalidate: Vec<(String, String)> = tags
        .iter()
        .map(|t| (user_tag(t), format!("tag {t}")))
        .collect();
    if let Some(target) = target {
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
        to_invalidate.extend(uris.into_iter().map(|u| (u.uri_tag(), u.url)));
    }
    // Awaited, so the client's next read sees its write on every node.
    let mut failed = false;
    for (tag, what) in &to_invalidate {
        if let Err(e) = invalidate_retrying(&shared.c3, tag).await {
            if e.is_invalid_key() {
                // A tag no key could carry: nothing was stored under it.
                tracing::warn!(target: "c3::http", what = %what, error = %e, "not a valid cache tag; ignored");
            } else {
                tracing::error!(target: "c3::http", what = %what, error = %e,
                    origin_status = res.status().as_u16(),
                    "a write succeeded at the origin but its invalidation could not be committed; answering 503");
                failed = true;
            }
        }
    }
    if failed {
        return Ok(invalidation_failed(res.status().as_u16()));
    }
    Ok(forwarded(res, CacheStatus::fwd(Fwd::Method)))
}

/// Tries an invalidation up to three times (50 and 100 ms apart): a
/// connection lost under the first try is usually replaced for the next.
async fn invalidate_retrying(c3: &c3_core::C3, tag: &str) -> Result<(), c3_core::Error> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match c3.invalidate_tag(tag).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_invalid_key() || attempt == 3 => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// The 503 that replaces a successful write's answer whose invalidation
/// could not be committed (see the module docs).
fn invalidation_failed<B>(origin_status: u16) -> Response<C3Body<B>> {
    let mut res = Response::new(C3Body::empty());
    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut().append(
        CACHE_STATUS,
        CacheStatus::fwd(Fwd::Method)
            .fwd_status(origin_status)
            .detail("invalidation-failed")
            .header_value(),
    );
    res.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    res
}
