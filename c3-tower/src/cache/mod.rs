//! A cluster-coherent, RFC 9111 *shared* HTTP cache as a tower middleware.
//!
//! [`C3CacheLayer`] wraps any service of `http::Request<B>` →
//! `http::Response<B>`: an axum router or handler (server side), or a hyper /
//! reqwest-style client (client side). Responses are stored in a
//! [`C3`](c3_core::C3) cache, so a response cached by one replica is served by
//! every replica (L2), and a write on any replica invalidates it everywhere.
//!
//! # What is stored, and for how long
//!
//! * Only `GET` responses (a `HEAD` is answered from a stored `GET`), with a
//!   status cacheable by default or explicit freshness; never `206`.
//! * Freshness from `s-maxage`, `max-age`, or `Expires` − `Date`, taking `Age`
//!   and the request's round-trip time into account (RFC 9111 §4.2). A
//!   `C3-Cache-Control` header (removed before the response leaves) or
//!   `CDN-Cache-Control` (RFC 9213) replaces `Cache-Control` for the cache;
//!   these targeted fields are RFC 8941 dictionaries, and one that does not
//!   parse as one is ignored entirely. Of an `Age` list, the first member
//!   counts (RFC 9111 §5.1).
//!   Heuristic freshness only when [`C3CacheLayer::heuristic_freshness`] is on.
//! * Never stored: `no-store` (request or response), `private`, `Vary: *`,
//!   `Set-Cookie` (unless [`C3CacheLayer::store_set_cookie`], which stores the
//!   response *without* the cookie), responses to requests carrying
//!   `Authorization` unless they are `public`, `s-maxage` or
//!   `must-revalidate` (RFC 9111 §3.5) — and a stored response is served to a
//!   request with `Authorization` only under the same condition.
//! * `Vary`: each variant is keyed by the values of the nominated request
//!   headers (an absent header differs from an empty one); no other request
//!   header ever affects the key. A stored variant records the selection it
//!   was stored for, and answers only requests with the same one.
//! * **What is stored is a fill, never a plain write.** The fence is taken
//!   ([`C3::begin_fill`](c3_core::C3::begin_fill)) when the request goes
//!   upstream; the response (and a Vary marker, and a 304's refresh) is
//!   stored only if nothing invalidated the URI, the entry or any of its
//!   surrogate keys since — on any replica, heard of here or not, and also
//!   if nothing was stored for the URI at the time. So a GET that reached the
//!   origin before another replica's PUT never puts its older body back.
//! * `206` responses from the origin pass through unstored (RFC 9111 §3.3
//!   allows storing incomplete responses; c3 does not, so it never has to
//!   combine them, §3.4).
//!
//! # Serving
//!
//! * Fresh hits carry `Age` and `Cache-Status: c3; hit; ttl=N; detail=l1|l2`.
//!   An L1 hit is answered inside `call` — no future to box, nothing
//!   allocated but the response — and its `c3.http` span is at DEBUG (an
//!   exported span would cost several times the hit; `c3.hits` counts it).
//! * Every answer from a stored response — an L1 or L2 hit, a request that
//!   waited for another's miss, a 304-refreshed response — is first allowed
//!   by one decision (`reuse`): the Vary selection, credentials, freshness and
//!   the request's own `max-age`/`min-fresh`/`max-stale`/`no-cache`.
//! * `If-None-Match` / `If-Modified-Since` matching a stored response get `304`.
//! * `Range` requests are answered from a stored complete `200`: one byte
//!   range as `206` with `Content-Range`, `416` when no byte of it exists;
//!   several ranges, other units or an `If-Range` that does not match get the
//!   whole `200` (RFC 9110 §14; multipart answers are optional).
//! * Stale entries are revalidated upstream with their validators; a `304`
//!   updates the stored headers (RFC 9111 §4.3.4). `no-cache` always
//!   revalidates; `must-revalidate`/`proxy-revalidate`/`s-maxage` never serve stale.
//! * `stale-while-revalidate` serves the stale copy and revalidates in the
//!   background (once per node); `stale-if-error` serves it when upstream
//!   answers 5xx or fails (RFC 5861).
//! * Concurrent misses for one key on one node send one request upstream; the
//!   others are answered from its stored result (`detail=collapsed`) if it
//!   may answer them, and go upstream on their own otherwise.
//! * Interim `1xx` responses are not forwarded: hyper's server sends
//!   `100 Continue` itself and gives a service no way to send others.
//! * A miss is streamed to the client as it arrives while being captured for
//!   the cache; bodies over [`C3CacheLayer::max_body_bytes`] stream through
//!   uncached, never buffered whole.
//!
//! # Invalidation
//!
//! A non-error (2xx/3xx) response to any method not known to be safe —
//! `POST`, `PUT`, `PATCH`, `DELETE`, and extension methods such as
//! `M-SEARCH` or `PURGE` — invalidates its target URI and the same-origin
//! URIs in `Location`/`Content-Location` on every node (RFC 9111 §4.4);
//! `OPTIONS` and `TRACE` pass through. Responses may tag themselves with `Surrogate-Key`
//! (space-separated) or `Cache-Tag` (comma-separated); [`invalidate_tag`]
//! removes every response with a tag, cluster-wide; [`invalidate_uri`] does so
//! for one URI and all its variants. A handler answering a successful write
//! can also name tags in a `C3-Invalidate-Tag` response header: the layer
//! invalidates them before the response leaves, and strips the header.
//!
//! # Examples
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let c3 = c3_core::C3::builder().memory(&c3_core::MemoryServer::new()).build().await?;
//! let svc = ServiceBuilder::new()
//!     .layer(c3_tower::C3CacheLayer::new(c3))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(
//!             Response::builder()
//!                 .header("cache-control", "max-age=60")
//!                 .body(Full::new(Bytes::from("hello")))
//!                 .unwrap(),
//!         )
//!     }));
//!
//! let req = || Request::get("http://example.test/greeting").body(Full::default()).unwrap();
//! let first = svc.clone().oneshot(req()).await?;
//! assert!(first.headers()["cache-status"].to_str()?.contains("fwd=uri-miss"));
//! first.into_body().collect().await?; // read to the end: now it is stored
//! # tokio::task::yield_now().await; // let the store task run
//! # for _ in 0..100 { if svc.clone().oneshot(req()).await?.headers()["cache-status"].to_str()?.contains("hit") { break } tokio::task::yield_now().await; }
//! let second = svc.oneshot(req()).await?;
//! assert!(second.headers()["cache-status"].to_str()?.starts_with("c3; hit"));
//! # Ok(()) }
//! ```

