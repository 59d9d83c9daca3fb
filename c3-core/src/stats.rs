//! Counters behind [`C3::stats`](crate::C3::stats).
//!
//! Plain relaxed atomics: each counter is independent, and a snapshot that is a
//! few increments behind is fine for monitoring. The telemetry layer reads the
//! same counters instead of keeping its own. The counters every read bumps
//! are [`Striped`], so cores serving hits do not fight over one cache line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A counter: bumped on the hot path, summed when read.
pub(crate) trait Count {
    fn inc(&self);
    fn get(&self) -> u64;
}

impl Count for AtomicU64 {
    fn inc(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// A counter split over cache lines: increments from different cores do not
/// bounce one line between them, and need no locked instruction. A thread
/// owns a slot while it lives ([`Owner`]): only it writes there, so a load
/// and a store count exactly. Threads beyond [`OWNED`] share the last slot,
/// with a locked add. Reads add the slots.
#[derive(Debug, Default)]
pub(crate) struct Striped {
    slots: [Slot; OWNED + 1],
}

/// Slots threads can own, per counter (each 128 bytes).
const OWNED: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))] // two lines: adjacent-line prefetching pairs them
struct Slot(AtomicU64);

/// Which slot this thread owns, the same in every counter; given back when
/// the thread ends (with its count left in place for the next owner to add
/// to), so short-lived threads do not use the slots up.
struct Owner(Option<usize>);

/// Bit `i` set: some thread owns slot `i`.
static OWNED_SLOTS: AtomicUsize = AtomicUsize::new(0);

impl Owner {
    fn claim() -> Owner {
        let mut taken = OWNED_SLOTS.load(Ordering::Relaxed);
        loop {
            let free = (!taken).trailing_zeros() as usize;
            if free >= OWNED {
                return Owner(None);
            }
            // Acquire: the previous owner's last counts are visible before
            // this thread adds to them.
            match OWNED_SLOTS.compare_exchange_weak(
                taken,
                taken | (1 << free),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Owner(Some(free)),
                Err(now) => taken = now,
            }
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            // Release: this thread's counts happen before the next claim.
            OWNED_SLOTS.fetch_and(!(1 << i), Ordering::Release);
        }
    }
}

thread_local! {
    static OWNER: Owner = Owner::claim();
}

impl Count for Striped {
    #[inline]
    fn inc(&self) {
        match OWNER.try_with(|o| o.0).ok().flatten() {
            Some(i) => {
                let slot = &self.slots[i].0;
                slot.store(slot.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            None => {
                self.slots[OWNED].0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn get(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident $(: $ty:ty)? ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: counters!(@ty $($ty)?), )*
        }

        /// A point-in-time copy of a cache's counters.
        ///
        /// Counters only grow; compute rates by taking two snapshots.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        #[non_exhaustive]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
            /// Entries in L1 (approximate: moka applies writes lazily).
            pub l1_entries: u64,
            /// Weighted size of L1 in bytes (approximate, as above).
            pub l1_bytes: u64,
            /// Invalidation messages this node published, of every kind.
            pub invalidations_sent: u64,
            /// Invalidation messages from others that this node applied, of every kind.
            pub invalidations_received: u64,
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                let mut s = Stats {
                    $( $name: self.$name.get(), )*
                    ..Stats::default()
                };
                s.invalidations_sent =
                    s.key_invalidations_sent + s.tag_invalidations_sent + s.clears_sent;
                s.invalidations_received = s.key_invalidations_received + s.clears_received;
                s
            }
        }
    };
    (@ty) => { AtomicU64 };
    (@ty $ty:ty) => { $ty };
}

counters! {
    /// Reads answered from L1.
    l1_hits: Striped,
    /// Reads that found nothing usable in L1 (including while L1 was bypassed).
    l1_misses: Striped,
    /// Reads answered from L2.
    l2_hits,
    /// Reads that found nothing in L2 either.
    l2_misses,
    /// Reads served a stale value under fail-safe.
    stale_hits,
    /// Loader calls made by `get_or_load`.
    loads,
    /// Loader calls that failed.
    load_errors,
    /// L1 fills skipped because the key was invalidated while it was read.
    fills_dropped,
    /// Writes (set or delete) committed to L2.
    writes,
    /// Key invalidation messages this node published (writes, deletes,
    /// `invalidate`).
    key_invalidations_sent,
    /// Tag invalidations this node published (`invalidate_tag`).
    tag_invalidations_sent,
    /// `clear` messages this node published.
    clears_sent,
    /// Key invalidation messages from others that this node applied (a tag
    /// invalidation arrives as the keys it removed).
    key_invalidations_received,
    /// `clear` messages from others that this node applied.
    clears_received,
    /// Values pushed by other nodes that this node put in L1 (`push_values`).
    pushed_values_kept,
    /// Payloads that could not be parsed (each one purged L1).
    malformed_notifications,
    /// Whole-L1 purges (listener loss, reconnect, clear, malformed input).
    purges,
    /// Times the listener connection was re-established after a loss.
    reconnects,
    /// Reconnects that kept L1, dropping only what the change log showed had
    /// changed (warm reconnect).
    warm_reconnects,
    /// Keys those reconnects dropped.
    replayed_keys,
    /// Heartbeat echoes that moved the warm-reconnect mark (every
    /// transaction visible in a heartbeat's snapshot was heard before its
    /// echo; a reconnect replays what came after the last mark).
    replay_marks,
    /// Reconnects with warm reconnect on that purged L1 all the same (the
    /// log could not prove what was missed; the reason is logged).
    warm_reconnect_fallbacks,
    /// Relay mode: times this node found relayed messages missing — a
    /// sequence gap, a new epoch (a relay restarted reading the slot) or a
    /// slow-consumer report from NATS. Each purged L1.
    relay_gaps,
    /// L2 calls that failed or timed out.
    l2_errors,
    /// Times the L2 circuit breaker opened.
    l2_breaker_opened,
    /// Times the L2 circuit breaker closed again after a successful probe.
    l2_breaker_closed,
    /// Times a loader's circuit breaker opened.
    loader_breaker_opened,
    /// Times a loader's circuit breaker closed again after a successful probe.
    loader_breaker_closed,
}

impl Counters {
    pub(crate) fn inc(counter: &impl Count) {
        counter.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counts_are_exact_across_threads_that_come_and_go() {
        let c = std::sync::Arc::new(Striped::default());
        // More threads than slots, in waves: owned slots are reused, the
        // rest share one.
        for _ in 0..3 {
            let threads: Vec<_> = (0..OWNED + 8)
                .map(|_| {
                    let c = std::sync::Arc::clone(&c);
                    std::thread::spawn(move || {
                        for _ in 0..10_000 {
                            c.inc();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        assert_eq!(c.get(), 3 * (OWNED as u64 + 8) * 10_000);
    }
}
