//! [`C3`], the handle applications use: typed reads and writes over L1 and L2.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::builder::C3Builder;
use crate::clock::{Clock, unix_micros};
use crate::coherency::Coherency;
use crate::entry::{L1Entry, Row, WriteItem};
use crate::entry::{State, decode_row, typed_value};
use crate::error::{Repr, Result};
use crate::feed::{Feed, ListenerState};
use crate::flights::Flights;
use crate::key::validate_key;
use crate::protocol;
use crate::stats::{Counters, Stats};
use crate::telemetry;
use crate::tier::{Outcome, Tier};
use tracing::Instrument;

/// A coherent two-tier cache: L1 in this process, L2 in PostgreSQL (or a
/// [`MemoryServer`](crate::MemoryServer)), kept consistent across nodes by
/// LISTEN/NOTIFY.
///
/// Cloning is cheap and shares everything. Background tasks (the listener and
/// the sweeper) stop when the last clone is dropped or on [`shutdown`](Self::shutdown).
///
/// # Consistency
///
/// A read never returns a value older than a write whose notification this node
/// has applied before the read started, and never a value written before a
/// commit made through this same handle. While the listener connection is down,
/// L1 is bypassed and reads go to L2.
#[derive(Clone)]
pub struct C3 {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Limits {
    /// Which codec writes which keys.
    pub(crate) codecs: crate::codec::CodecPolicy,
    /// Values whose serialised form is longer than this are stored LZ4-compressed.
    pub(crate) compress_above: Option<usize>,
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) op_timeout: Duration,
    /// Key prefixes whose writes carry their values to peers.
    pub(crate) push_prefixes: Vec<String>,
}

impl Limits {
    fn pushes(&self, key: &str) -> bool {
        self.push_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }
}

/// Where a cache lives in PostgreSQL, for SQL written outside c3 — an
/// adapter's transactions, triggers, other languages (`docs/PROTOCOL.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlNames {
    /// The L2 table, quoted and schema-qualified: `"public"."cache_data"`.
    pub table: String,
    /// The notification channel (an identifier that needs no quoting).
    pub channel: String,
    /// The invalidation function, quoted and schema-qualified.
    /// `SELECT <function>($channel, $keys::text[], $tags::text[])` deletes
    /// the keys and every key tagged with one of the tags, and notifies every
    /// node — inside the caller's transaction, so it commits or rolls back
    /// with the caller's own writes. It returns the version it published —
    /// `NULL` only when it names no key at all (no keys given, and no row
    /// carries the tags); PROTOCOL.md §2 "Invalidating from SQL".
    pub invalidate_function: String,
}

pub(crate) struct Inner {
    pub(crate) sql_names: SqlNames,
    /// Whether spans carry keys (`C3Builder::trace_keys`).
    pub(crate) trace_keys: bool,
    pub(crate) combiner: Arc<crate::combiner::Combiner>,
    pub(crate) coherency: Arc<Coherency>,
    /// What the invalidation feed reports (and how shutdown stops L1).
    pub(crate) feed: Feed,
    /// The one way into L2 (breaker, timeout, span, counters).
    pub(crate) l2: crate::l2::L2,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) metrics: Arc<crate::telemetry::Metrics>,
    pub(crate) limits: Limits,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The loaders' breakers, one per source.
    pub(crate) loader_breakers: crate::breaker::SourceBreakers,
    pub(crate) flights: Flights,
    #[cfg(feature = "test-util")]
    pub(crate) fill_hook: Option<crate::builder::FillHook>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The tasks hold only the parts they need, never `Inner`, so this runs
        // when the last handle goes and is what stops them.
        self.shutdown.send_replace(true);
    }
}

impl telemetry::metrics::Observed for Inner {
    fn counters(&self) -> Stats {
        self.counters.snapshot()
    }

    fn l1_size(&self) -> (u64, u64) {
        self.coherency.l1_size()
    }

    fn listener_state(&self) -> &'static str {
        self.feed.state().as_str()
    }

    fn l2_breaker(&self) -> crate::breaker::BreakerState {
        self.l2.breaker().state()
    }

    fn loader_breakers(&self) -> Vec<(Arc<str>, crate::breaker::BreakerState)> {
        self.loader_breakers.states()
    }
}

impl std::fmt::Debug for C3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("C3")
            .field("node_id", &self.inner.coherency.node_id)
            .field("listener", &self.inner.feed.state())
            .finish_non_exhaustive()
    }
}

