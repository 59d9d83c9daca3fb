//! The one way into L2: every call from the engine passes the node's
//! breaker, the operation timeout (and the deadline the store derives its
//! server-side bounds from, see `store::bounded`), the `c3.l2` span and the
//! L2 error counters — here, once, instead of at each call site.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::breaker::{Breaker, Permit};
use crate::error::{Repr, Result};
use crate::stats::Counters;
use crate::store::{Call, LoadLock, Store, bounded};

/// A node's gateway to its L2 store.
pub(crate) struct L2 {
    store: Arc<dyn Store>,
    breaker: Breaker,
    op_timeout: Duration,
    counters: Arc<Counters>,
    /// The table's qualified name, for the spans.
    table: String,
}

impl L2 {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        breaker: Breaker,
        op_timeout: Duration,
        counters: Arc<Counters>,
        table: String,
    ) -> Self {
        L2 {
            store,
            breaker,
            op_timeout,
            counters,
            table,
        }
    }

    /// Runs one store call: refused at once while the breaker is open,
    /// bounded by the operation timeout, in a `c3.l2` span, and counted.
    pub(crate) async fn call<'s, T>(
        &'s self,
        op: &'static str,
        f: impl FnOnce(&'s dyn Store) -> Call<'s, T>,
    ) -> Result<T> {
        if self.breaker.allow() == Permit::Refused {
            return Err(Repr::CircuitOpen.into());
        }
        let span = crate::telemetry::l2_span(&*self.store, &self.table, op);
        let r = bounded(op, self.op_timeout, f(&*self.store))
            .instrument(span)
            .await;
        self.observe(&r);
        r
    }

    fn observe<T>(&self, r: &Result<T>) {
        match r {
            Ok(_) => {
                if self.breaker.success() {
                    Counters::inc(&self.counters.l2_breaker_closed);
                }
            }
            Err(e) if e.is_l2_unavailable() => {
                Counters::inc(&self.counters.l2_errors);
                if self.breaker.failure() {
                    Counters::inc(&self.counters.l2_breaker_opened);
                    tracing::warn!(target: "c3::l2", error = %e, "L2 circuit breaker opened");
                }
            }
            Err(_) => {}
        }
    }

    /// Takes the cross-node load lock for `key` if L2 is usable (`None`:
    /// not taken — breaker open, timed out, or the store has none). The
    /// wait itself may last `wait`; the operation timeout bounds the rest.
    /// The lock is held for a load of at most `load` (its hard timeout),
    /// between an L2 read and an L2 store: a node that goes silent holding
    /// it loses it after that.
    pub(crate) async fn load_lock(
        &self,
        key: &str,
        wait: Duration,
        load: Duration,
    ) -> Option<LoadLock> {
        let hold = load + self.op_timeout * 2;
        let fut = self.store.load_lock(key, wait, hold);
        if self.breaker.allow() == Permit::Refused {
            return None;
        }
        match tokio::time::timeout(wait + self.op_timeout, fut).await {
            Ok(r) => r.ok().flatten(),
            Err(_) => None,
        }
    }

    /// The store itself, for what runs its own bounds (the combiner's
    /// batches, the sweeper) and for closing it.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}
