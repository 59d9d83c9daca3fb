//! The invalidation feed, as the engine sees it: how a transport — the
//! PostgreSQL LISTEN session (`crate::postgres::listen`), the in-process
//! server's broadcast (`crate::memory`), or a second transport beside them —
//! tells this node what other nodes changed, and whether it can still tell.
//!
//! A transport holds a [`Feed`] and calls it: [`message`](Feed::message) for
//! each notification (PROTOCOL.md §3), and the liveness calls as its link
//! comes and goes. L1 is used only while a feed says it is up: a message a
//! transport cannot prove it delivered is a message L1 may have missed.

use std::sync::Arc;

use tokio::sync::watch;

use crate::coherency::Coherency;
use crate::stats::Counters;

/// The state of a node's LISTEN connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerState {
    /// Connecting for the first time; L1 is bypassed.
    Starting,
    /// LISTEN is active; L1 is in use.
    Listening,
    /// The connection was lost or found unhealthy; L1 was purged and is
    /// bypassed until LISTEN is re-established.
    Reconnecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
    },
    /// The cache was shut down.
    Stopped,
}

impl ListenerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ListenerState::Starting => "starting",
            ListenerState::Listening => "listening",
            ListenerState::Reconnecting { .. } => "reconnecting",
            ListenerState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ListenerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport's handle on this node's L1, and the liveness it reports.
#[derive(Clone)]
pub(crate) struct Feed {
    coherency: Arc<Coherency>,
    state: Arc<watch::Sender<ListenerState>>,
}

impl Feed {
    pub(crate) fn new(coherency: Arc<Coherency>) -> Self {
        let (state, _) = watch::channel(ListenerState::Starting);
        Feed {
            coherency,
            state: Arc::new(state),
        }
    }

    /// One notification payload.
    pub(crate) fn message(&self, payload: &str) {
        self.coherency.apply_payload(payload);
    }

    /// Delivery is proven from now on (connected, subscribed, the
    /// transport's own probe heard): L1 is purged of what it may have
    /// missed, then used.
    pub(crate) fn up(&self) {
        self.coherency.enable();
        self.state.send_replace(ListenerState::Listening);
    }

    /// Up again, and the transport proved which keys changed while it was
    /// down: only those are dropped, the rest of L1 is used again.
    pub(crate) fn up_dropping(&self, changed: &[String]) {
        self.coherency.resume(changed);
        self.state.send_replace(ListenerState::Listening);
    }

    /// The link is lost: L1 is purged and bypassed.
    pub(crate) fn down(&self) {
        self.coherency.disable();
        self.state
            .send_replace(ListenerState::Reconnecting { attempt: 0 });
    }

    /// The link is lost, and the transport will be able to tell what
    /// changed meanwhile: L1 is bypassed but kept for [`up_dropping`](Self::up_dropping).
    pub(crate) fn down_keeping(&self) {
        self.coherency.suspend();
        self.state
            .send_replace(ListenerState::Reconnecting { attempt: 0 });
    }

    /// Another failed attempt to come back up.
    pub(crate) fn retrying(&self, attempt: u32) {
        self.state
            .send_replace(ListenerState::Reconnecting { attempt });
    }

    /// Messages were lost while up (the transport fell behind): L1 is
    /// purged and stays in use.
    pub(crate) fn missed(&self) {
        self.coherency.purge();
    }

    /// A guard for the task that runs this feed's transport: if the task
    /// panics (a user's `on_applied` observer, a tracing layer…), nobody
    /// delivers messages any more, so L1 is turned off for good as the
    /// stack unwinds — the task would otherwise die with L1 still trusted.
    pub(crate) fn panic_guard(&self) -> PanicGuard {
        PanicGuard(self.clone())
    }

    /// The node shuts down: L1 is purged and off for good.
    pub(crate) fn stopped(&self) {
        self.coherency.disable();
        self.state.send_replace(ListenerState::Stopped);
    }

    /// The highest version this node has applied, committed or read (a
    /// replay from another history is below it).
    pub(crate) fn highest_version(&self) -> u64 {
        self.coherency.highest_version()
    }

    /// How many entries L1 holds.
    pub(crate) fn l1_entries(&self) -> u64 {
        self.coherency.l1_size().0
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.coherency.counters
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.coherency.node_id
    }

    pub(crate) fn state(&self) -> ListenerState {
        *self.state.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ListenerState> {
        self.state.subscribe()
    }
}

/// See [`Feed::panic_guard`].
pub(crate) struct PanicGuard(Feed);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(target: "c3::listener",
                "the invalidation listener panicked; L1 is purged and off until the cache is rebuilt");
            self.0.stopped();
        }
    }
}
