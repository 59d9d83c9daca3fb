//! [`C3Cache`]: the [`Service`], which only routes each request to its flow.
//!
//! * GET and HEAD → an L1 hit is answered right here ([`hit`](super::hit));
//!   otherwise [`lookup`](super::lookup): answer from the cache, or
//!   revalidate, or go upstream on a miss;
//! * OPTIONS and TRACE (safe, never cached) → straight through;
//! * every other method — POST, PUT, PATCH, DELETE, and any method not known
//!   to be safe (RFC 9111 §4.4) → [`invalidate`](super::invalidate): forward,
//!   then invalidate what a successful write changed.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::C3Body;
use super::context::Shared;
use super::future::{BoxFuture, ResponseFuture};
use super::hit::from_l1;
use super::policy::Policy;
use super::trace::{hit_span, http_span, record_answer, traced};

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

impl<S, P> C3Cache<S, P> {
    /// Parents `span` on the caller's trace, if the layer was told to.
    fn continue_trace(&self, span: &tracing::Span, headers: &http::HeaderMap) {
        #[cfg(feature = "otel")]
        if self.shared.config.propagate_trace_context && !span.is_disabled() {
            super::trace::continue_trace(span, headers);
        }
        #[cfg(not(feature = "otel"))]
        let _ = (span, headers);
    }
}

impl<S: Clone, P> C3Cache<S, P> {
    /// The service that was polled ready, to handle this request (a clone
    /// stays for the next one), and what the flows share.
    fn take_inner(&mut self) -> (S, Arc<Shared<P>>) {
        let clone = self.inner.clone();
        (
            std::mem::replace(&mut self.inner, clone),
            Arc::clone(&self.shared),
        )
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
        let req = match *req.method() {
            Method::GET | Method::HEAD => {
                // An L1 hit is answered here and never reaches `inner`,
                // which stays ready for the next request.
                let (parts, body) = req.into_parts();
                if let Some(res) = from_l1(&self.shared, &parts) {
                    let span = hit_span(&parts.method, &parts.uri);
                    self.continue_trace(&span, &parts.headers);
                    record_answer(&span, &res);
                    return ResponseFuture::ready(res);
                }
                Request::from_parts(parts, body)
            }
            Method::OPTIONS | Method::TRACE => {
                let (mut inner, _) = self.take_inner();
                return ResponseFuture::bypass(inner.call(req));
            }
            _ => req,
        };
        let span = http_span(req.method(), req.uri());
        self.continue_trace(&span, req.headers());
        let (inner, shared) = self.take_inner();
        let f: BoxFuture<ResBody, S::Error> = match *req.method() {
            Method::GET | Method::HEAD => {
                Box::pin(traced(span, super::lookup::lookup(shared, inner, req)))
            }
            _ => Box::pin(traced(span, super::invalidate::forward(shared, inner, req))),
        };
        ResponseFuture::cache(f)
    }
}
