//! Removals: `delete`, `invalidate` (L1 only, on every node), tags and
//! `clear` — each publishes what it removed in the transaction that removes it.

use tracing::Instrument;

use super::C3;
use crate::error::Result;
use crate::protocol;
use crate::stats::Counters;
use crate::telemetry;

impl C3 {
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
    /// row was changed behind c3's back, or to force a re-read. The keys
    /// are recorded as deleted (their rows stay) in the same transaction as
    /// the message, so a node using
    /// [`warm_reconnect`](crate::C3Builder::warm_reconnect) that was away
    /// when it was sent drops them too, and fills of them in progress are
    /// refused.
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
            .call("invalidate", |s| s.invalidate(keys, &payloads))
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
}
