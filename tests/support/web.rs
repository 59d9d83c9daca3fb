//! HTTP test support: the origin, request helpers and waits shared with
//! c3-tower's rule tests (one file, included), and a versioned origin for
//! race tests.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
pub use c3::core::C3;
pub use c3::tower::{C3Body, C3CacheLayer};
use http::{Request, Response};
use http_body_util::Full;
use tower::Service;

#[path = "../../c3-tower/tests/support/origin.rs"]
mod origin;
pub use origin::*;

/// The request body the shared helpers send.
pub type ReqBody = Body;

/// An origin holding one versioned document per path, for race tests: a GET
/// answers `"{path}@v{version}"` (and, for each name it varies on, `;name=value`
/// or `;name` when the request lacks it) with `ETag: "v{version}"`, a 304 to
/// a matching `If-None-Match`, and the configured `Cache-Control`; any other
/// method bumps the path's version (a write at the source) and answers 200
/// with the new version number. GETs can be
/// *held* after they read the version — the moment a concurrent write makes
/// their answer old.
#[derive(Clone)]
pub struct VersionedOrigin {
    state: Arc<Versioned>,
}

struct Versioned {
    versions: Mutex<std::collections::HashMap<String, u64>>,
    cache_control: String,
    vary: Vec<String>,
    surrogate_key: Option<String>,
    hold: tokio::sync::watch::Sender<bool>,
    held: AtomicUsize,
    gets: AtomicUsize,
    /// Every write: (path, the version it made, when).
    writes: Mutex<Vec<(String, u64, std::time::Instant)>>,
}

impl VersionedOrigin {
    pub fn new(cache_control: &str) -> VersionedOrigin {
        Self::with(cache_control, &[], None)
    }

    /// An origin whose responses vary on `vary` and carry `Surrogate-Key`.
    pub fn with(
        cache_control: &str,
        vary: &[&str],
        surrogate_key: Option<&str>,
    ) -> VersionedOrigin {
        VersionedOrigin {
            state: Arc::new(Versioned {
                versions: Mutex::default(),
                cache_control: cache_control.to_owned(),
                vary: vary.iter().map(|v| v.to_ascii_lowercase()).collect(),
                surrogate_key: surrogate_key.map(str::to_owned),
                hold: tokio::sync::watch::channel(false).0,
                held: AtomicUsize::new(0),
                gets: AtomicUsize::new(0),
                writes: Mutex::default(),
            }),
        }
    }

    /// GETs from now on wait, after reading the version, until `release`.
    pub fn hold(&self) {
        self.state.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.state.hold.send_replace(false);
    }

    /// Waits until `n` GETs are being held.
    pub async fn wait_held(&self, n: usize) {
        let s = Arc::clone(&self.state);
        super::wait_until("GETs held at the origin", super::DELIVERY, move || {
            let s = Arc::clone(&s);
            async move { s.held.load(Ordering::SeqCst) >= n }
        })
        .await;
    }

    /// GETs that reached the origin.
    pub fn gets(&self) -> usize {
        self.state.gets.load(Ordering::SeqCst)
    }

    /// A write at the source, bypassing any cache.
    pub fn bump(&self, path: &str) -> u64 {
        let mut v = self.state.versions.lock().unwrap();
        let e = v.entry(path.to_owned()).or_default();
        *e += 1;
        self.state
            .writes
            .lock()
            .unwrap()
            .push((path.to_owned(), *e, std::time::Instant::now()));
        *e
    }

    /// When the write that made `version` of `path` happened at the origin.
    pub fn written_at(&self, path: &str, version: u64) -> Option<std::time::Instant> {
        self.state
            .writes
            .lock()
            .unwrap()
            .iter()
            .find(|(p, v, _)| p == path && *v == version)
            .map(|(_, _, t)| *t)
    }

    pub fn version(&self, path: &str) -> u64 {
        self.state
            .versions
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// What a GET for `path` with `headers` answers at `version`.
    pub fn body_for(&self, path: &str, version: u64, headers: &http::HeaderMap) -> String {
        let mut body = format!("{path}@v{version}");
        for name in &self.state.vary {
            let values: Vec<&str> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.to_str().unwrap().trim())
                .collect();
            if values.is_empty() {
                body.push_str(&format!(";{name}"));
            } else {
                body.push_str(&format!(";{name}={}", values.join(",")));
            }
        }
        body
    }

    pub fn service(&self) -> impl OriginService {
        let o = self.clone();
        tower::service_fn(move |req: Request<Body>| {
            let o = o.clone();
            async move {
                let (parts, _) = req.into_parts();
                let path = parts.uri.path().to_owned();
                if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
                    // The body says which version this write made.
                    let v = o.bump(&path);
                    let res = Response::builder()
                        .status(200)
                        .body(Full::new(Bytes::from(v.to_string())))
                        .unwrap();
                    return Ok::<_, Infallible>(res);
                }
                o.state.gets.fetch_add(1, Ordering::SeqCst);
                // The read: what the answer will be, whatever happens next.
                let version = o.version(&path);
                let etag = format!("\"v{version}\"");
                let matches = parts
                    .headers
                    .get(http::header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == etag.as_bytes());
                let body = o.body_for(&path, version, &parts.headers);
                let mut rx = o.state.hold.subscribe();
                if *rx.borrow() {
                    o.state.held.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.wait_for(|h| !*h).await;
                    o.state.held.fetch_sub(1, Ordering::SeqCst);
                }
                let mut b = Response::builder()
                    .status(if matches { 304 } else { 200 })
                    .header("cache-control", &o.state.cache_control)
                    .header("etag", etag);
                if !o.state.vary.is_empty() {
                    b = b.header("vary", o.state.vary.join(", "));
                }
                if let Some(k) = &o.state.surrogate_key {
                    b = b.header("surrogate-key", k);
                }
                let body = if matches {
                    Bytes::new()
                } else {
                    Bytes::from(body)
                };
                Ok(b.body(Full::new(body)).unwrap())
            }
        })
    }

    /// This origin behind a cache layer on `c3`.
    pub fn cached(
        &self,
        c3: &C3,
    ) -> impl Service<
        Request<Body>,
        Response = Response<c3::tower::C3Body<Full<Bytes>>>,
        Error = Infallible,
    > + Clone
    + Send
    + 'static {
        tower::ServiceBuilder::new()
            .layer(C3CacheLayer::new(c3.clone()))
            .service(self.service())
    }
}
