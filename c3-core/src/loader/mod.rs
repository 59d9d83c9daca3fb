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
mod options;

use crate::flights::Answer;
pub use options::LoadOptions;

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::breaker::BreakerState;
use crate::cache::C3;
use crate::entry::State;
use crate::error::{Error, Repr, Result};
use crate::stats::Counters;
use crate::tier::{Outcome, Tier};

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
        self.check_key(key)?;
        let now = self.now_us();
        let mut stale: Option<Option<Arc<T>>> = None;
        if let Some(e) = self.coherency().peek(key) {
            let typed = self.l1_value::<T>(key, e.clone());
            if let Some(v) = typed.clone() {
                match e.state(now) {
                    State::Fresh => {
                        Counters::inc(&self.counters().l1_hits);
                        let outcome = if v.is_some() {
                            Outcome::Ok
                        } else {
                            Outcome::Miss
                        };
                        if self.refresh_due(e.fresh_until_us, now, opts) {
                            // The refresh goes to the source: an INFO
                            // operation, as all I/O is.
                            let op = crate::telemetry::op!(self, GetOrLoad, key, read);
                            op.span.in_scope(|| {
                                flight::join_or_start(self, key, opts, loader, None, true)
                            });
                            op.record(Some(Tier::L1), outcome);
                        } else if crate::telemetry::spans::listening(tracing::Level::DEBUG) {
                            // An answer from memory: a DEBUG span (see `op!`).
                            crate::telemetry::op!(self, GetOrLoad, key, l1)
                                .record(Some(Tier::L1), outcome);
                        }
                        return Ok(v);
                    }
                    // The fail-safe fallback, should the load fail.
                    State::Stale => stale = Some(v),
                    State::Dead => {}
                }
            }
        }
        Counters::inc(&self.counters().l1_misses);
        let mut op = crate::telemetry::op!(self, GetOrLoad, key, read);
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
        self.l2().breaker().state()
    }

    /// The state of the breaker for loader source `source` (`Closed` if it
    /// has never been used).
    #[must_use]
    pub fn loader_breaker_state(&self, source: &str) -> BreakerState {
        self.loader_breakers().state(source)
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