mod body;
mod cache_control;
mod collapse;
mod context;
mod find;
mod freshness;
mod future;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod hit;
mod invalidate;
mod key;
mod layer;
mod lookup;
mod miss;
mod policy;
mod reuse;
mod revalidate;
mod serve;
mod service;
mod status;
mod store;
mod stored;
mod structured;
mod trace;

use std::time::Duration;

pub use body::C3Body;
pub use cache_control::{C3_CACHE_CONTROL, CDN_CACHE_CONTROL};
pub use future::ResponseFuture;
pub use invalidate::C3_INVALIDATE_TAG;
pub use layer::C3CacheLayer;
pub use policy::{DefaultPolicy, Policy};
pub use service::C3Cache;

/// Settings shared by a layer's services.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_body_bytes: usize,
    pub(crate) heuristic_freshness: bool,
    pub(crate) store_set_cookie: bool,
    pub(crate) default_scheme: String,
    pub(crate) revalidation_window: Duration,
    pub(crate) collapse_timeout: Duration,
    pub(crate) fixed_authority: Option<String>,
    /// Read only with the `otel` feature (`propagate_trace_context`).
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) propagate_trace_context: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 512 * 1024,
            heuristic_freshness: false,
            store_set_cookie: false,
            default_scheme: "http".into(),
            revalidation_window: Duration::from_secs(300),
            collapse_timeout: Duration::from_secs(10),
            fixed_authority: None,
            propagate_trace_context: false,
        }
    }
}

/// Removes every stored response tagged `tag` (by `Surrogate-Key` or
/// `Cache-Tag`), on every node. Returns how many entries went.
///
/// # Errors
///
/// An invalid tag, or L2 unavailable.
pub async fn invalidate_tag(c3: &c3_core::C3, tag: &str) -> Result<usize, c3_core::Error> {
    c3.invalidate_tag(&key::user_tag(tag)).await
}

/// Removes every stored response (all variants) for the absolute `uri`, on
/// every node. Returns how many entries went.
///
/// # Errors
///
/// [`ErrorKind::InvalidKey`](c3_core::ErrorKind::InvalidKey) if `uri` is not
/// absolute; L2 unavailable.
pub async fn invalidate_uri(c3: &c3_core::C3, uri: &http::Uri) -> Result<usize, c3_core::Error> {
    let (parts, ()) = http::Request::get(uri.clone())
        .body(())
        .map_err(|_| c3_core::Error::loader("invalid URI"))?
        .into_parts();
    match key::RequestUri::from_request(&parts, "http") {
        Some(u) if uri.scheme().is_some() => c3.invalidate_tag(&u.uri_tag()).await,
        // An empty tag is rejected as an invalid key: the same typed error.
        _ => c3.invalidate_tag("").await,
    }
}