impl C3 {
    pub(crate) fn coherency(&self) -> &Coherency {
        &self.inner.coherency
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// The node's gateway to L2.
    pub(crate) fn l2(&self) -> &crate::l2::L2 {
        &self.inner.l2
    }

    pub(crate) fn loader_breakers(&self) -> &crate::breaker::SourceBreakers {
        &self.inner.loader_breakers
    }

    /// The TTL of writes that do not give one (`None`: until deleted).
    #[must_use]
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.limits.default_ttl
    }

    /// The current time on this cache's [`Clock`] (the system clock unless
    /// the builder was given another), for layers that make time-based
    /// decisions consistent with the cache's own expiry.
    #[must_use]
    pub fn now(&self) -> std::time::SystemTime {
        self.inner.clock.now()
    }

    /// The longest key this cache accepts, in bytes.
    #[must_use]
    pub fn max_key_bytes(&self) -> usize {
        self.inner.limits.max_key_bytes
    }

    /// Starts configuring a cache.
    pub fn builder() -> C3Builder {
        C3Builder::default()
    }

    pub(crate) fn from_inner(inner: Inner) -> C3 {
        C3 {
            inner: Arc::new(inner),
        }
    }

    /// This node's id, as written in its notifications.
    #[must_use]
    pub fn node_id(&self) -> &str {
        &self.inner.coherency.node_id
    }

    /// The listener's current state.
    #[must_use]
    pub fn listener_state(&self) -> ListenerState {
        self.inner.feed.state()
    }

    /// A receiver that sees every listener state change (e.g. for health checks).
    #[must_use]
    pub fn watch_listener(&self) -> watch::Receiver<ListenerState> {
        self.inner.feed.subscribe()
    }

