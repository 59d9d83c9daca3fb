//! The in-memory backend: an in-process stand-in for the PostgreSQL server.
//!
//! It has the same semantics as the Postgres L2 — one global version counter,
//! writes and their notifications published atomically and in commit order —
//! so several [`C3`](crate::C3) handles built on one [`MemoryServer`] behave
//! like a cluster of nodes sharing one database. Used by the embedded demo and
//! by fast tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::clock::unix_micros;
use crate::entry::{Row, WriteItem};
use crate::feed::Feed;
use crate::store::{Call, Fence, LoadLock, Store};

/// How many notifications a slow node may fall behind before it is treated
/// like a node that lost its connection (and purges L1).
const CHANNEL_CAPACITY: usize = 4096;

/// A shared in-memory "database" that several [`C3`](crate::C3) handles can use
/// as their L2, forming a simulated cluster inside one process.
///
/// Cloning is cheap and shares the same data.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), c3_core::Error> {
/// let server = c3_core::MemoryServer::new();
/// let a = c3_core::C3::builder().memory(&server).build().await?;
/// let b = c3_core::C3::builder().memory(&server).build().await?;
/// a.set("greeting", &"hello".to_string()).await?;
/// assert_eq!(b.get::<String>("greeting").await?.as_deref().map(String::as_str), Some("hello"));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryServer {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    notify: broadcast::Sender<Arc<str>>,
}

#[derive(Debug, Default)]
struct State {
    rows: HashMap<String, Row>,
    /// tag → keys; stale pairs (key deleted or re-set) are skipped on use.
    tags: HashMap<String, std::collections::HashSet<String>>,
    version: u64,
    /// key → version of its last deletion; `""` → of the last clear.
    deleted: HashMap<String, u64>,
    /// tag → version of its last invalidation.
    deleted_tags: HashMap<String, u64>,
}

impl MemoryServer {
    /// An empty server.
    #[must_use]
    pub fn new() -> Self {
        let (notify, _) = broadcast::channel(CHANNEL_CAPACITY);
        MemoryServer {
            inner: Arc::new(Shared {
                state: Mutex::default(),
                notify,
            }),
        }
    }

    /// Publishes a raw payload, like `SELECT pg_notify(channel, payload)` from
    /// a foreign client.
    pub fn notify(&self, payload: &str) {
        let _ = self.inner.notify.send(Arc::from(payload));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.notify.subscribe()
    }
}

impl Default for MemoryServer {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) struct MemoryStore {
    server: MemoryServer,
}

fn live(row: &Row, now_us: u64) -> bool {
    match row.stale_until_us.or(row.fresh_until_us) {
        Some(until) => until > now_us,
        None => true,
    }
}

impl MemoryStore {
    pub(crate) fn new(server: MemoryServer) -> Self {
        MemoryStore { server }
    }

    pub(crate) fn get(&self, key: &str, now: SystemTime) -> Option<Row> {
        let now = unix_micros(now);
        self.server
            .lock()
            .rows
            .get(key)
            .filter(|r| live(r, now))
            .cloned()
    }

    /// The memory server is one process under one lock: the version counter
    /// is the snapshot.
    pub(crate) fn get_for_load(&self, key: &str, now: SystemTime) -> (Option<Row>, Fence) {
        let now = unix_micros(now);
        let state = self.server.lock();
        let fence = Fence {
            snapshot: state.version.to_string(),
            started: None,
            taken_us: None,
        };
        (state.rows.get(key).filter(|r| live(r, now)).cloned(), fence)
    }

    pub(crate) fn fence(&self) -> Fence {
        Fence {
            snapshot: self.server.lock().version.to_string(),
            started: None,
            taken_us: None,
        }
    }

