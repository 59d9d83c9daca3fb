//! Cache-aside loading: [`C3::get_or_load`] and the machinery that protects
//! the source of truth behind it.
//!
//! The path of one call: **L1** → (one flight per key per node) → **L2** →
//! optional **cross-node lock** → **loader** → write L2 (with its notification)
//! → fill L1. Around the loader sit a circuit breaker per source, hard and soft
//! timeouts, fail-safe stale answers, negative caching and eager refresh.
//!
//! # Why a flight runs in its own task
//!
//! The loader runs in a spawned task that publishes its outcome on a `watch`
//! channel. Callers only wait on that channel, so a caller that is cancelled
//! does not cancel the load for the others, a soft timeout can answer with a
//! stale value while the load goes on to refresh the cache, and an eager
//! refresh can run with nobody waiting at all.

mod flight;
use crate::flights::Answer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::breaker::BreakerState;
use crate::cache::C3;
use crate::entry::State;
use crate::error::{Error, Repr, Result};
use crate::stats::Counters;
use crate::tier::{Outcome, Tier};

/// Per-call settings for [`C3::get_or_load`]. Start from [`LoadOptions::new`].
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

/// A reusable source of values, for adapters (the sqlx repositories, the HTTP
/// layer) that load many keys the same way. Closures work directly with
/// [`C3::get_or_load`].
pub trait Loader<T>: Send + Sync + 'static {
    /// The source's error.
    type Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static;

    /// Loads `key`: `Ok(None)` means the source has no such value.
    fn load(&self, key: &str) -> impl Future<Output = Result<Option<T>, Self::Error>> + Send;
}

impl C3 {
    /// Reads `key` through the cache, calling `loader` on a miss.
    ///
    /// L1 → L2 → `loader` → L2 write (notifying other nodes) → L1. `loader`
    /// returns `Ok(Some(v))`, or `Ok(None)` when the source has no such value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), c3_core::Error> {
    /// use std::time::Duration;
    /// use c3_core::{C3, LoadOptions, MemoryServer};
    ///
    /// let cache = C3::builder().memory(&MemoryServer::new()).build().await?;
    /// let opts = LoadOptions::new()
    ///     .ttl(Some(Duration::from_secs(60)))
    ///     .fail_safe(Duration::from_secs(3600))      // serve stale for up to 1 h if the source fails
    ///     .soft_timeout(Duration::from_millis(100)); // ...or is slow
    /// let name = cache
    ///     .get_or_load("user:7:name", &opts, || async {
    ///         Ok::<_, std::io::Error>(Some("Grace".to_string())) // e.g. a database query
    ///     })
    ///     .await?;
    /// assert_eq!(name.as_deref().map(String::as_str), Some("Grace"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Concurrent calls on the same key
    ///
    /// On one node, concurrent misses share one flight: the loader runs once,
    /// and every waiter gets its value or its error (errors are not cached).
    /// With [`LoadOptions::cluster_lock`], nodes also wait for each other.
    ///
    /// # Errors
    ///
    /// An invalid key; [`ErrorKind::Loader`](crate::ErrorKind::Loader) when the
    /// loader failed or timed out, or [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen)
    /// when its breaker is open — in both cases only if no value within the
    /// fail-safe window exists. L2 failures are not errors here: the loader
    /// answers instead.
    ///
    /// # Cancellation
    ///
    /// The load runs in a background task: dropping this future does not stop
    /// it, and its result still fills the cache.
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<Option<Arc<T>>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut op = crate::telemetry::op!(self, "c3.get_or_load", GetOrLoad, key, read);
        self.check_key(key)?;
        let now = self.now_us();
        let mut stale: Option<Option<Arc<T>>> = None;
        if let Some(e) = self.coherency().peek(key) {
            let typed = self.l1_value::<T>(key, &e);
            if let Some(v) = typed.clone() {
                match e.state(now) {
                    State::Fresh => {
                        Counters::inc(&self.counters().l1_hits);
                        if self.refresh_due(e.fresh_until_us, now, opts) {
                            op.span.in_scope(|| {
                                flight::join_or_start(self, key, opts, loader, None, true)
                            });
                        }
                        op.record(
                            Some(Tier::L1),
                            if v.is_some() {
                                Outcome::Ok
                            } else {
                                Outcome::Miss
                            },
                        );
                        return Ok(v);
                    }
                    // The fail-safe fallback, should the load fail.
                    State::Stale => stale = Some(v),
                    State::Dead => {}
                }
            }
        }
        Counters::inc(&self.counters().l1_misses);
        op.start_timer();
        let mut rx = op
            .span
            .in_scope(|| flight::join_or_start(self, key, opts, loader, stale, false));
        let waited =
            tracing::Instrument::instrument(rx.wait_for(Option::is_some), op.span.clone()).await;
        let outcome = match waited {
            Ok(o) => o.clone().expect("waited for Some"),
            Err(_) => Answer::Failed(Arc::new(Error::loader(
                "the load task stopped unexpectedly",
            ))),
        };
        match outcome {
            Answer::Value(v, tier) => {
                op.record(Some(tier), Outcome::Ok);
                Ok(Some(v))
            }
            Answer::Absent => {
                op.record(None, Outcome::Miss);
                Ok(None)
            }
            Answer::Failed(e) => {
                op.record(None, Outcome::Error);
                Err(Repr::Shared(e).into())
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) with a reusable [`Loader`].
    ///
    /// # Errors
    ///
    /// As for [`get_or_load`](Self::get_or_load).
    pub async fn get_or_load_with<T, L>(
        &self,
        key: &str,
        opts: &LoadOptions,
        loader: Arc<L>,
    ) -> Result<Option<Arc<T>>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: Loader<T>,
    {
        let owned = key.to_owned();
        self.get_or_load(key, opts, move || async move { loader.load(&owned).await })
            .await
    }

    /// The state of the circuit breaker guarding L2.
    #[must_use]
    pub fn l2_breaker_state(&self) -> BreakerState {
        self.l2_breaker().state()
    }

    /// The state of the breaker for loader source `source` (`Closed` if it
    /// has never been used).
    #[must_use]
    pub fn loader_breaker_state(&self, source: &str) -> BreakerState {
        self.flights().breaker_state(source)
    }

    fn refresh_due(&self, fresh_until_us: u64, now_us: u64, opts: &LoadOptions) -> bool {
        let (Some(f), Some(Some(ttl))) =
            (opts.eager_refresh, opts.ttl.or(Some(self.default_ttl())))
        else {
            return false;
        };
        if fresh_until_us == u64::MAX {
            return false;
        }
        let remaining = ttl.mul_f64(1.0 - f).as_micros() as u64;
        now_us >= fresh_until_us.saturating_sub(remaining)
    }
}
