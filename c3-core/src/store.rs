//! The L2 store as the engine sees it ([`Store`]), the fence a fill is
//! stored through, and the deadline every L2 call runs under.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::entry::{Row, WriteItem};
use crate::error::{Error, Result};

/// How the L2 tables are stored (see [`C3Builder::durability`](crate::C3Builder::durability)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Ordinary tables: every committed cache write survives a crash, and
    /// each commit waits for its WAL flush.
    #[default]
    Logged,
    /// `UNLOGGED` tables: no WAL, so a cache write's commit does not wait
    /// for the disk; a crash (or a failover: unlogged tables are not
    /// replicated) empties the cache, and every node purges its L1 when it
    /// reconnects. The version sequence stays logged.
    Unlogged,
}

/// What a fill must present to be stored: the snapshot L2 had just before
/// the source was read (PostgreSQL: `pg_current_snapshot()`; the memory
/// server: its version counter). See PROTOCOL.md, "Fills".
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    pub(crate) snapshot: String,
    /// PostgreSQL: the server's start time when the fence was taken.
    pub(crate) started: Option<String>,
    /// PostgreSQL: the server's clock when the fence was taken (µs since
    /// the epoch). A fill older than half the deletion records' retention
    /// is refused: a record of a deletion after its fence may be gone.
    pub(crate) taken_us: Option<i64>,
}

tokio::task_local! {
    /// When the caller of the L2 operation running in this task stops
    /// waiting. Set in one place, [`bounded_until`], which every L2 call
    /// passes; the PostgreSQL backend derives the server's own bounds from
    /// it, so that nothing it sends can commit after the caller was told
    /// the operation failed (PROTOCOL.md §2, "Bounded transactions").
    static DEADLINE: Instant;
}

/// The deadline of the L2 operation running in this task, if any.
pub(crate) fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Bounds an L2 call so a dead or blackholed server yields a typed error, not a hang.
pub(crate) async fn bounded<T>(
    op: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    bounded_until(op, Instant::now() + after, after, fut).await
}

/// [`bounded`] with the deadline given: the caller is told "timed out"
/// (`after` is what the message reports) at `deadline`, and the call runs
/// with that deadline in scope.
pub(crate) async fn bounded_until<T>(
    op: &'static str,
    deadline: Instant,
    after: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout_at(deadline, DEADLINE.scope(deadline, fut)).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(op, after)),
    }
}

/// A boxed L2 call: the engine holds its store as `dyn Store`, and an L2
/// call is a network round trip, beside which the box costs nothing.
pub(crate) type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The L2 store, as the engine sees it: PostgreSQL (`crate::postgres`) or
/// the in-process [`MemoryServer`](crate::MemoryServer) (`crate::memory`).
/// Every write publishes its invalidation atomically with its change; how
/// the other nodes hear it is the feed's business (`crate::feed`).
pub(crate) trait Store: Send + Sync {
    /// The `db.system` of L2 spans.
    fn system(&self) -> &'static str;

    /// Whether concurrent single-key writes are worth combining into one
    /// transaction (a round trip saved per write; not for an in-process map).
    fn combines_writes(&self) -> bool;

    /// Releases what the store holds open (its pool, if it built one).
    fn close(&self);

    /// Reads a row that has not passed its hard expiry at `now`.
    fn get<'a>(&'a self, key: &'a str, now: SystemTime) -> Call<'a, Option<Row>>;

    /// Reads a row for a load, with the fence its result is stored through.
    fn get_for_load<'a>(&'a self, key: &'a str, now: SystemTime) -> Call<'a, (Option<Row>, Fence)>;

    /// Takes a fence before a source is read.
    fn fence(&self) -> Call<'_, Fence>;

    /// Stores fills unless something invalidated them outside `fence`; one
    /// slot per item: its version, or `None` if refused.
    fn fill<'a>(
        &'a self,
        items: &'a [WriteItem],
        header: &'a str,
        fence: &'a Fence,
    ) -> Call<'a, Vec<Option<u64>>>;

    /// Reads several rows; missing keys are absent from the result.
    fn get_many<'a>(&'a self, keys: &'a [&'a str], now: SystemTime)
    -> Call<'a, Vec<(String, Row)>>;

    /// Upserts rows and publishes their versions in the same transaction.
    /// Returns the new version of each item, in order.
    fn set<'a>(&'a self, items: &'a [WriteItem], header: &'a str) -> Call<'a, Vec<u64>>;

    /// Deletes rows and publishes one new version for all of them, atomically.
    fn delete<'a>(&'a self, keys: &'a [&'a str], header: &'a str) -> Call<'a, u64>;

    /// Deletes every entry tagged `tag` and publishes their new version.
    fn invalidate_tag<'a>(&'a self, tag: &'a str, header: &'a str) -> Call<'a, (Vec<String>, u64)>;

    /// Publishes ready-made payloads (heartbeats and the like).
    fn publish<'a>(&'a self, payloads: &'a [String]) -> Call<'a, ()>;

    /// Records `keys` as deleted — without deleting their rows — and
    /// publishes `payloads` (their unversioned invalidation), atomically: so
    /// a node that was disconnected finds them in its warm replay, and fills
    /// of those keys in progress are refused, as for a delete.
    fn invalidate<'a>(&'a self, keys: &'a [&'a str], payloads: &'a [String]) -> Call<'a, ()>;

    /// Deletes every row and publishes `payload` (a clear message) atomically.
    fn clear<'a>(&'a self, payload: &'a str) -> Call<'a, ()>;

    /// A cross-node lock for loading `key`, waiting at most `wait` for it
    /// and held at most `hold` by a node that goes silent (`None`: not
    /// taken, or the store has no other nodes to exclude).
    fn load_lock<'a>(
        &'a self,
        key: &'a str,
        wait: Duration,
        hold: Duration,
    ) -> Call<'a, Option<LoadLock>>;

    /// Deletes rows past their hard expiry (recording what it deletes);
    /// returns how many.
    fn sweep(&self, now: SystemTime, batch: i64) -> Call<'_, u64>;
}

/// A held cross-node load lock; [`release`](Self::release) it when the
/// load is stored. Dropped instead (the load was cancelled), the store
/// frees it by other means (PostgreSQL: the session closes).
pub(crate) struct LoadLock(Box<dyn HeldLock>);

/// What a store's load lock does when released.
pub(crate) trait HeldLock: Send {
    fn release(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl LoadLock {
    pub(crate) fn new(held: impl HeldLock + 'static) -> Self {
        LoadLock(Box::new(held))
    }

    pub(crate) async fn release(self) {
        self.0.release().await;
    }
}

/// Deletes expired L2 rows now and then. Exists so that keys written once and
/// never read again do not accumulate in the table forever.
pub(crate) async fn sweeper(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    every: Duration,
    batch: i64,
    op_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let now = clock.now();
        match bounded("sweep", op_timeout, store.sweep(now, batch)).await {
            Ok(n) if n > 0 => {
                tracing::debug!(target: "c3::sweeper", deleted = n, "swept expired rows")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(target: "c3::sweeper", error = %e, "sweep failed; will retry")
            }
        }
    }
}
