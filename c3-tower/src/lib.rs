//! # c3-tower: a cluster-coherent HTTP cache for tower services
//!
//! [`C3CacheLayer`] is a [`tower_layer::Layer`] implementing an RFC 9111
//! shared cache (with RFC 5861 stale extensions, RFC 9211 `Cache-Status` and
//! RFC 9213 `CDN-Cache-Control`) on top of a [`c3_core::C3`] cache: one
//! replica's stored response serves every replica, and writes invalidate it
//! everywhere. See the [`cache`] module for the rules and an example.
//!
//! ## Layout
//!
//! * `cache` — the middleware, one file per piece as in tower-http:
//!   `layer` ([`C3CacheLayer`]), `service` ([`C3Cache`]: only the `Service`
//!   impl, routing each request to its flow), `future` ([`ResponseFuture`]),
//!   `body` ([`C3Body`]);
//! * the flows, each in its file: `lookup` (GET/HEAD: find and decide),
//!   `miss` (collapse, forward, fenced store), `revalidate` (conditional
//!   requests, 304 refreshes, background revalidation), `invalidate` (unsafe
//!   methods), `serve` (answering from a stored response: 304, ranges);
//!   `context` holds the request context they share;
//! * the policy pieces: `reuse` (the one decision whether a stored response
//!   may answer a request), `policy`, `key` (cache keys and Vary
//!   selections), `cache_control` (directive parsing), `structured` (RFC 8941
//!   dictionaries), `freshness` (storability, lifetime, age), `stored` (the
//!   stored form of a response), `status` (`Cache-Status`), `trace` (the
//!   `c3.http` span).

pub mod cache;

pub use cache::{
    C3_INVALIDATE_TAG, C3Body, C3Cache, C3CacheLayer, DefaultPolicy, Policy, ResponseFuture,
    invalidate_tag, invalidate_uri,
};