    /// A snapshot of this node's counters and L1 size.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let mut s = self.inner.counters.snapshot();
        let (entries, bytes) = self.inner.coherency.l1_size();
        s.l1_entries = entries;
        s.l1_bytes = bytes;
        s
    }

    /// Whether L1 currently holds a fresh entry for `key` (no I/O). Meant for
    /// diagnostics and tests; reads decide on their own.
    #[must_use]
    pub fn is_cached_locally(&self, key: &str) -> bool {
        let now = self.now_us();
        self.inner
            .coherency
            .peek(key)
            .is_some_and(|e| e.state(now) == State::Fresh)
    }

    pub(crate) fn now_us(&self) -> u64 {
        unix_micros(self.inner.clock.now())
    }

    fn check_open(&self) -> Result<()> {
        if *self.inner.shutdown.borrow() {
            return Err(Repr::Shutdown.into());
        }
        Ok(())
    }

    pub(crate) fn check_key(&self, key: &str) -> Result<()> {
        self.check_open()?;
        self.validate_key(key)
    }

    /// Checks `key` against this cache's key rules (non-empty, at most
    /// `max_key_bytes`, no control characters, not starting with `c3|`),
    /// for adapters that build keys and send them through SQL.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKey`](crate::ErrorKind::InvalidKey).
    pub fn validate_key(&self, key: &str) -> Result<()> {
        validate_key(key, self.inner.limits.max_key_bytes)?;
        Ok(())
    }

    pub(crate) fn header(&self, op: char) -> String {
        protocol::header(&self.inner.coherency.node_id, self.now_us(), op)
    }

    /// Reads `key`: from L1 when it holds a fresh entry (no I/O, no decoding),
    /// otherwise from L2, filling L1.
    ///
    /// Returns `None` when the key is absent or expired. The value is shared
    /// with L1, hence the `Arc`.
    ///
    /// # Errors
    ///
    /// An invalid key; an L2 error or timeout; [`ErrorKind::Decode`](crate::ErrorKind::Decode)
    /// if the stored value is not a `T`.
    ///
    /// # Cancellation
    ///
    /// Dropping the future is safe: at worst L1 is not filled.
    pub async fn get<T>(&self, key: &str) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        Ok(self.get_with_tier::<T>(key).await?.0)
    }

    /// [`get`](Self::get), and which tier answered — [`Tier::L1`] (no I/O)
    /// or [`Tier::L2`] — found or not. One lookup: unlike asking
    /// [`is_cached_locally`](Self::is_cached_locally) first, the tier
    /// reported is the one that gave this answer.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), c3_core::Error> {
    /// use c3_core::{C3, MemoryServer, Tier};
    ///
    /// let db = MemoryServer::new();
    /// let (a, b) = (C3::builder().memory(&db).build().await?, C3::builder().memory(&db).build().await?);
    /// a.set("k", &1u8).await?;
    /// let (v, tier) = b.get_with_tier::<u8>("k").await?; // b reads L2, and keeps it
    /// assert_eq!((v.as_deref(), tier), (Some(&1), Tier::L2));
    /// assert_eq!(b.get_with_tier::<u8>("k").await?.1, Tier::L1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    pub async fn get_with_tier<T>(&self, key: &str) -> Result<(Option<Arc<T>>, Tier)>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let mut op = telemetry::op!(self, Get, key, read);
        self.check_key(key)?;
        if let Some(v) = self.l1_get::<T>(key) {
            // Answered in memory: no child span, no I/O.
            op.record(
                Some(Tier::L1),
                if v.is_some() {
                    Outcome::Hit
                } else {
                    Outcome::Miss
                },
            );
            return Ok((v, Tier::L1));
        }
        op.start_timer();
        let r = self
            .get_from_l2::<T>(key, &op)
            .instrument(op.span.clone())
            .await;
        op.record_result(&r);
        Ok((r?, Tier::L2))
    }

    async fn get_from_l2<T>(&self, key: &str, op: &telemetry::Op<'_>) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        Counters::inc(&self.inner.counters.l1_misses);
        let token = self.inner.coherency.fill_token(key);
        let now = self.inner.clock.now();
        let row = self.inner.l2.call("get", |s| s.get(key, now)).await?;
        #[cfg(feature = "test-util")]
        if let Some(hook) = &self.inner.fill_hook {
            hook(key).await;
        }
        let Some(row) = row.filter(|r| r.state(unix_micros(now)) == State::Fresh) else {
            Counters::inc(&self.inner.counters.l2_misses);
            op.record(Some(Tier::L2), Outcome::Miss);
            return Ok(None);
        };
        Counters::inc(&self.inner.counters.l2_hits);
        op.record(Some(Tier::L2), Outcome::Hit);
        let (value, entry) = decode_row::<T>(key, row, unix_micros(now))?;
        self.keep_read(key, token, entry);
        Ok(value)
    }

    /// After reading `entry` from L2: puts it in L1 (if `token` still
    /// allows) and records its version as known (see `note_version`).
    pub(crate) fn keep_read(
        &self,
        key: &str,
        token: Option<crate::coherency::FillToken>,
        entry: L1Entry,
    ) {
        let version = entry.version;
        if let Some(token) = token {
            self.inner.coherency.fill(key, token, entry);
        }
        self.inner.coherency.note_version(key, version);
    }

    /// L1 lookup: `Some(value)` for a fresh entry of the right type (or a
    /// cached "not found"), `None` for a miss.
    fn l1_get<T>(&self, key: &str) -> Option<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let e = self.inner.coherency.peek(key)?;
        if e.state(self.now_us()) != State::Fresh {
            return None;
        }
        // A different type under the same key is treated as a miss; the L2
        // read that follows replaces the entry with the requested type.
        let v = self.l1_value::<T>(key, &e)?;
        Counters::inc(&self.inner.counters.l1_hits);
        Some(v)
    }

    /// The value of an L1 entry as a `T`; a value a peer pushed is decoded
    /// here, once (the entry is replaced by the decoded value).
    pub(crate) fn l1_value<T>(&self, key: &str, e: &Arc<L1Entry>) -> Option<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        if let Some(v) = typed_value::<T>(&e.value) {
            return Some(v);
        }
        let pushed = e.value.downcast_ref::<crate::coherency::PushedJson>()?;
        let v: Arc<T> = Arc::new(serde_json::from_str(&pushed.0).ok()?);
        self.inner
            .coherency
            .replace_decoded(key, e, Arc::clone(&v) as Arc<dyn Any + Send + Sync>);
        Some(Some(v))
    }

    /// Reads several keys with at most one L2 round trip. The result has one
    /// slot per key, in order.
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get); an invalid key fails the whole call before any I/O.
    pub async fn get_many<T>(&self, keys: &[&str]) -> Result<Vec<Option<Arc<T>>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let op = telemetry::op!(self, GetMany, keys.first().copied().unwrap_or(""));
        let r = self
            .get_many_inner(keys, &op)
            .instrument(op.span.clone())
            .await;
        op.record_result(&r);
        r
    }

    async fn get_many_inner<T>(
        &self,
        keys: &[&str],
        op: &telemetry::Op<'_>,
    ) -> Result<Vec<Option<Arc<T>>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        for k in keys {
            self.check_key(k)?;
        }
        let mut out: Vec<Option<Arc<T>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.l1_get::<T>(k) {
                Some(hit) => out.push(hit),
                None => {
                    Counters::inc(&self.inner.counters.l1_misses);
                    missing.push((i, *k, self.inner.coherency.fill_token(k)));
                    out.push(None);
                }
            }
        }
        if missing.is_empty() {
            op.record(Some(Tier::L1), Outcome::Ok);
            return Ok(out);
        }
        op.record(Some(Tier::L2), Outcome::Ok);
        let now = self.inner.clock.now();
        let miss_keys: Vec<&str> = missing.iter().map(|(_, k, _)| *k).collect();
        let rows = self
            .inner
            .l2
            .call("get_many", |s| s.get_many(&miss_keys, now))
            .await?;
        let mut rows: HashMap<String, Row> = rows.into_iter().collect();
        let now_us = unix_micros(now);
        for (i, k, token) in missing {
            match rows.remove(k).filter(|r| r.state(now_us) == State::Fresh) {
                Some(row) => {
                    Counters::inc(&self.inner.counters.l2_hits);
                    let (value, entry) = decode_row::<T>(k, row, now_us)?;
                    self.keep_read(k, token, entry);
                    out[i] = value;
                }
                None => Counters::inc(&self.inner.counters.l2_misses),
            }
        }
        Ok(out)
    }

    /// Writes `value` under `key` with the default TTL. See [`set_with_ttl`](Self::set_with_ttl).
    ///
    /// # Errors
    ///
    /// As for [`set_with_ttl`](Self::set_with_ttl).
    pub async fn set<T>(&self, key: &str, value: &T) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.set_with_ttl(key, value, self.inner.limits.default_ttl)
            .await
    }

    /// Writes `value` under `key`, fresh for `ttl` (`None`: until deleted).
    ///
    /// The L2 upsert and the notification to other nodes are one transaction:
    /// if it fails nothing is published and no L1 changes. On success this
    /// node's L1 holds the new value (decoded back from its encoding, so it is
    /// exactly what other nodes will read), and every other node drops its
    /// older copy when the notification arrives.
    ///
    /// # Errors
    ///
    /// An invalid key; [`ErrorKind::ValueTooLarge`](crate::ErrorKind::ValueTooLarge);
    /// [`ErrorKind::Encode`](crate::ErrorKind::Encode); an L2 error or timeout.
    /// After a timeout the write may or may not have committed; either way the
    /// cache stays coherent, because the notification goes with the commit.
    ///
    /// # Concurrent calls on the same key
    ///
    /// The last commit wins in L2 and on every node; a slower writer's L1 fill
    /// never replaces a newer version.
    pub async fn set_with_ttl<T>(&self, key: &str, value: &T, ttl: Option<Duration>) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.set_entries::<T>(&[(key, value)], ttl, &[]).await
    }

    /// Writes `value` like [`set_with_ttl`](Self::set_with_ttl) and attaches
    /// `tags` to it (replacing any earlier tags of the key), so that
    /// [`invalidate_tag`](Self::invalidate_tag) can remove it with every other
    /// entry carrying the same tag. Tags follow the same rules as keys.
    ///
    /// # Errors
    ///
    /// As for [`set_with_ttl`](Self::set_with_ttl), and an invalid tag.
    pub async fn set_tagged<T>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        for t in tags {
            self.check_key(t)?;
        }
        self.set_entries::<T>(&[(key, value)], ttl, tags).await
    }

    /// Deletes every entry tagged `tag` from L2 and from every node's L1, in
    /// one transaction. Returns how many entries were removed.
    ///
    /// # Errors
    ///
    /// An invalid tag; an L2 error or timeout.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<usize> {
        self.check_key(tag)?;
        let header = self.header('k');
        let (keys, version) = self
            .inner
            .l2
            .call("invalidate_tag", |s| s.invalidate_tag(tag, &header))
            .await?;
        if !keys.is_empty() {
            Counters::inc(&self.inner.counters.tag_invalidations_sent);
        }
        for k in &keys {
            self.inner.coherency.apply_written(k, version);
        }
        Ok(keys.len())
    }

    /// Writes several entries in one transaction with one round of notifications.
    /// If a key appears twice, the last value wins.
    ///
    /// # Errors
    ///
    /// As for [`set_with_ttl`](Self::set_with_ttl); nothing is written if any entry is invalid.
    pub async fn set_many<T>(&self, entries: &[(&str, T)]) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.set_many_with_ttl(entries, self.inner.limits.default_ttl)
            .await
    }

    /// [`set_many`](Self::set_many) with a TTL for every entry (`None`: until deleted).
    ///
    /// # Errors
    ///
    /// As for [`set_many`](Self::set_many).
    pub async fn set_many_with_ttl<T>(
        &self,
        entries: &[(&str, T)],
        ttl: Option<Duration>,
    ) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let refs: Vec<(&str, &T)> = entries.iter().map(|(k, v)| (*k, v)).collect();
        self.set_entries(&refs, ttl, &[]).await
    }

    /// Where this cache lives in PostgreSQL, for SQL that invalidates it from
    /// inside another transaction (see [`SqlNames::invalidate_function`]).
    #[must_use]
    pub fn sql_names(&self) -> &SqlNames {
        &self.inner.sql_names
    }

    /// Tells this node that `keys` were written at `version` by a transaction
    /// it committed outside c3 (e.g. through
    /// [`SqlNames::invalidate_function`]), so its L1 drops older copies now
    /// rather than when the notification comes back: the node reads its own
    /// writes at once. Other nodes learn from the notification as usual.
    pub fn note_external_write(&self, keys: &[&str], version: u64) {
        for k in keys {
            self.inner.coherency.apply_written(k, version);
        }
    }

    async fn set_entries<T>(
        &self,
        entries: &[(&str, &T)],
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let first = entries.first().map_or("", |(k, _)| *k);
        let op = telemetry::op!(self, Set, first);
        let r = self
            .set_entries_inner(entries, ttl, tags)
            .instrument(op.span.clone())
            .await;
        op.record_done(&r);
        r
    }

    async fn set_entries_inner<T>(
        &self,
        entries: &[(&str, &T)],
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        // Last value wins for duplicate keys (Postgres would refuse to update
        // one row twice in a statement).
        let mut order: Vec<&str> = Vec::with_capacity(entries.len());
        let mut latest: HashMap<&str, &T> = HashMap::with_capacity(entries.len());
        for (k, v) in entries {
            self.check_key(k)?;
            if latest.insert(k, v).is_none() {
                order.push(k);
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let now = self.inner.clock.now();
        let fresh_until = ttl.map(|t| now + t);
        let mut items = Vec::with_capacity(order.len());
        for k in &order {
            let mut item = WriteItem::new(k, self.encode(k, latest[k])?, fresh_until);
            item.tags = tags.iter().map(|t| (*t).to_owned()).collect();
            item.push = self.inner.limits.pushes(k);
            items.push(item);
        }
        self.write_items::<T>(items).await
    }

    /// `value` encoded for `key` as this cache stores it: the key's codec,
    /// compressed above the threshold, refused over the size limit.
    pub(crate) fn encode<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(Vec<u8>, &'static str)> {
        let limits = &self.inner.limits;
        crate::codec::encode(
            value,
            limits.codecs.for_key(key),
            limits.max_value_bytes,
            limits.compress_above,
        )
    }

    /// Commits `items` to L2 and, on success, puts each in this node's L1.
    pub(crate) async fn write_items<T>(&self, items: Vec<WriteItem>) -> Result<()>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let tokens: Vec<_> = items
            .iter()
            .map(|i| self.inner.coherency.fill_token(&i.key))
            .collect();
        let header = self.header('k');
        // Untagged writes to PostgreSQL share transactions with concurrent
        // ones (see `combiner`); the rest commit on their own.
        let combine =
            self.inner.l2.store().combines_writes() && items.iter().all(|i| i.tags.is_empty());
        let versions = if combine {
            let fut = self
                .inner
                .combiner
                .set(self.inner.l2.store(), items.clone(), header);
            self.inner.l2.call("set", |_| Box::pin(fut)).await?
        } else {
            self.inner
                .l2
                .call("set", |s| s.set(&items, &header))
                .await?
        };
        self.keep_committed::<T>(items, &versions, tokens)
    }

    /// After a commit: counts it, records its versions, and puts each item
    /// in L1 unless it was invalidated meanwhile (see `Coherency::fill_up_to`).
    pub(crate) fn keep_committed<T>(
        &self,
        items: Vec<WriteItem>,
        versions: &[u64],
        tokens: Vec<Option<crate::coherency::FillToken>>,
    ) -> Result<()>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        Counters::inc(&self.inner.counters.writes);
        Counters::inc(&self.inner.counters.key_invalidations_sent);
        let now_us = self.now_us();
        let ceiling = versions.iter().copied().max().unwrap_or(0);
        for ((item, &version), token) in items.into_iter().zip(versions).zip(tokens) {
            self.inner.coherency.note_version(&item.key, version);
            let Some(token) = token else { continue };
            let key = item.key.clone();
            // Round-trip through the encoding so L1 holds what peers will read.
            let (_, entry) = decode_row::<T>(&key, Row::written(item, version), now_us)?;
            self.inner.coherency.fill_up_to(&key, token, entry, ceiling);
        }
        Ok(())
    }

    /// Deletes `key` from L2 and from every node's L1.
    ///
    /// # Errors
    ///
    /// An invalid key; an L2 error or timeout.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.delete_many(&[key]).await
    }

    /// Deletes several keys in one transaction.
    ///
    /// # Errors
    ///
    /// As for [`delete`](Self::delete).
    pub async fn delete_many(&self, keys: &[&str]) -> Result<()> {
        let op = telemetry::op!(self, Delete, keys.first().copied().unwrap_or(""));
        let r = self
            .delete_many_inner(keys)
            .instrument(op.span.clone())
            .await;
        op.record_done(&r);
        r
    }

    async fn delete_many_inner(&self, keys: &[&str]) -> Result<()> {
        for k in keys {
            self.check_key(k)?;
        }
        if keys.is_empty() {
            return Ok(());
        }
        let header = self.header('k');
        let version = self
            .inner
            .l2
            .call("delete", |s| s.delete(keys, &header))
            .await?;
        Counters::inc(&self.inner.counters.writes);
        Counters::inc(&self.inner.counters.key_invalidations_sent);
        // Our own notification will say the same; applying it now gives
        // read-your-writes without waiting for the round trip.
        for k in keys {
            self.inner.coherency.apply_written(k, version);
        }
        Ok(())
    }

    /// Drops `key` from every node's L1 without touching L2 — for when the L2
    /// row was changed behind c3's back, or to force a re-read.
    ///
    /// # Errors
    ///
    /// An invalid key; an L2 error or timeout (then other nodes were not told;
    /// this node's L1 is dropped regardless).
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        self.invalidate_many(&[key]).await
    }

    /// [`invalidate`](Self::invalidate) for several keys, in as few
    /// notifications as fit.
    ///
    /// # Errors
    ///
    /// As for [`invalidate`](Self::invalidate).
    pub async fn invalidate_many(&self, keys: &[&str]) -> Result<()> {
        let op = telemetry::op!(self, Invalidate, keys.first().copied().unwrap_or(""));
        let r = self
            .invalidate_many_inner(keys)
            .instrument(op.span.clone())
            .await;
        op.record_done(&r);
        r
    }

    async fn invalidate_many_inner(&self, keys: &[&str]) -> Result<()> {
        for k in keys {
            self.check_key(k)?;
        }
        for k in keys {
            self.inner.coherency.apply_bare(k);
        }
        let payloads = protocol::pack(&self.header('i'), keys.iter().map(|k| (*k).to_owned()));
        if payloads.is_empty() {
            return Ok(());
        }
        self.inner
            .l2
            .call("invalidate", |s| s.publish(&payloads))
            .await?;
        Counters::inc(&self.inner.counters.key_invalidations_sent);
        Ok(())
    }

    /// Deletes every entry from L2 and every node's L1.
    ///
    /// # Errors
    ///
    /// An L2 error or timeout.
    pub async fn clear(&self) -> Result<()> {
        self.check_open()?;
        let payload = self.header('c');
        self.inner.l2.call("clear", |s| s.clear(&payload)).await?;
        Counters::inc(&self.inner.counters.clears_sent);
        self.inner.coherency.purge();
        Ok(())
    }

    /// Stops the listener and the sweeper and waits for them to finish,
    /// after the writes already queued on this node have committed (bounded
    /// by the L2 operation timeout), then closes the connection pool if c3
    /// built it (a pool passed to [`C3Builder::pool`] stays open). Later
    /// calls on any clone of this handle fail with
    /// [`ErrorKind::Shutdown`](crate::ErrorKind::Shutdown).
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(
            self.inner.limits.op_timeout,
            self.inner.combiner.wait_idle(),
        )
        .await;
        self.inner.shutdown.send_replace(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        self.inner.feed.stopped();
        self.inner.l2.store().close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn handle_is_send_sync() {
        assert_send_sync::<C3>();
    }
}
