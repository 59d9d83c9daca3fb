//! [`C3`], the handle applications use: typed reads and writes over L1 and
//! L2. The handle and the node state it shares are here; each kind of
//! operation is a file beside it (`read`, `write`, `invalidate`), as
//! tower-http keeps each flow in its own file.

mod invalidate;
mod read;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::builder::C3Builder;
use crate::clock::{Clock, unix_micros};
use crate::coherency::Coherency;
use crate::entry::{L1Entry, State};
use crate::error::{Repr, Result};
use crate::feed::{Feed, ListenerState};
use crate::flights::Flights;
use crate::key::validate_key;
use crate::protocol;
use crate::stats::{Counters, Stats};
use crate::telemetry;

/// A coherent two-tier cache: L1 in this process, L2 in PostgreSQL (or a
/// [`MemoryServer`](crate::MemoryServer)), kept consistent across nodes by
/// LISTEN/NOTIFY.
///
/// Cloning is cheap and shares everything. Background tasks (the listener and
/// the sweeper) stop when the last clone is dropped or on [`shutdown`](Self::shutdown).
///
/// # Consistency
///
/// A read never returns a value older than a write whose notification this node
/// has applied before the read started, and never a value written before a
/// commit made through this same handle. While the listener connection is down,
/// L1 is bypassed and reads go to L2.
#[derive(Clone)]
pub struct C3 {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Limits {
    /// Which codec writes which keys.
    pub(crate) codecs: crate::codec::CodecPolicy,
    /// Values whose serialised form is longer than this are stored LZ4-compressed.
    pub(crate) compress_above: Option<usize>,
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) op_timeout: Duration,
    /// Key prefixes whose writes carry their values to peers.
    pub(crate) push_prefixes: Vec<String>,
}

impl Limits {
    fn pushes(&self, key: &str) -> bool {
        self.push_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }
}

/// Where a cache lives in PostgreSQL, for SQL written outside c3 — an
/// adapter's transactions, triggers, other languages (`docs/PROTOCOL.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlNames {
    /// The L2 table, quoted and schema-qualified: `"public"."cache_data"`.
    pub table: String,
    /// The notification channel (an identifier that needs no quoting).
    pub channel: String,
    /// The invalidation function, quoted and schema-qualified.
    /// `SELECT <function>($channel, $keys::text[], $tags::text[])` deletes
    /// the keys and every key tagged with one of the tags, and notifies every
    /// node — inside the caller's transaction, so it commits or rolls back
    /// with the caller's own writes. It returns the version it published —
    /// `NULL` only when it names no key at all (no keys given, and no row
    /// carries the tags); PROTOCOL.md §2 "Invalidating from SQL".
    pub invalidate_function: String,
}

pub(crate) struct Inner {
    pub(crate) sql_names: SqlNames,
    /// Whether spans carry keys (`C3Builder::trace_keys`).
    pub(crate) trace_keys: bool,
    pub(crate) combiner: Arc<crate::combiner::Combiner>,
    pub(crate) coherency: Arc<Coherency>,
    /// What the invalidation feed reports (and how shutdown stops L1).
    pub(crate) feed: Feed,
    /// The one way into L2 (breaker, timeout, span, counters).
    pub(crate) l2: crate::l2::L2,
    pub(crate) clock: Arc<dyn Clock>,
    /// Whether `clock` is the system clock, whose coarse reading lets an L1
    /// hit skip the precise one (`clock::system_now_at_most_us`).
    pub(crate) system_clock: bool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) metrics: Arc<crate::telemetry::Metrics>,
    pub(crate) limits: Limits,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set with `shutdown`: what every call checks (a load, where reading
    /// the watch channel takes its lock).
    pub(crate) closed: AtomicBool,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The loaders' breakers, one per source.
    pub(crate) loader_breakers: crate::breaker::SourceBreakers,
    pub(crate) flights: Flights,
    #[cfg(feature = "test-util")]
    pub(crate) fill_hook: Option<crate::builder::FillHook>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The tasks hold only the parts they need, never `Inner`, so this runs
        // when the last handle goes and is what stops them.
        self.shutdown.send_replace(true);
    }
}

impl telemetry::metrics::Observed for Inner {
    fn counters(&self) -> Stats {
        self.counters.snapshot()
    }

    fn l1_size(&self) -> (u64, u64) {
        self.coherency.l1_size()
    }

    fn listener_state(&self) -> &'static str {
        self.feed.state().as_str()
    }

    fn l2_breaker(&self) -> crate::breaker::BreakerState {
        self.l2.breaker().state()
    }

    fn loader_breakers(&self) -> Vec<(Arc<str>, crate::breaker::BreakerState)> {
        self.loader_breakers.states()
    }
}

impl std::fmt::Debug for C3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("C3")
            .field("node_id", &self.inner.coherency.node_id)
            .field("listener", &self.inner.feed.state())
            .finish_non_exhaustive()
    }
}

impl C3 {
    pub(crate) fn coherency(&self) -> &Coherency {
        &self.inner.coherency
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// The node's gateway to L2.
    pub(crate) fn l2(&self) -> &crate::l2::L2 {
        &self.inner.l2
    }

    pub(crate) fn loader_breakers(&self) -> &crate::breaker::SourceBreakers {
        &self.inner.loader_breakers
    }

    /// The TTL of writes that do not give one (`None`: until deleted).
    #[must_use]
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.limits.default_ttl
    }

