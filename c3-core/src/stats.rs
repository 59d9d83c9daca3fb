//! Counters behind [`C3::stats`](crate::C3::stats).
//!
//! Plain relaxed atomics: each counter is independent, and a snapshot that is a
//! few increments behind is fine for monitoring. The telemetry layer reads the
//! same counters instead of keeping its own.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
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
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                    l1_entries: 0,
                    l1_bytes: 0,
                }
            }
        }
    };
}

counters! {
    /// Reads answered from L1.
    l1_hits,
    /// Reads that found nothing usable in L1 (including while L1 was bypassed).
    l1_misses,
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
    /// Invalidation messages this node published.
    invalidations_sent,
    /// Invalidation messages this node received from others and applied.
    invalidations_received,
    /// Payloads that could not be parsed (each one purged L1).
    malformed_notifications,
    /// Whole-L1 purges (listener loss, reconnect, clear, malformed input).
    purges,
    /// Times the listener connection was re-established after a loss.
    reconnects,
    /// L2 calls that failed or timed out.
    l2_errors,
    /// Times the L2 circuit breaker opened.
    l2_breaker_opened,
    /// Times a loader's circuit breaker opened.
    loader_breaker_opened,
}

impl Counters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
