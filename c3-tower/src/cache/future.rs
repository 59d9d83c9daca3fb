//! [`ResponseFuture`] of [`C3Cache`](super::C3Cache).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Response};
use pin_project_lite::pin_project;

use super::body::C3Body;
use super::status::CACHE_STATUS;

pub(crate) type BoxFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<C3Body<B>>, E>> + Send + 'static>>;

pin_project! {
    /// The response future of [`C3Cache`](super::C3Cache).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Requests the cache never handles (e.g. OPTIONS): no allocation.
        Bypass { #[pin] future: F },
        // Lookups, misses, revalidation and invalidating writes.
        Cache { future: BoxFuture<B, E> },
        // An L1 hit, answered in `call`: no allocation.
        Ready { response: Option<Response<C3Body<B>>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn bypass(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Bypass { future },
        }
    }

    pub(crate) fn ready(response: Response<C3Body<B>>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn cache(future: BoxFuture<B, E>) -> Self {
        ResponseFuture {
            kind: Kind::Cache { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<C3Body<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Bypass { future } => {
                let res = ready!(future.poll(cx))?;
                let mut res = res.map(C3Body::inner);
                res.headers_mut()
                    .append(CACHE_STATUS, HeaderValue::from_static("c3; fwd=method"));
                Poll::Ready(Ok(res))
            }
            KindProj::Cache { future } => future.as_mut().poll(cx),
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("a ResponseFuture polled after it completed"))),
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
