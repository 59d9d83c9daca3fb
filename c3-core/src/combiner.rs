//! Write combining: concurrent writes on one node share one transaction.
//!
//! # Why
//!
//! PostgreSQL serialises the commits of transactions that issued `NOTIFY`
//! on one global lock, held across the commit's WAL flush. Sixteen writers
//! each committing "upsert + notify" therefore commit one at a time, where
//! sixteen plain upserts would share WAL flushes (group commit). Combining
//! the writes that arrive while a commit is in flight into the next
//! transaction — one upsert statement, one round of notifications — gives
//! that sharing back at the application level.
//!
//! # How
//!
//! A write joins the queue and waits for its result. If fewer than
//! [`FLUSHERS`] flush tasks are running, it starts one. A flush task takes
//! everything queued (up to [`MAX_BATCH`] rows, never the same key twice,
//! since one statement cannot update a row twice), commits it with the
//! ordinary multi-row write, hands each waiter its versions, and repeats
//! until the queue is empty. An idle node pays one task hop per write;
//! a busy one pays one commit per batch.
//!
//! Tagged writes are not combined: replacing tags is per transaction.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::entry::WriteItem;
use crate::error::{Error, Repr, Result};
use crate::store::Store;

/// Flush tasks allowed at once: one committing while the next batch forms.
const FLUSHERS: usize = 2;

/// Rows per combined transaction.
const MAX_BATCH: usize = 256;

struct Pending {
    items: Vec<WriteItem>,
    header: String,
    /// When this write's caller stops waiting (its L2 deadline).
    deadline: Instant,
    done: oneshot::Sender<Result<Vec<u64>>>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    flushers: usize,
}

/// The per-node write queue.
#[derive(Default)]
pub(crate) struct Combiner {
    queue: Mutex<Queue>,
    /// Signalled when the last flush task finds the queue empty.
    idle: Notify,
}

impl Combiner {
    /// Commits `items` (untagged) together with whatever else is queued.
    pub(crate) async fn set(
        self: &Arc<Self>,
        backend: &Arc<dyn Store>,
        items: Vec<WriteItem>,
        header: String,
    ) -> Result<Vec<u64>> {
        let (done, rx) = oneshot::channel();
        let started = Instant::now();
        // Called under `C3::l2`, whose deadline is in scope.
        let deadline = crate::store::deadline()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(60));
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.pending.push_back(Pending {
                items,
                header,
                deadline,
                done,
            });
            let start = q.flushers < FLUSHERS;
            if start {
                q.flushers += 1;
            }
            start
        };
        if start {
            tokio::spawn(Arc::clone(self).flush(Arc::clone(backend)));
        }
        match rx.await {
            Ok(r) => r,
            // A flusher drops a write whose deadline passed (it must never
            // commit after its caller was told it failed): that caller timed
            // out, even if its own timer has not fired yet.
            Err(_) if Instant::now() >= deadline => Err(Error::timeout(
                "set",
                deadline.saturating_duration_since(started),
            )),
            // Otherwise only when the runtime is going away under us.
            Err(_) => Err(Error::from(Repr::Shutdown)),
        }
    }

    /// [`take`](Self::take), marking the slot released when it is.
    fn take_or_release(&self, slot: &mut Slot<'_>) -> Option<Vec<Pending>> {
        let batch = self.take();
        slot.held = batch.is_some();
        batch
    }

    /// Takes the next batch: queued writes in order, stopping before one
    /// that would repeat a key or overflow the batch. `None` releases the
    /// caller's flusher slot.
    fn take(&self) -> Option<Vec<Pending>> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut rows = 0;
        while let Some(p) = q.pending.front() {
            let clash = p.items.iter().any(|i| keys.contains(&i.key));
            if !batch.is_empty() && (clash || rows + p.items.len() > MAX_BATCH) {
                break;
            }
            let p = q.pending.pop_front().expect("front exists");
            rows += p.items.len();
            keys.extend(p.items.iter().map(|i| i.key.clone()));
            batch.push(p);
        }
        if batch.is_empty() {
            // Decided under the lock, so a write queued after this point
            // sees the count drop and starts a flusher of its own.
            q.flushers -= 1;
            if q.flushers == 0 {
                self.idle.notify_waiters();
            }
            return None;
        }
        Some(batch)
    }

    /// Resolves once every queued write has been committed (or has failed).
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a flusher finishing in between
            // still wakes us.
            notified.as_mut().enable();
            {
                let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.flushers == 0 && q.pending.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }

    async fn flush(self: Arc<Self>, backend: Arc<dyn Store>) {
        // If this task dies mid-batch (a panic, the runtime going away), the
        // guard gives its flusher slot back, so later writes start another
        // flusher instead of waiting for one that will never come.
        let mut guard = Slot {
            combiner: &self,
            held: true,
        };
        while let Some(batch) = self.take_or_release(&mut guard) {
            // A write whose caller has gone (cancelled, or past its
            // deadline: told "timed out") is not sent: it must never commit
            // after its caller was told it failed.
            let now = Instant::now();
            let batch = still_awaited(batch, now);
            let Some(deadline) = batch.iter().map(|p| p.deadline).min() else {
                continue;
            };
            let header = batch.last().map(|p| p.header.clone()).unwrap_or_default();
            let items: Vec<WriteItem> = batch.iter().flat_map(|p| p.items.clone()).collect();
            // The batch runs under its earliest caller's deadline: it
            // commits before every one of its callers stops waiting, or
            // never (see `postgres::begin_sql`).
            let set = backend.set(&items, &header);
            match crate::store::bounded_until("set", deadline, deadline - now, set).await {
                Ok(versions) => {
                    let mut rest = versions.as_slice();
                    for p in batch {
                        let (mine, tail) = rest.split_at(p.items.len().min(rest.len()));
                        rest = tail;
                        let _ = p.done.send(Ok(mine.to_vec()));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for p in batch {
                        let _ = p.done.send(Err(Repr::Shared(Arc::clone(&e)).into()));
                    }
                }
            }
        }
    }
}

