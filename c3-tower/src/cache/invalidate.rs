//! Unsafe methods (RFC 9111 §4.4): forward, and after a non-error response
//! invalidate the target URI, the same-origin `Location` and
//! `Content-Location`, and the tags the handler named in
//! [`C3_INVALIDATE_TAG`] — on every node, before the response is returned,
//! so the client's next read sees its write wherever it lands.
//!
//! Every method not known to be safe comes here: POST, PUT, PATCH, DELETE,
//! and extension methods such as `M-SEARCH` or `PURGE`.

use std::sync::Arc;

use http::header::{CONTENT_LOCATION, HeaderName, LOCATION};
use http::{Request, Response};
use tower_service::Service;

use super::body::C3Body;
use super::context::forwarded;
use super::key::{RequestUri, user_tag};
use super::service::Shared;
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
    let tags: Vec<String> = res
        .headers_mut()
        .remove(C3_INVALIDATE_TAG)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .map(|v| v.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    // "Non-error": 2xx and 3xx.
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
    Ok(forwarded(res, CacheStatus::fwd(Fwd::Method)))
}
