//! HTTP test support shared by c3-tower's rule tests and the workspace's
//! cross-crate tests (which include this file): a programmable, counting
//! origin service, request helpers, and condition waits with deadlines.
//! The including module provides `C3`, `C3Body`, `C3CacheLayer` and the
//! request body type `ReqBody`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

use super::{C3, C3Body, C3CacheLayer, ReqBody};

/// Standard deadline for "a notification lands" or "a store happens".
pub const DELIVERY: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds; fails the test after `within`, also when a
/// check itself hangs.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        // A condition that hangs must not outlive the deadline either.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, cond()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => panic!("timed out after {within:?} waiting for: {what} (the check hung)"),
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

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

    pub fn service(&self) -> impl OriginService {
        let o = self.clone();
        tower::service_fn(move |req: Request<ReqBody>| {
            let (parts, _) = req.into_parts();
            let n = o.hits.fetch_add(1, Ordering::SeqCst);
            let res = (o.respond)(&parts, n);
            o.seen.lock().unwrap().push(parts);
            async move { Ok::<_, Infallible>(res) }
        })
    }
}

/// What a test origin is: a cloneable service answering whole bodies.
pub trait OriginService:
    Service<Request<ReqBody>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> OriginService for S where
    S: Service<
            Request<ReqBody>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
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
pub async fn send<S, B>(svc: &S, req: Request<ReqBody>) -> (http::response::Parts, Bytes)
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
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
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut req = get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(svc, req.body(ReqBody::default()).unwrap()).await
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
) -> impl Service<Request<ReqBody>, Response = Response<C3Body<Full<Bytes>>>, Error = Infallible> + Clone
{
    tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()))
        .service(origin.service())
}

/// Waits until `c3` has committed `n` more writes than `before` (stores
/// happen in the background once a body has been read).
pub async fn stored(c3: &C3, before: u64, n: u64) {
    wait_until("the response is stored", DELIVERY, || async {
        c3.stats().writes >= before + n
    })
    .await;
}
