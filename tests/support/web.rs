//! HTTP test support: a programmable, counting origin service and helpers to
//! put the c3 cache layer in front of it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use c3::core::C3;
use c3::tower::C3CacheLayer;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

type Responder = dyn Fn(&Parts, usize) -> Response<Full<Bytes>> + Send + Sync;

/// An origin whose answer is a function of the request and of how many
/// requests it has seen; it records every request it gets.
#[derive(Clone)]
pub struct Origin {
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Parts>>>,
    respond: Arc<Responder>,
}

impl Origin {
    pub fn new(
        f: impl Fn(&Parts, usize) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Origin {
        Origin {
            hits: Arc::default(),
            seen: Arc::default(),
            respond: Arc::new(f),
        }
    }

    /// Requests that reached the origin.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The request headers of the n-th request (0-based).
    pub fn request(&self, n: usize) -> Parts {
        self.seen.lock().unwrap()[n].clone()
    }

    pub fn service(
        &self,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let o = self.clone();
        tower::service_fn(move |req: Request<Body>| {
            let (parts, _) = req.into_parts();
            let n = o.hits.fetch_add(1, Ordering::SeqCst);
            let res = (o.respond)(&parts, n);
            o.seen.lock().unwrap().push(parts);
            async move { Ok::<_, Infallible>(res) }
        })
    }
}

/// A response builder shortcut: status 200, the given headers and body.
pub fn resp(headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(200);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

pub fn get(url: &str) -> http::request::Builder {
    Request::get(url)
}

/// Sends `req` through `svc` and reads the whole body.
pub async fn send<S, B>(svc: &S, req: Request<Body>) -> (http::response::Parts, Bytes)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: axum::body::HttpBody,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// GETs `url` through `svc` with these request headers and reads the whole body.
pub async fn fetch<S, B>(
    svc: &S,
    url: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Bytes)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: axum::body::HttpBody,
    B::Error: std::fmt::Debug,
{
    let mut req = get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(svc, req.body(Body::empty()).unwrap()).await
}

pub fn cache_status(parts: &http::response::Parts) -> String {
    parts
        .headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The origin behind a cache layer on `c3`.
pub fn cached(
    c3: &C3,
    origin: &Origin,
) -> impl Service<Request<Body>, Response = Response<c3::tower::C3Body<Full<Bytes>>>, Error = Infallible>
+ Clone {
    tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()))
        .service(origin.service())
}

/// Waits until `c3` has committed `n` more writes than `before` (stores
/// happen in the background once a body has been read).
pub async fn stored(c3: &C3, before: u64, n: u64) {
    super::wait_until("the response is stored", super::DELIVERY, || async {
        c3.stats().writes >= before + n
    })
    .await;
}
