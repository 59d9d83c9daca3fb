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

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::backend::{Fence, WriteItem};
use crate::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use crate::cache::C3;
use crate::clock::to_micros;
use crate::coherency::FillToken;
use crate::entry::{ENCODING_ABSENT, State, decode_row};
use crate::error::{Error, Repr, Result};
use crate::fill::Fill;
use crate::stats::Counters;
use crate::tier::Tier;

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

/// What a flight publishes to its waiters.
enum Outcome<T> {
    Value(Arc<T>, Tier),
    Absent,
    Failed(Arc<Error>),
}

impl<T> Clone for Outcome<T> {
    fn clone(&self) -> Self {
        match self {
            Outcome::Value(v, t) => Outcome::Value(Arc::clone(v), *t),
            Outcome::Absent => Outcome::Absent,
            Outcome::Failed(e) => Outcome::Failed(Arc::clone(e)),
        }
    }
}

type Slot<T> = watch::Receiver<Option<Outcome<T>>>;

/// In-flight loads of this node, by key. Values are `Slot<T>` for the
/// caller's `T`, type-erased.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Registered>>,
    pub(crate) loader_breakers: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
}

/// A flight in the map: its slot (type-erased) and the fill token taken
/// when it started, which says whether it may still be joined.
type Registered = (Arc<dyn Any + Send + Sync>, FillToken);

