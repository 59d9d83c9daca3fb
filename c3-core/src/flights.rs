//! The loader's registry (see `crate::loader`): this node's loads in
//! flight — who joins which load, and when a caller must start its own. Apart from the loader so that the node's state
//! can own it without importing the loader (which works on that state).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::coherency::FillToken;
use crate::error::Error;
use crate::tier::Tier;

/// What a flight publishes to its waiters.
pub(crate) enum Answer<T> {
    Value(Arc<T>, Tier),
    Absent,
    Failed(Arc<Error>),
}

impl<T> Clone for Answer<T> {
    fn clone(&self) -> Self {
        match self {
            Answer::Value(v, t) => Answer::Value(Arc::clone(v), *t),
            Answer::Absent => Answer::Absent,
            Answer::Failed(e) => Answer::Failed(Arc::clone(e)),
        }
    }
}

/// What a waiter holds: the flight's outcome, once published.
pub(crate) type Slot<T> = watch::Receiver<Option<Answer<T>>>;

/// In-flight loads of this node, by key.
#[derive(Default)]
pub(crate) struct Flights {
    /// Values are `Slot<T>` for the caller's `T`, type-erased.
    map: Mutex<HashMap<String, Registered>>,
}

/// A flight in the map: its slot (type-erased) and the fill token taken
/// when it started, which says whether it may still be joined.
type Registered = (Arc<dyn Any + Send + Sync>, FillToken);

impl Flights {
    /// The slot of `key`'s flight if the caller may join it (`joinable` says
    /// whether its start token is still valid); else registers a new flight
    /// — unless a live flight of another type for the key keeps its place,
    /// then the new one runs unregistered rather than wait on a value it
    /// could not use. One lock for the check and the registration, so two
    /// callers cannot both start a flight a third would then miss.
    pub(crate) fn join_or_register<T: Send + Sync + 'static>(
        &self,
        key: &str,
        joinable: impl Fn(FillToken) -> bool,
        token: impl FnOnce() -> FillToken,
    ) -> Joined<T> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let existing_joinable = map.get(key).map(|(_, t)| joinable(*t));
        if existing_joinable == Some(true)
            && let Some((existing, _)) = map.get(key)
            && let Some(rx) = existing.downcast_ref::<Slot<T>>()
        {
            return Joined::Existing(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        let marker: Arc<dyn Any + Send + Sync> = Arc::new(rx.clone());
        if existing_joinable != Some(true) {
            map.insert(key.to_owned(), (Arc::clone(&marker), token()));
        }
        Joined::New(tx, rx, marker)
    }

    /// Removes `key`'s flight if it is still the one `marker` registered.
    pub(crate) fn finished(&self, key: &str, marker: &Arc<dyn Any + Send + Sync>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|(m, _)| Arc::ptr_eq(m, marker)) {
            map.remove(key);
        }
    }
}

/// What [`Flights::join_or_register`] decided: join this flight, or run a new
/// one publishing on the sender (its marker identifies it in the map).
pub(crate) enum Joined<T> {
    Existing(Slot<T>),
    New(
        watch::Sender<Option<Answer<T>>>,
        Slot<T>,
        Arc<dyn Any + Send + Sync>,
    ),
}
