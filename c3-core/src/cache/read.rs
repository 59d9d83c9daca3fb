//! Reads: `get`, `get_with_tier`, `get_many`, `get_local` — L1 first (no I/O, no
//! decoding), then one L2 round trip for what L1 could not answer, filling
//! L1 through the fill token taken before the read.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::C3;
use crate::clock::unix_micros;
use crate::entry::{L1Entry, Row};
use crate::entry::{State, decode_row, typed_value};
use crate::error::Result;
use crate::stats::Counters;
use crate::telemetry;
use crate::tier::{Outcome, Tier};

impl C3 {
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
        self.check_open()?;
        if let Some(v) = self.l1_answer::<T>(key) {
            return Ok((v, Tier::L1));
        }
        let mut op = telemetry::op!(self, Get, key, read);
        self.validate_key(key)?;
        op.start_timer();
        // Boxed: the L2 read's state is most of this future's size, and an
        // L1 hit would otherwise move it around (twice) for nothing.
        let r = Box::pin(self.get_from_l2::<T>(key, &op).instrument(op.span.clone())).await;
        op.record_result(&r);
        Ok((r?, Tier::L2))
    }

    /// Reads `key` from L1 only — no I/O, never waits: for a layer that
    /// answers a hit inside a synchronous call and takes the asynchronous
    /// path only when L1 cannot answer.
    ///
    /// `Some(value)` is what [`get`](Self::get) would have answered from
    /// L1 (`Some(None)`: a cached "not found"); `None` means L1 cannot
    /// answer (absent, expired, bypassed while the invalidation feed is
    /// down, or another type), and is not counted as a miss: the read that
    /// follows counts it. An answer is counted as `get`'s but opens no span:
    /// the caller's own span says how it answered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), c3_core::Error> {
    /// let c3 = c3_core::C3::builder().memory(&c3_core::MemoryServer::new()).build().await?;
    /// assert!(c3.get_local::<u8>("k")?.is_none());
    /// c3.set("k", &7u8).await?;
    /// assert_eq!(c3.get_local::<u8>("k")?.flatten().as_deref(), Some(&7));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Shutdown`](crate::ErrorKind::Shutdown) after shutdown;
    /// [`ErrorKind::InvalidKey`](crate::ErrorKind::InvalidKey) for a key L1
    /// cannot hold (only valid keys ever enter it, so a hit needs no check).
    pub fn get_local<T>(&self, key: &str) -> Result<Option<Option<Arc<T>>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.check_open()?;
        if self.key_length_ok(key)
            && let Some(v) = self.l1_get::<T>(key)
        {
            return Ok(Some(v));
        }
        self.validate_key(key)?;
        Ok(None)
    }

    /// What L1 answers for `key` on its own, with the `c3.get` span of an
    /// answer (tier `l1`; a DEBUG span, see `telemetry::op!`).
    ///
    /// Only valid keys ever enter L1 (every write and fill checks its key,
    /// and peers' pushes are checked on arrival), so this needs no
    /// character scan: the length check alone keeps a too-long key from
    /// being hashed, and a miss checks the rest before L2 sees the key.
    fn l1_answer<T>(&self, key: &str) -> Option<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        if !self.key_length_ok(key) {
            return None;
        }
        let v = self.l1_get::<T>(key)?;
        if telemetry::spans::listening(tracing::Level::DEBUG) {
            let outcome = if v.is_some() {
                Outcome::Hit
            } else {
                Outcome::Miss
            };
            telemetry::op!(self, Get, key, l1).record(Some(Tier::L1), outcome);
        }
        Some(v)
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
        let (value, entry) = decode_row::<T>(key, row)?;
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
        if !self.fresh_now(&e) {
            return None;
        }
        // A different type under the same key is treated as a miss; the L2
        // read that follows replaces the entry with the requested type.
        let v = self.l1_value::<T>(key, e)?;
        Counters::inc(&self.inner.counters.l1_hits);
        Some(v)
    }

    /// The value of an L1 entry as a `T`; a value a peer pushed is decoded
    /// here, once (the entry is replaced by the decoded value).
    pub(crate) fn l1_value<T>(&self, key: &str, e: L1Entry) -> Option<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let L1Entry { value, .. } = e;
        let other = match typed_value::<T>(value) {
            Ok(v) => return Some(v),
            Err(other) => other,
        };
        let pushed = other.downcast_ref::<crate::coherency::PushedJson>()?;
        let v: Arc<T> = Arc::new(serde_json::from_str(&pushed.0).ok()?);
        let decoded = L1Entry {
            value: Arc::clone(&v) as Arc<dyn Any + Send + Sync>,
            ..e
        };
        self.inner.coherency.replace_decoded(key, &other, decoded);
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
        // A key asked for twice gets the same answer twice (its row is
        // taken out of `rows` the first time).
        let mut answered: HashMap<&str, Option<Arc<T>>> = HashMap::new();
        for (i, k, token) in missing {
            if let Some(value) = answered.get(k) {
                out[i] = value.clone();
                continue;
            }
            match rows.remove(k).filter(|r| r.state(now_us) == State::Fresh) {
                Some(row) => {
                    Counters::inc(&self.inner.counters.l2_hits);
                    let (value, entry) = decode_row::<T>(k, row)?;
                    self.keep_read(k, token, entry);
                    out[i] = value;
                }
                None => Counters::inc(&self.inner.counters.l2_misses),
            }
            answered.insert(k, out[i].clone());
        }
        Ok(out)
    }
}
