//! One load of one key, step by step: read L2 before loading, take the
//! cross-node lock, call the loader (breaker, hard and soft timeouts), store
//! what it returned through a fill. Runs in its own task (see the module
//! docs of `crate::loader`) and publishes at least once.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::options::LoadOptions;
use crate::breaker::{Breaker, Permit};
use crate::cache::C3;
use crate::clock::unix_micros;
use crate::coherency::FillToken;
use crate::entry::WriteItem;
use crate::entry::{ENCODING_ABSENT, State, decode_row};
use crate::error::{Error, Repr};
use crate::fill::Fill;
use crate::flights::{Answer, Joined, Slot};
use crate::stats::Counters;
use crate::store::Fence;
use crate::store::LoadLock;
use crate::tier::Tier;

/// Joins the flight for `key` or starts one in its own task. `refresh` skips
/// L1/L2 and reloads from the source; `stale` is the fail-safe fallback the
/// caller already holds.
pub(super) fn join_or_start<T, F, Fut, E>(
    c3: &C3,
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
    // A flight that started before this node applied an invalidation of the
    // key, completed a write to it or read a newer version of it may answer
    // with the value from before: a caller arriving now must not join it, or
    // it could read older data than it (or another task of this node) has
    // already seen. It starts a flight of its own, which later callers join
    // instead. This holds while L1 is off too.
    let coherency = c3.coherency();
    let (tx, rx, marker) = match c3.flights().join_or_register::<T>(
        key,
        |token| coherency.join_valid(token),
        || coherency.join_token(key),
    ) {
        Joined::Existing(rx) => return rx,
        Joined::New(tx, rx, marker) => (tx, rx, marker),
    };
    let guard = FlightGuard {
        c3: c3.clone(),
        key: key.to_owned(),
        marker,
    };
    let c3 = c3.clone();
    let key = key.to_owned();
    let opts = opts.clone();
    // The flight's L2 and source spans belong to the call that started it.
    let flight = async move {
        let _guard = guard;
        Flight::new(&c3, &key, &opts, stale, &tx)
            .run(loader, refresh)
            .await;
    };
    tokio::spawn(tracing::Instrument::in_current_span(flight));
    rx
}

/// Removes a finished flight from the registry, also if its task panicked.
struct FlightGuard {
    c3: C3,
    key: String,
    marker: Arc<dyn Any + Send + Sync>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.c3.flights().finished(&self.key, &self.marker);
    }
}

/// One flight's state as it goes through the steps.
struct Flight<'a, T> {
    c3: &'a C3,
    key: &'a str,
    opts: &'a LoadOptions,
    tx: &'a watch::Sender<Option<Answer<T>>>,
    /// The fail-safe fallback: a value past its TTL but within its window,
    /// from the caller's L1 or from this flight's L2 read.
    stale: Option<Option<Arc<T>>>,
    /// Taken before anything is read, so a value loaded while the key was
    /// invalidated is neither written to L2 nor kept in L1.
    token: Option<FillToken>,
    /// Taken with the L2 read: what a loaded value is stored through.
    fence: Option<Fence>,
}

enum L2Read<T> {
    /// A fresh row (or a fresh negative entry).
    Fresh(Option<Arc<T>>),
    /// A row past its TTL but within its fail-safe window.
    Stale(Option<Option<Arc<T>>>),
    Nothing,
}