    /// The same rule as PostgreSQL's fill: refused if the key, a clear or
    /// one of its tags was deleted, or the row written, after the snapshot.
    pub(crate) fn fill(
        &self,
        items: &[WriteItem],
        header: &str,
        fence: &Fence,
    ) -> Vec<Option<u64>> {
        let mut state = self.server.lock();
        let seen: u64 = fence.snapshot.parse().unwrap_or(0);
        let after = |v: Option<&u64>| v.is_some_and(|v| *v > seen);
        let ok: Vec<bool> = items
            .iter()
            .map(|i| {
                !after(state.deleted.get(&i.key))
                    && !after(state.deleted.get(""))
                    && !i.tags.iter().any(|t| after(state.deleted_tags.get(t)))
                    && !after(state.rows.get(&i.key).map(|r| &r.version))
            })
            .collect();
        let kept: Vec<WriteItem> = items
            .iter()
            .zip(&ok)
            .filter(|(_, ok)| **ok)
            .map(|(i, _)| {
                let mut i = i.clone();
                if i.tags.is_empty() {
                    // A fill's tags replace the entry's, also when empty.
                    for keys in state.tags.values_mut() {
                        keys.remove(&i.key);
                    }
                }
                i.push = false;
                i
            })
            .collect();
        let mut versions = self.set_locked(&mut state, &kept, header).into_iter();
        ok.iter()
            .map(|ok| if *ok { versions.next() } else { None })
            .collect()
    }

    pub(crate) fn get_many(&self, keys: &[&str], now: SystemTime) -> Vec<(String, Row)> {
        let now = unix_micros(now);
        let state = self.server.lock();
        keys.iter()
            .filter_map(|k| {
                state
                    .rows
                    .get(*k)
                    .filter(|r| live(r, now))
                    .map(|r| ((*k).to_owned(), r.clone()))
            })
            .collect()
    }

    pub(crate) fn set(&self, items: &[WriteItem], header: &str) -> Vec<u64> {
        let mut state = self.server.lock();
        self.set_locked(&mut state, items, header)
    }

    // Publishing while the state lock is held is what makes the notification
    // order equal the commit order, as PostgreSQL guarantees.
    fn set_locked(&self, state: &mut State, items: &[WriteItem], header: &str) -> Vec<u64> {
        let mut versions = Vec::with_capacity(items.len());
        for item in items {
            state.version += 1;
            let version = state.version;
            state
                .rows
                .insert(item.key.clone(), Row::written(item.clone(), version));
            versions.push(version);
            if !item.tags.is_empty() {
                for keys in state.tags.values_mut() {
                    keys.remove(&item.key);
                }
                for t in &item.tags {
                    state
                        .tags
                        .entry(t.clone())
                        .or_default()
                        .insert(item.key.clone());
                }
            }
        }
        for p in crate::protocol::write_payloads(header, items, &versions) {
            self.server.notify(&p);
        }
        versions
    }

    pub(crate) fn delete(&self, keys: &[&str], header: &str) -> u64 {
        let mut state = self.server.lock();
        for k in keys {
            state.rows.remove(*k);
        }
        state.version += 1;
        let version = state.version;
        for k in keys {
            state.deleted.insert((*k).to_owned(), version);
        }
        for p in crate::protocol::pack(header, keys.iter().map(|k| format!("{version} {k}"))) {
            self.server.notify(&p);
        }
        version
    }

    pub(crate) fn invalidate_tag(&self, tag: &str, header: &str) -> (Vec<String>, u64) {
        let mut state = self.server.lock();
        let keys: Vec<String> = state
            .tags
            .remove(tag)
            .into_iter()
            .flatten()
            .filter(|k| state.rows.contains_key(k))
            .collect();
        for k in &keys {
            state.rows.remove(k);
        }
        state.version += 1;
        let version = state.version;
        for k in &keys {
            state.deleted.insert(k.clone(), version);
        }
        state.deleted_tags.insert(tag.to_owned(), version);
        for p in crate::protocol::pack(header, keys.iter().map(|k| format!("{version} {k}"))) {
            self.server.notify(&p);
        }
        (keys, version)
    }

    pub(crate) fn invalidate(&self, keys: &[&str], payloads: &[String]) {
        let mut state = self.server.lock();
        state.version += 1;
        let version = state.version;
        for k in keys {
            state.deleted.insert((*k).to_owned(), version);
        }
        for p in payloads {
            self.server.notify(p);
        }
    }

    pub(crate) fn publish(&self, payloads: &[String]) {
        let _state = self.server.lock();
        for p in payloads {
            self.server.notify(p);
        }
    }

    pub(crate) fn clear(&self, payload: &str) {
        let mut state = self.server.lock();
        state.rows.clear();
        state.version += 1;
        let version = state.version;
        state.deleted.insert(String::new(), version);
        self.server.notify(payload);
    }

    pub(crate) fn sweep(&self, now: SystemTime) -> u64 {
        let now = unix_micros(now);
        let mut state = self.server.lock();
        let before = state.rows.len();
        state.rows.retain(|_, r| live(r, now));
        (before - state.rows.len()) as u64
    }
}

