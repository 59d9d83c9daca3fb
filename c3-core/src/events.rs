//! [`Applied`]: what the coherency engine reports about each notification it
//! applies, for telemetry (propagation lag, invalidation counts) and for
//! benchmarks that time delivery.

use std::sync::Arc;
use std::time::Duration;

/// A notification from another node or client that this node applied to its
/// L1. Handed to the observer set with
/// [`C3Builder::on_applied`](crate::C3Builder::on_applied), on the listener
/// task, right after L1 was updated.
#[derive(Debug)]
#[non_exhaustive]
pub struct Applied<'a> {
    /// The sender's node id (`None`: a bare key or an anonymous sender).
    pub from: Option<&'a str>,
    /// Time since the sender stamped the message (c3 messages only; across
    /// machines this includes their clock difference).
    pub lag: Option<Duration>,
    /// Keys written, with the version their commit drew (`k` messages).
    pub written: &'a [(u64, String)],
    /// Keys dropped whatever their version (bare keys, `i` messages).
    pub invalidated: &'a [String],
    /// Whether the message dropped all of L1 (`c`).
    pub clear: bool,
}

/// Receives every [`Applied`]. It runs on the listener task, so it must be
/// quick and must not block (record, count, or send on a channel).
pub type AppliedObserver = Arc<dyn Fn(&Applied<'_>) + Send + Sync>;
