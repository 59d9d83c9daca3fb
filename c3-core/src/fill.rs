//! Fills: caching what was *read* from a source of truth.
//!
//! **Writers `set`, fillers `fill`.** A writer knows its value is the newest:
//! it just changed the source. A filler only knows what the source said when
//! it was read, and a write may have committed since — on another node, whose
//! notification has not arrived here yet. A plain `set` of that older value
//! would put it in L2 for every node *after* the write's invalidation, until
//! the next write or the TTL. So a fill is fenced:
//!
//! 1. [`C3::begin_fill`] takes the **fence** before the source is read: the
//!    L2 snapshot of that moment (and, for the keys named, this node's fill
//!    tokens).
//! 2. [`Fill::store`] writes to L2 only if nothing that invalidates the key
//!    **or one of its tags** committed outside that snapshot — a deletion,
//!    a tag invalidation (also of a tag that named no entry yet), a clear,
//!    or a newer write of the row — and no such deletion is in progress
//!    (see PROTOCOL.md, "Fills"). L2 decides, so this holds even when this
//!    node has not heard of the write yet.
//! 3. Only a value L2 accepted goes into this node's L1, under the usual
//!    fill-token rules; a refused fill is simply not cached (the caller still
//!    has the value it read).
//!
//! A fill whose fence could not be taken (L2 unavailable) never writes L2:
//! nothing could tell whether the key changed while the source was read. It
//! is kept in this node's L1 only, at version 0, so any versioned write evicts
//! it.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::C3;
use crate::coherency::FillToken;
use crate::entry::decode_row;
use crate::entry::{Row, WriteItem};
use crate::error::Result;
use crate::stats::Counters;
use crate::store::Fence;

/// A fence taken before reading a source of truth; what was read is cached
/// through it with [`store`](Self::store). Created by [`C3::begin_fill`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), c3_core::Error> {
/// use c3_core::{C3, MemoryServer};
///
/// let db = MemoryServer::new();
/// let (a, b) = (C3::builder().memory(&db).build().await?, C3::builder().memory(&db).build().await?);
///
/// let fill = a.begin_fill(&["user:7"]).await?;      // before the SELECT
/// let read = "Grace".to_string();                     // e.g. SELECT name FROM users WHERE id = 7
/// b.delete("user:7").await?;                          // another node's write commits meanwhile
/// assert!(!fill.store("user:7", &read, None, &[]).await?); // the older read is not cached
/// # Ok(()) }
/// ```
#[must_use = "a fill stores nothing until `store` is called"]
pub struct Fill {
    c3: C3,
    /// `None`: L2 could not be asked; nothing is written there.
    fence: Option<Fence>,
    /// Fill tokens of the keys named when the fence was taken.
    tokens: HashMap<String, Option<FillToken>>,
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill")
            .field("fenced", &self.fence.is_some())
            .field("keys", &self.tokens.len())
            .finish()
    }
}

impl C3 {
    /// Takes a fence before reading values from a source of truth, so that
    /// what was read can be cached without overwriting a newer write (see
    /// [`Fill`]). Name the keys you expect to store if you know them: their
    /// fill tokens are taken now, which also fences them against
    /// invalidations this node received that L2 cannot see (a bare
    /// `pg_notify` from a foreign client). Keys and tags decided later (an
    /// HTTP response's variant, its surrogate keys) are still fenced in L2.
    ///
    /// Costs one L2 round trip. If L2 cannot answer, the fill is still
    /// returned, unfenced: it will keep values in this node's L1 only — and
    /// only for the keys named here (a key named later could not show that
    /// no newer write reached this node since the read).
    ///
    /// # Errors
    ///
    /// An invalid key (checked before any I/O).
    pub async fn begin_fill(&self, keys: &[&str]) -> Result<Fill> {
        for k in keys {
            self.check_key(k)?;
        }
        // Tokens first: together with the snapshot after them, every
        // invalidation is either seen by the tokens or after the snapshot.
        let tokens = keys
            .iter()
            .map(|k| ((*k).to_owned(), self.coherency().fill_token(k)))
            .collect();

        let fence = match self.l2().call("fence", |s| s.fence()).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(target: "c3::fill", error = %e, "could not take a fill fence; L1 only");
                None
            }
        };
        Ok(Fill {
            c3: self.clone(),
            fence,
            tokens,
        })
    }
}