/// Removes a finished flight from the map, also if its task panicked.
struct FlightGuard {
    c3: C3,
    key: String,
    marker: Arc<dyn Any + Send + Sync>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self
            .c3
            .flights()
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|(m, _)| Arc::ptr_eq(m, &self.marker))
        {
            map.remove(&self.key);
        }
    }
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
                            op.span
                                .in_scope(|| self.start_flight(key, opts, loader, None, true));
                        }
                        op.record(Some(Tier::L1), if v.is_some() { "ok" } else { "miss" });
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
            .in_scope(|| self.start_flight(key, opts, loader, stale, false));
        let waited =
            tracing::Instrument::instrument(rx.wait_for(Option::is_some), op.span.clone()).await;
        let outcome = match waited {
            Ok(o) => o.clone().expect("waited for Some"),
            Err(_) => Outcome::Failed(Arc::new(Error::loader(
                "the load task stopped unexpectedly",
            ))),
        };
        match outcome {
            Outcome::Value(v, tier) => {
                op.record(Some(tier), "ok");
                Ok(Some(v))
            }
            Outcome::Absent => {
                op.record(None, "miss");
                Ok(None)
            }
            Outcome::Failed(e) => {
                op.record(None, "error");
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
        self.flights()
            .loader_breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .map_or(BreakerState::Closed, |b| b.state())
    }

    fn loader_breaker(&self, source: &Arc<str>) -> Arc<Breaker> {
        let config: BreakerConfig = self.loader_breaker_config();
        Arc::clone(
            self.flights()
                .loader_breakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(Arc::clone(source))
                .or_insert_with(|| Arc::new(Breaker::new(config))),
        )
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

    /// Joins the flight for `key` or starts one. `refresh` skips L1/L2 and
    /// reloads from the source.
    fn start_flight<T, F, Fut, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        loader: F,
        stale: Option<Option<Arc<T>>>,
        refresh: bool,
    ) -> Slot<T>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut map = self.flights().map.lock().unwrap_or_else(|e| e.into_inner());
        // A flight that started before this node applied an invalidation of
        // the key, completed a write to it or read a newer version of it may
        // answer with the value from before: a caller arriving now must not
        // join it, or it could read older data than it (or another task of
        // this node) has already seen. It starts a flight of its own, which
        // later callers join instead. This holds while L1 is off too.
        let joinable = |token: &FillToken| self.coherency().join_valid(*token);
        let existing_joinable = map.get(key).map(|(_, token)| joinable(token));
        if existing_joinable == Some(true)
            && let Some((existing, _)) = map.get(key)
            && let Some(rx) = existing.downcast_ref::<Slot<T>>()
        {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        // A live flight of another type for this key keeps its slot; this one
        // runs unregistered rather than wait on a value it could not use.
        let marker: Arc<dyn Any + Send + Sync> = Arc::new(rx.clone());
        if existing_joinable != Some(true) {
            let token = self.coherency().join_token(key);
            map.insert(key.to_owned(), (Arc::clone(&marker), token));
        }
        drop(map);
        let guard = FlightGuard {
            c3: self.clone(),
            key: key.to_owned(),
            marker,
        };
        let c3 = self.clone();
        let key = key.to_owned();
        let opts = opts.clone();
        // The flight's L2 and source spans belong to the call that started it.
        let flight = async move {
            let _guard = guard;
            c3.fly(&key, &opts, loader, stale, refresh, &tx).await;
        };
        tokio::spawn(tracing::Instrument::in_current_span(flight));
        rx
    }

    /// The body of a flight. Publishes at least once on `tx`.
    async fn fly<T, F, Fut, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        loader: F,
        mut stale: Option<Option<Arc<T>>>,
        refresh: bool,
        tx: &watch::Sender<Option<Outcome<T>>>,
    ) where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let publish = |o: Outcome<T>| {
            tx.send_replace(Some(o));
        };
        // Taken before anything is read, so a value loaded while the key was
        // invalidated is neither written to L2 nor kept in L1.
        let token = self.coherency().begin_fill(key);
        let mut fence = None;

        if refresh {
            // No answer is needed from L2, only the fence for the write-back.
            if let Ok((_, f)) = self
                .l2("get", self.backend().get_for_load(key, self.now()))
                .await
            {
                fence = Some(f);
            }
        } else {
            match self.read_l2::<T>(key, token, &mut fence).await {
                L2Read::Fresh(v) => {
                    return publish(v.map_or(Outcome::Absent, |v| Outcome::Value(v, Tier::L2)));
                }
                L2Read::Stale(v) => {
                    if stale.is_none() {
                        stale = Some(v);
                    }
                }
                L2Read::Nothing => {}
            }
        }

        let mut lock = None;
        if let (Some(wait), false) = (opts.cluster_wait, refresh)
            && let Ok(Some(l)) = self.load_lock(key, wait).await
        {
            // Whoever held the lock before us has probably loaded the key.
            let token = self.coherency().begin_fill(key);
            if let L2Read::Fresh(v) = self.read_l2::<T>(key, token, &mut fence).await {
                l.release().await;
                return publish(v.map_or(Outcome::Absent, |v| Outcome::Value(v, Tier::L2)));
            }
            lock = Some(l);
        }

        let answer_stale = |stale: &Option<Option<Arc<T>>>, error: Error| match stale {
            Some(v) => {
                Counters::inc(&self.counters().stale_hits);
                v.clone()
                    .map_or(Outcome::Absent, |v| Outcome::Value(v, Tier::Stale))
            }
            None => Outcome::Failed(Arc::new(error)),
        };

        let breaker = self.loader_breaker(&opts.source);
        if breaker.allow() == Permit::Refused {
            if let Some(l) = lock {
                l.release().await;
            }
            return publish(answer_stale(&stale, Repr::CircuitOpen.into()));
        }

        Counters::inc(&self.counters().loads);
        let started = std::time::Instant::now();
        let hard = opts.hard_timeout;
        let load = tokio::time::timeout(hard, loader());
        tokio::pin!(load);
        let mut answered = false;
        let result = match (opts.soft_timeout, &stale) {
            (Some(soft), Some(_)) => tokio::select! {
                r = &mut load => r,
                _ = tokio::time::sleep(soft) => {
                    publish(answer_stale(&stale, Error::loader("soft timeout")));
                    answered = true;
                    load.await
                }
            },
            _ => load.await,
        };

        self.inner
            .metrics
            .load(matches!(result, Ok(Ok(_))), started.elapsed());
        let outcome = match result {
            Ok(Ok(value)) => {
                if breaker.success() {
                    Counters::inc(&self.counters().loader_breaker_closed);
                }
                self.store_loaded(key, opts, value, Fill::from_fence(self, key, fence, token))
                    .await
            }
            Ok(Err(e)) => {
                self.loader_failed(&breaker);
                answer_stale(&stale, Error::loader(e))
            }
            Err(_) => {
                self.loader_failed(&breaker);
                answer_stale(
                    &stale,
                    Error::loader(format!("loader timed out after {hard:?}")),
                )
            }
        };
        if let Some(l) = lock {
            l.release().await;
        }
        // After a soft-timeout answer, a failed load changes nothing; a
        // successful one has refreshed the cache and is published for late joiners.
        if !answered || matches!(outcome, Outcome::Value(_, Tier::Source) | Outcome::Absent) {
            publish(outcome);
        }
    }

    fn loader_failed(&self, breaker: &Breaker) {
        Counters::inc(&self.counters().load_errors);
        if breaker.failure() {
            Counters::inc(&self.counters().loader_breaker_opened);
            tracing::warn!(target: "c3::loader", "loader circuit breaker opened");
        }
    }

    /// Reads `key` from L2 for a load. The fence taken with the read is
    /// what a loaded value is stored through (see `store_loaded`).
    async fn read_l2<T>(
        &self,
        key: &str,
        token: Option<crate::coherency::FillToken>,
        fence: &mut Option<Fence>,
    ) -> L2Read<T>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let now = self.now();
        let now_us = to_micros(now);
        let Ok((row, f)) = self.l2("get", self.backend().get_for_load(key, now)).await else {
            return L2Read::Nothing;
        };
        *fence = Some(f);
        let Some(row) = row else {
            Counters::inc(&self.counters().l2_misses);
            return L2Read::Nothing;
        };
        let fresh = row.state(now_us) == State::Fresh;
        // A row that cannot be decoded as `T` is as good as missing here: the
        // loader will replace it.
        let Ok((value, entry)) = decode_row::<T>(key, row, now_us) else {
            return L2Read::Nothing;
        };
        if !fresh {
            self.coherency().note_version(key, entry.version);
            return L2Read::Stale(value);
        }
        Counters::inc(&self.counters().l2_hits);
        self.keep_read(key, token, entry);
        L2Read::Fresh(value)
    }

    /// Stores a loaded value (or a negative entry) through the load's fill
    /// (see `crate::fill`), and returns the outcome for the waiters.
    async fn store_loaded<T>(
        &self,
        key: &str,
        opts: &LoadOptions,
        value: Option<T>,
        fill: Fill,
    ) -> Outcome<T>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let now = self.now();
        let ttl = match &value {
            Some(_) => opts.ttl.unwrap_or(self.default_ttl()),
            None => match opts.negative_ttl {
                Some(t) => Some(t),
                None => return Outcome::Absent,
            },
        };
        let (bytes, encoding) = match &value {
            Some(v) => match crate::codec::encode(
                v,
                self.inner.limits.codecs.for_key(key),
                self.max_value_bytes(),
                self.inner.limits.compress_above,
            ) {
                Ok(encoded) => encoded,
                // Too big or unencodable: answer without caching.
                Err(_) => {
                    return value.map_or(Outcome::Absent, |v| {
                        Outcome::Value(Arc::new(v), Tier::Source)
                    });
                }
            },
            None => (Vec::new(), ENCODING_ABSENT),
        };
        let fresh_until = ttl.map(|t| now + t);
        let stale_until = match (fresh_until, opts.fail_safe) {
            (Some(f), Some(w)) => Some(f + w),
            _ => None,
        };
        let item = WriteItem {
            key: key.to_owned(),
            value: bytes,
            encoding,
            fresh_until,
            stale_until,
            tags: Vec::new(),
            // Peers load for themselves when they need the key.
            push: false,
        };
        fill.store_items::<T>(vec![item]).await;
        value.map_or(Outcome::Absent, |v| {
            Outcome::Value(Arc::new(v), Tier::Source)
        })
    }
}

enum L2Read<T> {
    /// A fresh row (or a fresh negative entry).
    Fresh(Option<Arc<T>>),
    /// A row past its TTL but within its fail-safe window.
    Stale(Option<Arc<T>>),
    Nothing,
}
