//! The node's registry of loads in flight and of the loaders' circuit
//! breakers: who joins which load, and when a caller must start its own.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::flight::Flight;
use super::{LoadOptions, Outcome};
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::cache::C3;
use crate::coherency::FillToken;

/// What a waiter holds: the flight's outcome, once published.
pub(super) type Slot<T> = watch::Receiver<Option<Outcome<T>>>;

/// In-flight loads of this node, by key, and the breaker of each source.
#[derive(Default)]
pub(crate) struct Flights {
    /// Values are `Slot<T>` for the caller's `T`, type-erased.
    map: Mutex<HashMap<String, Registered>>,
    breakers: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
}

/// A flight in the map: its slot (type-erased) and the fill token taken
/// when it started, which says whether it may still be joined.
type Registered = (Arc<dyn Any + Send + Sync>, FillToken);

impl Flights {
    /// The breaker for `source`, created with `config` on first use.
    pub(super) fn breaker(&self, source: &Arc<str>, config: BreakerConfig) -> Arc<Breaker> {
        Arc::clone(
            self.breakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(Arc::clone(source))
                .or_insert_with(|| Arc::new(Breaker::new(config))),
        )
    }

    /// Every source's breaker state, for the metrics.
    pub(crate) fn breaker_states(&self) -> Vec<(Arc<str>, BreakerState)> {
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(source, b)| (Arc::clone(source), b.state()))
            .collect()
    }

    /// The state of `source`'s breaker (`Closed` if it has never been used).
    pub(super) fn breaker_state(&self, source: &str) -> BreakerState {
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .map_or(BreakerState::Closed, |b| b.state())
    }
}

/// Joins the flight for `key` or starts one in its own task. `refresh` skips
/// L1/L2 and reloads from the source; `stale` is the fail-safe fallback the
/// caller already holds.
pub(super) fn join_or_start<T, F, Fut, E>(
    c3: &C3,
    key: &str,
    opts: &LoadOptions,
    loader: F,
    stale: Option<Option<Arc<T>>>,
    refresh: bool,
) -> Slot<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut map = c3.flights().map.lock().unwrap_or_else(|e| e.into_inner());
    // A flight that started before this node applied an invalidation of the
    // key, completed a write to it or read a newer version of it may answer
    // with the value from before: a caller arriving now must not join it, or
    // it could read older data than it (or another task of this node) has
    // already seen. It starts a flight of its own, which later callers join
    // instead. This holds while L1 is off too.
    let existing_joinable = map
        .get(key)
        .map(|(_, token)| c3.coherency().join_valid(*token));
    if existing_joinable == Some(true)
        && let Some((existing, _)) = map.get(key)
        && let Some(rx) = existing.downcast_ref::<Slot<T>>()
    {
        return rx.clone();
    }
    let (tx, rx) = watch::channel(None);
    // A live flight of another type for this key keeps its slot; this one
    // runs unregistered rather than wait on a value it could not use.
    let marker: Arc<dyn Any + Send + Sync> = Arc::new(rx.clone());
    if existing_joinable != Some(true) {
        let token = c3.coherency().join_token(key);
        map.insert(key.to_owned(), (Arc::clone(&marker), token));
    }
    drop(map);
    let guard = FlightGuard {
        c3: c3.clone(),
        key: key.to_owned(),
        marker,
    };
    let c3 = c3.clone();
    let key = key.to_owned();
    let opts = opts.clone();
    // The flight's L2 and source spans belong to the call that started it.
    let flight = async move {
        let _guard = guard;
        Flight::new(&c3, &key, &opts, stale, &tx)
            .run(loader, refresh)
            .await;
    };
    tokio::spawn(tracing::Instrument::in_current_span(flight));
    rx
}

/// Removes a finished flight from the map, also if its task panicked.
struct FlightGuard {
    c3: C3,
    key: String,
    marker: Arc<dyn Any + Send + Sync>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self
            .c3
            .flights()
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|(m, _)| Arc::ptr_eq(m, &self.marker))
        {
            map.remove(&self.key);
        }
    }
}