    /// The current time on this cache's [`Clock`] (the system clock unless
    /// the builder was given another), for layers that make time-based
    /// decisions consistent with the cache's own expiry.
    #[must_use]
    pub fn now(&self) -> std::time::SystemTime {
        self.inner.clock.now()
    }

    /// The longest key this cache accepts, in bytes.
    #[must_use]
    pub fn max_key_bytes(&self) -> usize {
        self.inner.limits.max_key_bytes
    }

    /// Starts configuring a cache.
    pub fn builder() -> C3Builder {
        C3Builder::default()
    }

    pub(crate) fn from_inner(inner: Inner) -> C3 {
        C3 {
            inner: Arc::new(inner),
        }
    }

    /// This node's id, as written in its notifications.
    #[must_use]
    pub fn node_id(&self) -> &str {
        &self.inner.coherency.node_id
    }

    /// The listener's current state.
    #[must_use]
    pub fn listener_state(&self) -> ListenerState {
        self.inner.feed.state()
    }

    /// A receiver that sees every listener state change (e.g. for health checks).
    #[must_use]
    pub fn watch_listener(&self) -> watch::Receiver<ListenerState> {
        self.inner.feed.subscribe()
    }

    /// A snapshot of this node's counters and L1 size.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let mut s = self.inner.counters.snapshot();
        let (entries, bytes) = self.inner.coherency.l1_size();
        s.l1_entries = entries;
        s.l1_bytes = bytes;
        s
    }

    /// Whether L1 currently holds a fresh entry for `key` (no I/O). Meant for
    /// diagnostics and tests; reads decide on their own.
    #[must_use]
    pub fn is_cached_locally(&self, key: &str) -> bool {
        self.inner
            .coherency
            .peek(key)
            .is_some_and(|e| self.fresh_now(&e))
    }

    pub(crate) fn now_us(&self) -> u64 {
        unix_micros(self.inner.clock.now())
    }

    /// Whether an L1 entry is fresh now. The hit path's one clock question:
    /// the coarse bound answers it for every entry not about to expire
    /// (a precise read plus its conversion is a sixth of a bare moka get);
    /// the cache's own clock decides the rest.
    pub(crate) fn fresh_now(&self, e: &L1Entry) -> bool {
        if self.inner.system_clock
            && crate::clock::system_now_at_most_us()
                .is_some_and(|at_most| e.fresh_until_us > at_most)
        {
            return true;
        }
        e.state(self.now_us()) == State::Fresh
    }

    /// Whether `key` is non-empty and within `max_key_bytes`: the part of
    /// [`validate_key`](Self::validate_key) an L1 hit still needs.
    pub(crate) fn key_length_ok(&self, key: &str) -> bool {
        !key.is_empty() && key.len() <= self.inner.limits.max_key_bytes
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Repr::Shutdown.into());
        }
        Ok(())
    }

    pub(crate) fn check_key(&self, key: &str) -> Result<()> {
        self.check_open()?;
        self.validate_key(key)
    }

    /// Checks `key` against this cache's key rules (non-empty, at most
    /// `max_key_bytes`, no control characters, not starting with `c3|`),
    /// for adapters that build keys and send them through SQL.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKey`](crate::ErrorKind::InvalidKey).
    pub fn validate_key(&self, key: &str) -> Result<()> {
        validate_key(key, self.inner.limits.max_key_bytes)?;
        Ok(())
    }

    pub(crate) fn header(&self, op: char) -> String {
        protocol::header(&self.inner.coherency.node_id, self.now_us(), op)
    }

    /// Where this cache lives in PostgreSQL, for SQL that invalidates it from
    /// inside another transaction (see [`SqlNames::invalidate_function`]).
    #[must_use]
    pub fn sql_names(&self) -> &SqlNames {
        &self.inner.sql_names
    }

    /// Tells this node that `keys` were written at `version` by a transaction
    /// it committed outside c3 (e.g. through
    /// [`SqlNames::invalidate_function`]), so its L1 drops older copies now
    /// rather than when the notification comes back: the node reads its own
    /// writes at once. Other nodes learn from the notification as usual.
    pub fn note_external_write(&self, keys: &[&str], version: u64) {
        for k in keys {
            self.inner.coherency.apply_written(k, version);
        }
    }
    /// Stops the listener and the sweeper and waits for them to finish,
    /// after the writes already queued on this node have committed (bounded
    /// by the L2 operation timeout), then closes the connection pool if c3
    /// built it (a pool passed to [`C3Builder::pool`] stays open). Later
    /// calls on any clone of this handle fail with
    /// [`ErrorKind::Shutdown`](crate::ErrorKind::Shutdown).
    ///
    /// Work the HTTP layer runs after a response has gone out (storing a
    /// response that finished streaming, a background revalidation) is not
    /// waited for: one cut short by the shutdown stores nothing — a cache
    /// miss later, never a wrong answer.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(
            self.inner.limits.op_timeout,
            self.inner.combiner.wait_idle(),
        )
        .await;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.send_replace(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        self.inner.feed.stopped();
        self.inner.l2.store().close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn handle_is_send_sync() {
        assert_send_sync::<C3>();
    }
}