/// The writes of `batch` whose callers still wait for them at `now`.
fn still_awaited(batch: Vec<Pending>, now: Instant) -> Vec<Pending> {
    batch
        .into_iter()
        .filter(|p| !p.done.is_closed() && p.deadline > now)
        .collect()
}

/// A flusher's slot in the queue's count, released on drop if still held.
struct Slot<'a> {
    combiner: &'a Combiner,
    held: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            let mut q = self
                .combiner
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            q.flushers -= 1;
            if q.flushers == 0 {
                self.combiner.idle.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str) -> WriteItem {
        WriteItem {
            key: key.to_owned(),
            value: Vec::new(),
            encoding: crate::codec::JSON,
            fresh_until: None,
            stale_until: None,
            tags: Vec::new(),
            push: false,
        }
    }

    /// A combiner with these writes queued (each a list of keys) and one
    /// flusher running.
    fn queued(writes: &[Vec<String>]) -> Combiner {
        let c = Combiner::default();
        {
            let mut q = c.queue.lock().unwrap();
            q.flushers = 1;
            for keys in writes {
                q.pending.push_back(Pending {
                    items: keys.iter().map(|k| item(k)).collect(),
                    header: String::new(),
                    deadline: Instant::now() + std::time::Duration::from_secs(60),
                    done: oneshot::channel().0,
                });
            }
        }
        c
    }

    fn keys(batch: &[Pending]) -> Vec<&str> {
        batch
            .iter()
            .flat_map(|p| p.items.iter().map(|i| i.key.as_str()))
            .collect()
    }

    fn w(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn a_batch_takes_writes_in_order_and_stops_before_a_repeated_key() {
        let c = queued(&[w(&["a"]), w(&["b", "c"]), w(&["a"]), w(&["d"])]);
        assert_eq!(keys(&c.take().unwrap()), ["a", "b", "c"]);
        // The repeated key starts the next batch; order is kept.
        assert_eq!(keys(&c.take().unwrap()), ["a", "d"]);
        assert!(c.take().is_none());
        assert_eq!(c.queue.lock().unwrap().flushers, 0, "the slot is released");
    }

    #[test]
    fn writes_whose_callers_have_gone_are_not_sent() {
        let now = Instant::now();
        let pending = |key: &str, deadline: Instant| {
            let (done, rx) = oneshot::channel();
            let p = Pending {
                items: vec![item(key)],
                header: String::new(),
                deadline,
                done,
            };
            (p, rx)
        };
        let later = now + std::time::Duration::from_secs(1);
        let (waiting, _rx1) = pending("waiting", later);
        let (cancelled, rx2) = pending("cancelled", later);
        drop(rx2);
        let (expired, _rx3) = pending("expired", now);
        let kept = still_awaited(vec![waiting, cancelled, expired], now);
        assert_eq!(keys(&kept), ["waiting"]);
    }

    #[test]
    fn a_batch_stops_before_overflowing_but_always_takes_one_write() {
        let big: Vec<String> = (0..MAX_BATCH + 10).map(|i| format!("big{i}")).collect();
        let almost: Vec<String> = (0..MAX_BATCH - 1).map(|i| format!("k{i}")).collect();
        let c = queued(&[big, almost, w(&["x"]), w(&["y"])]);
        // One write larger than a batch still goes, alone.
        assert_eq!(c.take().unwrap().len(), 1);
        // MAX_BATCH - 1 rows and one more fill a batch exactly.
        let batch = c.take().unwrap();
        assert_eq!(
            batch.iter().map(|p| p.items.len()).sum::<usize>(),
            MAX_BATCH
        );
        assert_eq!(keys(&c.take().unwrap()), ["y"]);
        assert!(c.take().is_none());
    }
}
