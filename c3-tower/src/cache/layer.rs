//! [`C3CacheLayer`]: builds [`C3Cache`] services.

use std::sync::Arc;
use std::time::Duration;

use c3_core::C3;
use tower_layer::Layer;

use super::Config;
use super::context::Shared;
use super::policy::{DefaultPolicy, Policy};
use super::service::C3Cache;

/// A [`Layer`] that puts a cluster-coherent HTTP cache in front of a service.
///
/// Clones share one collapse table, so concurrent misses of the same URI on
/// this node go upstream once.
#[derive(Clone)]
#[must_use]
pub struct C3CacheLayer<P = DefaultPolicy> {
    shared: Arc<Shared<P>>,
}

impl std::fmt::Debug for C3CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("C3CacheLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl C3CacheLayer<DefaultPolicy> {
    /// A layer caching in `c3` with default settings.
    pub fn new(c3: C3) -> Self {
        C3CacheLayer {
            shared: Arc::new(Shared {
                c3,
                config: Config::default(),
                policy: DefaultPolicy,
                collapse: Arc::default(),
            }),
        }
    }
}

impl<P: Policy> C3CacheLayer<P> {
    fn map_config(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.shared.config.clone();
        f(&mut config);
        C3CacheLayer {
            shared: Arc::new(Shared {
                c3: self.shared.c3.clone(),
                config,
                policy: self.shared.policy.clone(),
                collapse: Arc::default(),
            }),
        }
    }

    /// Replaces the request policy (see [`Policy`]).
    pub fn policy<Q: Policy>(self, policy: Q) -> C3CacheLayer<Q> {
        C3CacheLayer {
            shared: Arc::new(Shared {
                c3: self.shared.c3.clone(),
                config: self.shared.config.clone(),
                policy,
                collapse: Arc::default(),
            }),
        }
    }

    /// Bodies larger than this stream through without being stored or
    /// buffered (default 512 KiB; keep it under the cache's value limit).
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.map_config(|c| c.max_body_bytes = bytes)
    }

    /// Allow heuristic freshness (10% of the time since `Last-Modified`, at
    /// most a day) for responses without explicit freshness. Off by default.
    pub fn heuristic_freshness(self, on: bool) -> Self {
        self.map_config(|c| c.heuristic_freshness = on)
    }

    /// Store responses carrying `Set-Cookie` — without the `Set-Cookie`
    /// header, which only the original requester receives. Off by default.
    pub fn store_set_cookie(self, on: bool) -> Self {
        self.map_config(|c| c.store_set_cookie = on)
    }

    /// The scheme for requests whose URI has none (server side); default
    /// `http`. Forwarded headers are never trusted for the key.
    pub fn default_scheme(self, scheme: &str) -> Self {
        let scheme = scheme.to_ascii_lowercase();
        self.map_config(|c| c.default_scheme = scheme)
    }

    /// How long a stale response with validators is kept for conditional
    /// revalidation (default 5 minutes).
    pub fn revalidation_window(self, window: Duration) -> Self {
        self.map_config(|c| c.revalidation_window = window)
    }

    /// Keys every request as addressed to `authority` (e.g. `api.example.com`),
    /// ignoring its `Host`/URI authority. For an application served under one
    /// name by several replicas that are reached at different addresses (each
    /// replica's own `host:port`), so they share entries and invalidations.
    /// Never use it for an application that serves different content by host.
    pub fn fixed_authority(self, authority: &str) -> Self {
        let authority = authority.to_ascii_lowercase();
        self.map_config(|c| c.fixed_authority = Some(authority))
    }

    /// How long a request waits for an identical in-flight request before
    /// going upstream itself (default 10 s).
    pub fn collapse_timeout(self, timeout: Duration) -> Self {
        self.map_config(|c| c.collapse_timeout = timeout)
    }

    /// Makes each request's `c3.http` span a child of the trace named by its
    /// `traceparent`/`tracestate` headers, read with the global text-map
    /// propagator (which `c3_core::otlp::install` sets to W3C trace
    /// context). Off by default: a public endpoint may not want callers to
    /// choose its trace ids. Needs `tracing-opentelemetry` in the
    /// application's subscriber to have an effect.
    #[cfg(feature = "otel")]
    pub fn propagate_trace_context(self, on: bool) -> Self {
        self.map_config(|c| c.propagate_trace_context = on)
    }

    /// The cache this layer uses.
    #[must_use]
    pub fn c3(&self) -> &C3 {
        &self.shared.c3
    }
}

impl<S, P: Policy> Layer<S> for C3CacheLayer<P> {
    type Service = C3Cache<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        C3Cache::new(inner, Arc::clone(&self.shared))
    }
}
