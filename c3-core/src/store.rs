//! L2 backends: where shared entries live and how invalidations are published.
//!
//! A closed enum rather than a trait object: there are exactly two backends,
//! both internal, and static dispatch keeps the L2 path free of boxing.

pub(crate) mod memory;
pub(crate) mod postgres;

use std::future::Future;
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

pub(crate) enum Backend {
    Postgres(Box<postgres::PgBackend>),
    Memory(memory::MemoryBackend),
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

impl Backend {
    /// Releases what the backend holds open (see `PgBackend::close`).
    pub(crate) fn close(&self) {
        if let Backend::Postgres(b) = self {
            b.close();
        }
    }

    /// Reads a row that has not passed its hard expiry at `now`.
    pub(crate) async fn get(&self, key: &str, now: SystemTime) -> Result<Option<Row>> {
        match self {
            Backend::Postgres(b) => b.get(key, now).await,
            Backend::Memory(b) => Ok(b.get(key, now)),
        }
    }

    /// Reads a row for a load, with the fence its result is stored through.
    pub(crate) async fn get_for_load(
        &self,
        key: &str,
        now: SystemTime,
    ) -> Result<(Option<Row>, Fence)> {
        match self {
            Backend::Postgres(b) => b.get_for_load(key, now).await,
            Backend::Memory(b) => Ok(b.get_for_load(key, now)),
        }
    }

    /// Takes a fence before a source is read.
    pub(crate) async fn fence(&self) -> Result<Fence> {
        match self {
            Backend::Postgres(b) => b.fence().await,
            Backend::Memory(b) => Ok(b.fence()),
        }
    }

    /// Stores fills unless something invalidated them outside `fence`; one
    /// slot per item: its version, or `None` if refused.
    pub(crate) async fn fill(
        &self,
        items: &[WriteItem],
        header: &str,
        fence: &Fence,
    ) -> Result<Vec<Option<u64>>> {
        match self {
            Backend::Postgres(b) => b.fill(items, header, fence).await,
            Backend::Memory(b) => Ok(b.fill(items, header, fence)),
        }
    }

    /// Reads several rows; missing keys are absent from the result.
    pub(crate) async fn get_many(
        &self,
        keys: &[&str],
        now: SystemTime,
    ) -> Result<Vec<(String, Row)>> {
        match self {
            Backend::Postgres(b) => b.get_many(keys, now).await,
            Backend::Memory(b) => Ok(b.get_many(keys, now)),
        }
    }

    /// Upserts rows and publishes their versions in the same transaction.
    /// Returns the new version of each item, in order.
    pub(crate) async fn set(&self, items: &[WriteItem], header: &str) -> Result<Vec<u64>> {
        match self {
            Backend::Postgres(b) => b.set(items, header).await,
            Backend::Memory(b) => Ok(b.set(items, header)),
        }
    }

    /// Deletes rows and publishes one new version for all of them, atomically.
    pub(crate) async fn delete(&self, keys: &[&str], header: &str) -> Result<u64> {
        match self {
            Backend::Postgres(b) => b.delete(keys, header).await,
            Backend::Memory(b) => Ok(b.delete(keys, header)),
        }
    }

    /// Deletes every entry tagged `tag` and publishes their new version.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        header: &str,
    ) -> Result<(Vec<String>, u64)> {
        match self {
            Backend::Postgres(b) => b.invalidate_tag(tag, header).await,
            Backend::Memory(b) => Ok(b.invalidate_tag(tag, header)),
        }
    }

    /// Publishes ready-made payloads (unversioned invalidations).
    pub(crate) async fn publish(&self, payloads: &[String]) -> Result<()> {
        match self {
            Backend::Postgres(b) => b.publish(payloads).await,
            Backend::Memory(b) => {
                b.publish(payloads);
                Ok(())
            }
        }
    }

    /// Deletes every row and publishes `payload` (a clear message) atomically.
    pub(crate) async fn clear(&self, payload: &str) -> Result<()> {
        match self {
            Backend::Postgres(b) => b.clear(payload).await,
            Backend::Memory(b) => {
                b.clear(payload);
                Ok(())
            }
        }
    }

    /// A cross-node lock for loading `key` (`None`: not taken or not supported).
    pub(crate) async fn load_lock(
        &self,
        key: &str,
        wait: Duration,
    ) -> Result<Option<postgres::LoadLock>> {
        match self {
            Backend::Postgres(b) => b.load_lock(key, wait).await,
            // One process: the per-node singleflight is all there is to have.
            Backend::Memory(_) => Ok(None),
        }
    }

    /// Deletes rows past their hard expiry; returns how many.
    pub(crate) async fn sweep(&self, now: SystemTime, batch: i64) -> Result<u64> {
        match self {
            Backend::Postgres(b) => b.sweep(now, batch).await,
            Backend::Memory(b) => Ok(b.sweep(now)),
        }
    }
}

/// Deletes expired L2 rows now and then. Exists so that keys written once and
/// never read again do not accumulate in the table forever.
pub(crate) async fn sweeper(
    backend: Arc<Backend>,
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
        match bounded("sweep", op_timeout, backend.sweep(now, batch)).await {
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
