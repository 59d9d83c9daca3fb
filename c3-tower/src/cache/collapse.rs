//! Request collapsing: requests that miss the same storage key on this node
//! while one of them is upstream wait for that one (the leader) instead of
//! going upstream themselves (see `miss` for what a waiter does then).
//!
//! The in-flight map is all this file needs: a [`LeaderGuard`] holds it, so
//! it can take its entry out on every exit path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Requests being fetched upstream on this node, by storage key.
pub(crate) type InFlights = Mutex<HashMap<String, InFlight>>;

/// A request upstream on this node that others may wait for.
pub(crate) struct InFlight {
    rx: watch::Receiver<Option<Collapsed>>,
}

/// The result of a collapsed miss, for the requests that waited on it.
#[derive(Clone)]
pub(crate) enum Collapsed {
    /// The leader's response is in the cache: look it up.
    Stored,
    /// Not storable (or the leader failed): each waiter goes upstream itself.
    Forward,
}

/// Waits for the leader's outcome; `true` if it stored its response.
pub(crate) async fn wait_for_leader(
    mut rx: watch::Receiver<Option<Collapsed>>,
    timeout: std::time::Duration,
) -> bool {
    let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
    matches!(waited, Ok(Ok(r)) if matches!(*r, Some(Collapsed::Stored)))
}

/// Joins the request upstream for `key`, or — if there is none — becomes it.
/// Joining is always safe: a waiter does not take the leader's response, it
/// looks the cache up again once the leader has stored (see the module docs).
pub(crate) fn join_or_lead(
    in_flight: &Arc<InFlights>,
    key: &str,
) -> Result<watch::Receiver<Option<Collapsed>>, LeaderGuard> {
    let mut map = in_flight.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(up) = map.get(key) {
        return Ok(up.rx.clone());
    }
    let (tx, rx) = watch::channel(None);
    map.insert(key.to_owned(), InFlight { rx: rx.clone() });
    Err(LeaderGuard {
        in_flight: Arc::clone(in_flight),
        key: key.to_owned(),
        tx,
        rx,
    })
}

/// Publishes `Forward` to waiters unless the leader published a result; runs
/// on every exit path, including a dropped future or a panic.
pub(crate) struct LeaderGuard {
    in_flight: Arc<InFlights>,
    key: String,
    tx: watch::Sender<Option<Collapsed>>,
    /// Ours, to recognise our entry in the map (a newer leader may have
    /// replaced it).
    rx: watch::Receiver<Option<Collapsed>>,
}

impl LeaderGuard {
    /// Becomes the only request upstream for `key` on this node, if no other
    /// is (`None`: one is).
    pub(crate) fn try_lead(in_flight: &Arc<InFlights>, key: String) -> Option<LeaderGuard> {
        join_or_lead(in_flight, &key).err()
    }

    pub(crate) fn publish(&self, c: Collapsed) {
        self.tx.send_replace(Some(c));
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|up| up.rx.same_channel(&self.rx))
        {
            map.remove(&self.key);
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if self.tx.borrow().is_none() {
            self.publish(Collapsed::Forward);
        }
    }
}