impl<'a, T> Flight<'a, T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn new(
        c3: &'a C3,
        key: &'a str,
        opts: &'a LoadOptions,
        stale: Option<Option<Arc<T>>>,
        tx: &'a watch::Sender<Option<Answer<T>>>,
    ) -> Self {
        Flight {
            c3,
            key,
            opts,
            tx,
            stale,
            token: c3.coherency().fill_token(key),
            fence: None,
        }
    }

    /// The whole flight. `refresh` (an eager refresh) needs no answer from
    /// L2, only the fence for the write-back, and takes no cluster lock.
    async fn run<F, Fut, E>(mut self, loader: F, refresh: bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        if let Some(answer) = self.read_before_load(refresh).await {
            return self.publish(answer);
        }
        let lock = if refresh {
            None
        } else {
            match self.cluster_lock().await {
                Ok(lock) => lock,
                Err(answer) => return self.publish(answer),
            }
        };
        let breaker = self.c3.loader_breakers().of(&self.opts.source);
        let (outcome, answered) = if breaker.allow() == Permit::Refused {
            (self.answer_stale(Repr::CircuitOpen.into()), false)
        } else {
            let (result, answered) = self.call_loader(loader, &breaker).await;
            let outcome = match result {
                Ok(value) => self.store_loaded(value).await,
                Err(e) => self.answer_stale(e),
            };
            (outcome, answered)
        };
        if let Some(l) = lock {
            l.release().await;
        }
        // After a soft-timeout answer, a failed load changes nothing; a
        // successful one has refreshed the cache and is published for late joiners.
        if !answered || matches!(outcome, Answer::Value(_, Tier::Source) | Answer::Absent) {
            self.publish(outcome);
        }
    }

    fn publish(&self, outcome: Answer<T>) {
        self.tx.send_replace(Some(outcome));
    }

    /// L2 first: a fresh row answers the flight; a row in its fail-safe
    /// window becomes the fallback.
    async fn read_before_load(&mut self, refresh: bool) -> Option<Answer<T>> {
        if refresh {
            if let Ok((_, f)) = self
                .c3
                .l2()
                .call("get", |s| s.get_for_load(self.key, self.c3.now()))
                .await
            {
                self.fence = Some(f);
            }
            return None;
        }
        match self.read_l2(self.token).await {
            L2Read::Fresh(v) => Some(from_l2(v)),
            L2Read::Stale(v) => {
                self.stale = self.stale.take().or(v);
                None
            }
            L2Read::Nothing => None,
        }
    }

    /// With [`LoadOptions::cluster_lock`], waits for the other nodes' load of
    /// the key. `Err` carries the answer when whoever held the lock before
    /// has loaded it meanwhile.
    async fn cluster_lock(&mut self) -> Result<Option<LoadLock>, Answer<T>> {
        let Some(wait) = self.opts.cluster_wait else {
            return Ok(None);
        };
        let hard = self.opts.hard_timeout;
        let Some(lock) = self.c3.l2().load_lock(self.key, wait, hard).await else {
            return Ok(None);
        };
        let token = self.c3.coherency().fill_token(self.key);
        if let L2Read::Fresh(v) = self.read_l2(token).await {
            lock.release().await;
            return Err(from_l2(v));
        }
        Ok(Some(lock))
    }

    /// Calls the loader under the hard timeout; with a soft timeout and a
    /// fallback in hand, answers with the fallback when the soft one passes
    /// and lets the load go on. Returns the load's result and whether the
    /// waiters were already answered.
    async fn call_loader<F, Fut, E>(
        &self,
        loader: F,
        breaker: &Breaker,
    ) -> (Result<Option<T>, Error>, bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let counters = self.c3.counters();
        Counters::inc(&counters.loads);
        let started = std::time::Instant::now();
        let hard = self.opts.hard_timeout;
        let load = tokio::time::timeout(hard, loader());
        tokio::pin!(load);
        let mut answered = false;
        let result = match (self.opts.soft_timeout, &self.stale) {
            (Some(soft), Some(_)) => tokio::select! {
                r = &mut load => r,
                _ = tokio::time::sleep(soft) => {
                    self.publish(self.answer_stale(Error::loader("soft timeout")));
                    answered = true;
                    load.await
                }
            },
            _ => load.await,
        };
        self.c3
            .inner
            .metrics
            .load(matches!(result, Ok(Ok(_))), started.elapsed());
        let result = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::loader(e)),
            Err(_) => Err(Error::loader(format!("loader timed out after {hard:?}"))),
        };
        match &result {
            Ok(_) if breaker.success() => Counters::inc(&counters.loader_breaker_closed),
            Ok(_) => {}
            Err(_) => {
                Counters::inc(&counters.load_errors);
                if breaker.failure() {
                    Counters::inc(&counters.loader_breaker_opened);
                    tracing::warn!(target: "c3::loader", "loader circuit breaker opened");
                }
            }
        }
        (result, answered)
    }

    /// The fail-safe answer to a failed or refused load: the fallback if
    /// there is one, else the error.
    fn answer_stale(&self, error: Error) -> Answer<T> {
        match &self.stale {
            Some(v) => {
                Counters::inc(&self.c3.counters().stale_hits);
                log_fail_safe(self.key, &error);
                v.clone()
                    .map_or(Answer::Absent, |v| Answer::Value(v, Tier::Stale))
            }
            None => Answer::Failed(Arc::new(error)),
        }
    }

    /// Reads the key from L2 for the load, keeping the fence taken with the
    /// read (see `store_loaded`).
    async fn read_l2(&mut self, token: Option<FillToken>) -> L2Read<T> {
        let (c3, key) = (self.c3, self.key);
        let now = c3.now();
        let now_us = unix_micros(now);
        let Ok((row, f)) = c3.l2().call("get", |s| s.get_for_load(key, now)).await else {
            return L2Read::Nothing;
        };
        self.fence = Some(f);
        let Some(row) = row else {
            Counters::inc(&c3.counters().l2_misses);
            return L2Read::Nothing;
        };
        let fresh = row.state(now_us) == State::Fresh;
        // A row that cannot be decoded as `T` is as good as missing here: the
        // loader will replace it.
        let Ok((value, entry)) = decode_row::<T>(key, row) else {
            return L2Read::Nothing;
        };
        if !fresh {
            c3.coherency().note_version(key, entry.version);
            return L2Read::Stale(Some(value));
        }
        Counters::inc(&c3.counters().l2_hits);
        c3.keep_read(key, token, entry);
        L2Read::Fresh(value)
    }

    /// Stores a loaded value (or a negative entry) through the load's fill
    /// (see `crate::fill`), and returns the outcome for the waiters.
    async fn store_loaded(&mut self, value: Option<T>) -> Answer<T> {
        let (c3, key, opts) = (self.c3, self.key, self.opts);
        let answer = |value: Option<T>| {
            value.map_or(Answer::Absent, |v| Answer::Value(Arc::new(v), Tier::Source))
        };
        let ttl = match &value {
            Some(_) => opts.ttl.unwrap_or(c3.default_ttl()),
            None => match opts.negative_ttl {
                Some(t) => Some(t),
                None => return Answer::Absent,
            },
        };
        let encoded = match &value {
            Some(v) => match c3.encode(key, v) {
                Ok(encoded) => encoded,
                // Too big or unencodable: answer without caching.
                Err(_) => return answer(value),
            },
            None => (Vec::new(), ENCODING_ABSENT),
        };
        let now = c3.now();
        let fresh_until = ttl.map(|t| now + t);
        let stale_until = match (fresh_until, opts.fail_safe) {
            (Some(f), Some(w)) => Some(f + w),
            _ => None,
        };
        // Not pushed: peers load for themselves when they need the key.
        let mut item = WriteItem::new(key, encoded, fresh_until);
        item.stale_until = stale_until;
        let fill = Fill::from_fence(c3, key, self.fence.take(), self.token);
        fill.store_items::<T>(vec![item]).await;
        answer(value)
    }
}

fn from_l2<T>(v: Option<Arc<T>>) -> Answer<T> {
    v.map_or(Answer::Absent, |v| Answer::Value(v, Tier::L2))
}

/// Says, at most once a minute per process, that answers come from the
/// fail-safe window and why — an operator should know the source is
/// failing although callers see values (`stale_hits` counts every one).
fn log_fail_safe(key: &str, error: &Error) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::unix_micros(std::time::SystemTime::now());
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000_000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::info!(target: "c3::loader", key, error = %error,
            "answering from the fail-safe window: the source failed (logged at most once a minute)");
    }
}
