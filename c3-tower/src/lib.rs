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
//!   `layer` ([`C3CacheLayer`]), `service` ([`C3Cache`] and the request
//!   flows), `future` ([`ResponseFuture`]), `body` ([`C3Body`]), and the
//!   policy pieces: `policy`, `key` (cache keys), `cache_control` (directive
//!   parsing), `freshness` (storability, lifetime, age), `stored` (the stored
//!   form of a response).

pub mod cache;

pub use cache::{
    C3_INVALIDATE_TAG, C3Body, C3Cache, C3CacheLayer, DefaultPolicy, Policy, ResponseFuture,
    invalidate_tag, invalidate_uri,
};
