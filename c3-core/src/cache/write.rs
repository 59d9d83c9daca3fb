//! Writes: `set` and its variants, `set_many` — encode, commit to L2 with
//! the notification in the same transaction (combined with concurrent
//! writes where the store allows), then keep the committed values in L1.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::C3;
use crate::entry::decode_row;
use crate::entry::{Row, WriteItem};
use crate::error::Result;
use crate::stats::Counters;
use crate::telemetry;

impl C3 {
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

    /// After a commit: counts it, applies its versions to L1 (dropping older
    /// copies), and puts each item in L1 unless it was invalidated meanwhile
    /// (see `Coherency::fill_up_to`).
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
        let ceiling = versions.iter().copied().max().unwrap_or(0);
        for ((item, &version), token) in items.into_iter().zip(versions).zip(tokens) {
            // As if its own message had arrived: an older copy in L1 goes
            // now, whether or not the new value can be kept below. Waiting
            // for the echo served the old value to this node's callers
            // after their write returned — for as long as the echo took
            // (a relay restarting: seconds; found by the relay history).
            self.inner.coherency.apply_written(&item.key, version);
            let Some(token) = token else { continue };
            let key = item.key.clone();
            // Round-trip through the encoding so L1 holds what peers will read.
            let (_, entry) = decode_row::<T>(&key, Row::written(item, version))?;
            self.inner.coherency.fill_up_to(&key, token, entry, ceiling);
        }
        Ok(())
    }
}
