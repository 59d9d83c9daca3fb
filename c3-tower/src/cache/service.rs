//! [`C3Cache`]: the [`Service`], which only routes each request to its flow.
//!
//! * GET and HEAD → [`lookup`](super::lookup): answer from the cache, or
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
use super::policy::Policy;
use super::trace::{http_span, traced};

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
            super::trace::continue_trace(&span, req.headers());
        }
        let f: BoxFuture<ResBody, S::Error> = match *req.method() {
            Method::GET | Method::HEAD => {
                Box::pin(traced(span, super::lookup::lookup(shared, inner, req)))
            }
            Method::OPTIONS | Method::TRACE => {
                let mut inner = inner;
                return ResponseFuture::bypass(inner.call(req));
            }
            _ => Box::pin(traced(span, super::invalidate::forward(shared, inner, req))),
        };
        ResponseFuture::cache(f)
    }
}
