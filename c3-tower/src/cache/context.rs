//! [`Ctx`]: one cacheable request as every flow sees it, and the small
//! helpers the flows share.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::Bytes;
use c3_core::C3;
use http::header::{CACHE_CONTROL, PRAGMA};
use http::{HeaderMap, Request, Response, request};
use http_body::Body;
use tower_service::Service;

use super::Config;
use super::body::C3Body;
use super::cache_control::{self, C3_CACHE_CONTROL, Directives};
use super::collapse::InFlights;
use super::key::RequestUri;
use super::status::{CACHE_STATUS, CacheStatus};

/// What the services of one layer share.
pub(crate) struct Shared<P> {
    pub(crate) c3: C3,
    pub(crate) config: Config,
    pub(crate) policy: P,
    /// Requests being fetched upstream on this node, by storage key; later
    /// identical requests wait for them (see `miss`).
    pub(crate) collapse: Arc<InFlights>,
}

/// A GET or HEAD the cache may answer: its parts, its cache directives and
/// its normalised URI.
pub(crate) struct Ctx<P> {
    pub(crate) shared: Arc<Shared<P>>,
    pub(crate) parts: request::Parts,
    /// `Cache-Control` of the request (`Pragma: no-cache` folded in).
    pub(crate) dirs: Directives,
    pub(crate) uri: RequestUri,
}

impl<P> Ctx<P> {
    pub(crate) fn c3(&self) -> &c3_core::C3 {
        &self.shared.c3
    }

    pub(crate) fn head(&self) -> bool {
        self.parts.method == http::Method::HEAD
    }

    pub(crate) fn now_us(&self) -> u64 {
        c3_core::unix_micros(self.c3().now())
    }
}

/// A request's cache directives; `Pragma: no-cache` counts only without a
/// `Cache-Control` field (RFC 9111 §5.4).
pub(crate) fn request_directives(headers: &HeaderMap) -> Directives {
    let mut dirs = cache_control::parse(headers, &CACHE_CONTROL);
    if !dirs.present
        && headers
            .get(PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
    {
        dirs.no_cache = true;
    }
    dirs
}

/// Marks a response that came from upstream: c3's own override header is
/// never shown to the client, and `status` says why it went upstream.
pub(crate) fn forwarded<B>(res: Response<B>, status: CacheStatus) -> Response<C3Body<B>> {
    let mut res = res.map(C3Body::inner);
    res.headers_mut().remove(C3_CACHE_CONTROL);
    res.headers_mut()
        .append(CACHE_STATUS, status.header_value());
    res
}

/// The inner service, as the caching flows need it: clonable (a background
/// revalidation takes a clone) and sendable to a task.
pub(crate) trait Upstream<ReqBody, ResBody>:
    Service<Request<ReqBody>, Response = Response<ResBody>, Future: Send, Error: Send>
    + Clone
    + Send
    + 'static
{
}

impl<T, ReqBody, ResBody> Upstream<ReqBody, ResBody> for T where
    T: Service<Request<ReqBody>, Response = Response<ResBody>, Future: Send, Error: Send>
        + Clone
        + Send
        + 'static
{
}

/// A response body the cache can capture and replay.
pub(crate) trait CacheBody: Body<Data = Bytes, Error: Send> + Send + 'static {}

impl<T> CacheBody for T where T: Body<Data = Bytes, Error: Send> + Send + 'static {}

/// A request body: `Default` for the conditional requests the cache sends.
pub(crate) trait RequestBody: Default + Send + 'static {}

impl<T> RequestBody for T where T: Default + Send + 'static {}

/// Calls a service that may not have been polled ready yet.
pub(crate) async fn call_ready<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
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