/// The engine's view: the map answers at once, so each call is a ready
/// future around the method of the same name.
impl Store for MemoryStore {
    fn system(&self) -> &'static str {
        "c3-memory"
    }

    fn combines_writes(&self) -> bool {
        false
    }

    fn close(&self) {}

    fn get<'a>(&'a self, key: &'a str, now: SystemTime) -> Call<'a, Option<Row>> {
        Box::pin(std::future::ready(Ok(MemoryStore::get(self, key, now))))
    }

    fn get_for_load<'a>(&'a self, key: &'a str, now: SystemTime) -> Call<'a, (Option<Row>, Fence)> {
        Box::pin(std::future::ready(Ok(MemoryStore::get_for_load(
            self, key, now,
        ))))
    }

    fn fence(&self) -> Call<'_, Fence> {
        Box::pin(std::future::ready(Ok(MemoryStore::fence(self))))
    }

    fn fill<'a>(
        &'a self,
        items: &'a [WriteItem],
        header: &'a str,
        fence: &'a Fence,
    ) -> Call<'a, Vec<Option<u64>>> {
        Box::pin(std::future::ready(Ok(MemoryStore::fill(
            self, items, header, fence,
        ))))
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
        now: SystemTime,
    ) -> Call<'a, Vec<(String, Row)>> {
        Box::pin(std::future::ready(Ok(MemoryStore::get_many(
            self, keys, now,
        ))))
    }

    fn set<'a>(&'a self, items: &'a [WriteItem], header: &'a str) -> Call<'a, Vec<u64>> {
        Box::pin(std::future::ready(Ok(MemoryStore::set(
            self, items, header,
        ))))
    }

    fn delete<'a>(&'a self, keys: &'a [&'a str], header: &'a str) -> Call<'a, u64> {
        Box::pin(std::future::ready(Ok(MemoryStore::delete(
            self, keys, header,
        ))))
    }

    fn invalidate_tag<'a>(&'a self, tag: &'a str, header: &'a str) -> Call<'a, (Vec<String>, u64)> {
        Box::pin(std::future::ready(Ok(MemoryStore::invalidate_tag(
            self, tag, header,
        ))))
    }

    fn publish<'a>(&'a self, payloads: &'a [String]) -> Call<'a, ()> {
        MemoryStore::publish(self, payloads);
        Box::pin(std::future::ready(Ok(())))
    }

    fn invalidate<'a>(&'a self, keys: &'a [&'a str], payloads: &'a [String]) -> Call<'a, ()> {
        MemoryStore::invalidate(self, keys, payloads);
        Box::pin(std::future::ready(Ok(())))
    }

    fn clear<'a>(&'a self, payload: &'a str) -> Call<'a, ()> {
        MemoryStore::clear(self, payload);
        Box::pin(std::future::ready(Ok(())))
    }

    /// One process: the per-node singleflight is all there is to have.
    fn load_lock<'a>(
        &'a self,
        _key: &'a str,
        _wait: Duration,
        _hold: Duration,
    ) -> Call<'a, Option<LoadLock>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn sweep(&self, now: SystemTime, _batch: i64) -> Call<'_, u64> {
        Box::pin(std::future::ready(Ok(MemoryStore::sweep(self, now))))
    }
}

/// Starts the in-process store and its feed. The feed subscribes (and
/// L1 is enabled) before its task is spawned, so no message sent after
/// `build()` returns can be missed.
pub(crate) fn start(
    server: MemoryServer,
    feed: &Feed,
    shutdown: tokio::sync::watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Arc<dyn Store> {
    let rx = server.subscribe();
    feed.up();
    tasks.push(tokio::spawn(run_memory(feed.clone(), rx, shutdown)));
    Arc::new(MemoryStore::new(server))
}

/// The in-memory feed: the server's broadcast, applied to L1.
async fn run_memory(
    feed: Feed,
    mut rx: tokio::sync::broadcast::Receiver<Arc<str>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let _guard = feed.panic_guard();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            msg = rx.recv() => match msg {
                Ok(payload) => feed.message(&payload),
                // Messages were dropped: exactly like a lost connection, we no
                // longer know what changed, so everything goes.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(target: "c3::listener", missed = n, "fell behind the notification stream; purging L1");
                    feed.missed();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    feed.stopped();
}