impl Fill {
    /// Whether L2 gave this fill its fence (if not, stores go to this node's
    /// L1 only).
    #[must_use]
    pub fn is_fenced(&self) -> bool {
        self.fence.is_some()
    }

    /// Caches `value`, read from the source after the fence was taken, under
    /// `key` with `tags` (replacing the entry's tags), fresh for `ttl`
    /// (`None`: until deleted). Returns whether it was cached in L2: `false`
    /// when something invalidated the key or a tag since the fence (the value
    /// may be older than that write), or the fence could not be taken.
    ///
    /// # Errors
    ///
    /// An invalid key or tag; a value that cannot be encoded or is too
    /// large. L2 failures are not errors: the value is then not cached.
    pub async fn store<T>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Result<bool>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        for t in tags {
            self.c3.check_key(t)?;
        }
        let mut item = self.item(key, value, ttl)?;
        item.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        Ok(self.store_items::<T>(vec![item]).await[0])
    }

    /// [`store`](Self::store) for several values in one transaction (no
    /// tags). If a key appears twice, the last value wins. Returns how many
    /// were cached in L2.
    ///
    /// # Errors
    ///
    /// As for [`store`](Self::store); nothing is stored if any entry is invalid.
    pub async fn store_many<T>(&self, entries: &[(&str, T)], ttl: Option<Duration>) -> Result<usize>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut by_key: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        let mut items: Vec<WriteItem> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let item = self.item(k, v, ttl)?;
            match by_key.get(k) {
                Some(&i) => items[i] = item,
                None => {
                    by_key.insert(k, items.len());
                    items.push(item);
                }
            }
        }
        if items.is_empty() {
            return Ok(0);
        }
        Ok(self
            .store_items::<T>(items)
            .await
            .into_iter()
            .filter(|s| *s)
            .count())
    }

    /// The item a fill stores (not pushed: peers read a filled value from
    /// L2 when they need it).
    fn item<T: Serialize>(&self, key: &str, value: &T, ttl: Option<Duration>) -> Result<WriteItem> {
        self.c3.check_key(key)?;
        let encoded = self.c3.encode(key, value)?;
        Ok(WriteItem::new(key, encoded, ttl.map(|t| self.c3.now() + t)))
    }

    /// Stores encoded items through the fence; one flag per item: cached in L2.
    pub(crate) async fn store_items<T>(&self, items: Vec<WriteItem>) -> Vec<bool>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let c3 = &self.c3;
        let mut flags = vec![false; items.len()];
        let (items, tokens, slots) = self.still_valid(items);
        if items.is_empty() {
            return flags;
        }
        let Some(fence) = &self.fence else {
            self.keep_unfenced_named::<T>(items, tokens);
            return flags;
        };
        let stored = self.store_in_l2(&items, fence).await;
        let versions = match stored {
            Ok(v) => v,
            Err(e) => {
                // Whether it committed is unknown; L1 only, at version 0.
                tracing::debug!(target: "c3::fill", error = %e, "could not store a fill in L2");
                self.keep_unfenced_named::<T>(items, tokens);
                return flags;
            }
        };
        let mut kept = (Vec::new(), Vec::new(), Vec::new());
        for (((item, token), version), slot) in
            items.into_iter().zip(tokens).zip(versions).zip(slots)
        {
            match version {
                Some(v) => {
                    flags[slot] = true;
                    kept.0.push(item);
                    kept.1.push(v);
                    kept.2.push(token);
                }
                None => Counters::inc(&c3.counters().fills_dropped),
            }
        }
        if !kept.0.is_empty()
            && let Err(e) = c3.keep_committed::<T>(kept.0, &kept.1, kept.2)
        {
            tracing::debug!(target: "c3::fill", error = %e, "a stored fill could not be decoded for L1");
        }
        flags
    }

    /// Keeps values L2 did not fence in this node's L1 only (at version 0,
    /// so any versioned write evicts them) — only for keys named in
    /// `begin_fill`, whose tokens were taken before the source was read. A
    /// key named only now got its token now: it cannot show that this node
    /// applied no newer write since the read, and without L2's fence
    /// nothing else can.
    fn keep_unfenced_named<T>(&self, items: Vec<WriteItem>, tokens: Vec<Option<FillToken>>)
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        for (item, token) in items.into_iter().zip(tokens) {
            if self.tokens.contains_key(&item.key) {
                keep_unfenced::<T>(&self.c3, item, token);
            } else {
                Counters::inc(&self.c3.counters().fills_dropped);
            }
        }
    }

    /// The items nothing has invalidated on this node since the fill began
    /// (an invalidation it applied may be one L2 cannot show, a bare
    /// notification), with their tokens and their places in the caller's list.
    fn still_valid(
        &self,
        items: Vec<WriteItem>,
    ) -> (Vec<WriteItem>, Vec<Option<FillToken>>, Vec<usize>) {
        let c3 = &self.c3;
        let tokens: Vec<Option<FillToken>> = items
            .iter()
            .map(|i| match self.tokens.get(&i.key) {
                Some(t) => *t,
                None => c3.coherency().fill_token(&i.key),
            })
            .collect();
        let valid: Vec<bool> = items
            .iter()
            .zip(&tokens)
            .map(|(i, t)| t.is_none_or(|t| c3.coherency().token_valid(&i.key, t)))
            .collect();
        let mut slots = Vec::with_capacity(items.len());
        let (items, tokens): (Vec<WriteItem>, Vec<Option<FillToken>>) = items
            .into_iter()
            .zip(tokens)
            .zip(&valid)
            .enumerate()
            .filter_map(|(slot, ((i, t), valid))| {
                if !valid {
                    Counters::inc(&c3.counters().fills_dropped);
                    return None;
                }
                slots.push(slot);
                Some((i, t))
            })
            .unzip();
        (items, tokens, slots)
    }

    /// The fenced store in L2, in its own span.
    async fn store_in_l2(
        &self,
        items: &[WriteItem],
        fence: &Fence,
    ) -> crate::error::Result<Vec<Option<u64>>> {
        let c3 = &self.c3;
        let header = c3.header('k');
        let op = crate::telemetry::op!(c3, Fill, items.first().map_or("", |i| &i.key));
        let stored = tracing::Instrument::instrument(
            c3.l2().call("fill", |s| s.fill(items, &header, fence)),
            op.span.clone(),
        )
        .await;
        op.record(None, crate::tier::Outcome::of(&stored));
        stored
    }

    /// Wraps a fence taken by a read that also returned a row (the loader's
    /// L2 read), so its result is stored like any fill.
    pub(crate) fn from_fence(
        c3: &C3,
        key: &str,
        fence: Option<Fence>,
        token: Option<FillToken>,
    ) -> Fill {
        Fill {
            c3: c3.clone(),
            fence,
            tokens: HashMap::from([(key.to_owned(), token)]),
        }
    }
}

/// A value read while L2 could not fence it: kept in this node's L1 only, at
/// version 0, so that any versioned write to the key evicts it.
///
/// Not if it carries tags: a tag invalidation names only the keys L2 holds
/// under the tag, so it would never name this one, and the entry would
/// outlive the write (found by the differential HTTP test: a response whose
/// store failed at commit stayed in one replica's L1 after the URI was
/// invalidated).
fn keep_unfenced<T>(c3: &C3, item: WriteItem, token: Option<FillToken>)
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    if !item.tags.is_empty() {
        return;
    }
    let Some(token) = token else { return };
    let key = item.key.clone();
    if let Ok((_, entry)) = decode_row::<T>(&key, Row::written(item, 0)) {
        c3.coherency().fill(&key, token, entry);
    }
}
