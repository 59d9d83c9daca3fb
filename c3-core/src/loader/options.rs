//! [`LoadOptions`]: what one `get_or_load` call may do — its TTLs, its
//! fail-safe, its timeouts, and whether it takes the cluster's load lock.

use std::sync::Arc;
use std::time::Duration;

/// Per-call settings for [`C3::get_or_load`](crate::C3::get_or_load). Start from [`LoadOptions::new`].
///
/// | setting | default |
/// |---|---|
/// | [`ttl`](Self::ttl) | the cache's default TTL |
/// | [`fail_safe`](Self::fail_safe) | off: no stale answers |
/// | [`soft_timeout`](Self::soft_timeout) | off |
/// | [`hard_timeout`](Self::hard_timeout) | 30 s |
/// | [`negative_ttl`](Self::negative_ttl) | off: "not found" is not cached |
/// | [`eager_refresh`](Self::eager_refresh) | off |
/// | [`cluster_lock`](Self::cluster_lock) | off: each node loads on its own miss |
/// | [`source`](Self::source) | `"default"` (selects the loader's circuit breaker) |
#[derive(Debug, Clone)]
#[must_use]
pub struct LoadOptions {
    pub(crate) ttl: Option<Option<Duration>>,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) cluster_wait: Option<Duration>,
    pub(crate) source: Arc<str>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ttl: None,
            fail_safe: None,
            soft_timeout: None,
            hard_timeout: Duration::from_secs(30),
            negative_ttl: None,
            eager_refresh: None,
            cluster_wait: None,
            source: Arc::from("default"),
        }
    }
}

impl LoadOptions {
    /// Defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a loaded value is fresh (`None`: until deleted).
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keep values this long past their TTL, and serve them when the loader
    /// fails, times out or its breaker is open. Stale values are never served
    /// after an invalidation: those entries are gone.
    pub fn fail_safe(mut self, window: Duration) -> Self {
        self.fail_safe = Some(window);
        self
    }

    /// If a stale value exists and the loader has not answered after this
    /// long, answer with the stale value; the load goes on in the background
    /// and updates the cache when it finishes.
    pub fn soft_timeout(mut self, after: Duration) -> Self {
        self.soft_timeout = Some(after);
        self
    }

    /// The loader is abandoned after this long (counted as a failure).
    pub fn hard_timeout(mut self, after: Duration) -> Self {
        self.hard_timeout = after;
        self
    }

    /// Cache "not found" (`Ok(None)` from the loader) for this long, so
    /// repeated lookups of a missing key do not reach the source.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// A hit after `fraction` (0 < f < 1) of the TTL has elapsed starts one
    /// background refresh, so a hot key is reloaded before it expires.
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.eager_refresh = Some(fraction.clamp(0.01, 0.99));
        self
    }

    /// Cross-node stampede protection: when several nodes miss at once, one
    /// loads while the others wait up to `wait` for its L2 write (a PostgreSQL
    /// advisory lock on the key). A waiter that runs out of time loads itself.
    pub fn cluster_lock(mut self, wait: Duration) -> Self {
        self.cluster_wait = Some(wait);
        self
    }

    /// Names the source of truth; each name has its own circuit breaker.
    pub fn source(mut self, name: &str) -> Self {
        self.source = Arc::from(name);
        self
    }
}
