//! Cache entries: what L1 holds for a key, the rows L2 holds and is written,
//! how a row becomes an entry, and the one rule for where an entry (or a row)
//! stands in time.
//!
//! An entry is **fresh** until its `fresh_until`; then **stale** — served
//! only as a fail-safe fallback, when the source of truth is failing — until
//! its `stale_until`; then **dead**: no read path serves it, and L1 keeps
//! it only until it is replaced or evicted for room. A value replaced by a newer write is *superseded*, which
//! is the coherency engine's business (versions), not this clock's.
//!
//! Every read path asks [`L1Entry::state`] or [`Row::state`]: `get`, `get_many`
//! and `is_cached_locally` serve only `Fresh`; `get_or_load` serves `Fresh`,
//! keeps `Stale` as its fail-safe fallback, and reloads otherwise.

use std::any::Any;
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use crate::clock::unix_micros;
/// The encoding of a cached "not found" (see `codec`).
pub(crate) use crate::codec::ABSENT as ENCODING_ABSENT;
use crate::error::Result;

/// One L2 row as c3 reads it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) value: Vec<u8>,
    pub(crate) encoding: String,
    pub(crate) version: u64,
    /// Fresh until this wall-clock time (µs since epoch); `None`: forever.
    pub(crate) fresh_until_us: Option<u64>,
    /// Servable as a fail-safe fallback until this time; `None`: same as fresh.
    pub(crate) stale_until_us: Option<u64>,
}

/// One row to upsert.
#[derive(Debug, Clone)]
pub(crate) struct WriteItem {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) encoding: &'static str,
    pub(crate) fresh_until: Option<SystemTime>,
    pub(crate) stale_until: Option<SystemTime>,
    /// Tags to (re)attach to the entry; empty leaves existing tags alone.
    pub(crate) tags: Vec<String>,
    /// Send the value itself to the other nodes (value push), if it fits.
    pub(crate) push: bool,
}

impl WriteItem {
    /// An item for `key` with its encoded value (see `C3::encode`), fresh
    /// until `fresh_until`: no fail-safe window, no tags, not pushed — the
    /// caller sets what its path needs.
    pub(crate) fn new(
        key: &str,
        (value, encoding): (Vec<u8>, &'static str),
        fresh_until: Option<SystemTime>,
    ) -> WriteItem {
        WriteItem {
            key: key.to_owned(),
            value,
            encoding,
            fresh_until,
            stale_until: None,
            tags: Vec::new(),
            push: false,
        }
    }
}

/// Where an entry or a row stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Within its TTL: any read may serve it.
    Fresh,
    /// Past its TTL, within its fail-safe window: only a fallback.
    Stale,
    /// Past both: nothing serves it.
    Dead,
}

/// The rule, on wall-clock µs (`u64::MAX`: never).
pub(crate) fn state(fresh_until_us: u64, stale_until_us: u64, now_us: u64) -> State {
    if fresh_until_us > now_us {
        State::Fresh
    } else if stale_until_us > now_us {
        State::Stale
    } else {
        State::Dead
    }
}

/// What L1 holds for one key: the decoded value, so a hit does no work.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) version: u64,
    /// Wall-clock µs after which the entry is stale (`u64::MAX`: never).
    pub(crate) fresh_until_us: u64,
    /// Wall-clock µs after which the entry may not be served even as a
    /// fail-safe fallback.
    pub(crate) stale_until_us: u64,
    /// Bytes charged against the L1 capacity.
    pub(crate) weight: u32,
}

impl L1Entry {
    /// Where this entry stands at `now_us` (see the module docs).
    pub(crate) fn state(&self, now_us: u64) -> State {
        state(self.fresh_until_us, self.stale_until_us, now_us)
    }
}

impl Row {
    /// The row `item` becomes once written at `version` (what L2 holds and
    /// what a reader decodes). Takes the item: its value moves, not copied.
    pub(crate) fn written(item: WriteItem, version: u64) -> Row {
        Row {
            value: item.value,
            encoding: item.encoding.to_owned(),
            version,
            fresh_until_us: item.fresh_until.map(unix_micros),
            stale_until_us: item.stale_until.map(unix_micros),
        }
    }

    /// The row's `fresh_until` and `stale_until` as an entry has them:
    /// `None` is "never" and "as fresh", and the fail-safe window never
    /// ends before freshness does.
    pub(crate) fn until_us(&self) -> (u64, u64) {
        let fresh = self.fresh_until_us.unwrap_or(u64::MAX);
        let stale = self.stale_until_us.unwrap_or(fresh).max(fresh);
        (fresh, stale)
    }

    /// Where this row stands at `now_us` (see the module docs).
    pub(crate) fn state(&self, now_us: u64) -> State {
        let (fresh, stale) = self.until_us();
        state(fresh, stale, now_us)
    }
}

/// Bytes charged per L1 entry on top of its encoded value, for the entry
/// struct, the `Arc`s and moka's bookkeeping.
pub(crate) const ENTRY_OVERHEAD: usize = 96;

/// Marker stored in L1 for a cached "not found".
pub(crate) struct Absent;

/// The value of an L1 entry as `Option<T>` (`Some(None)`: cached "not
/// found"); the value back if it holds another type. Takes the `Arc`: a
/// hit hands out the one its lookup cloned.
pub(crate) fn typed_value<T: Send + Sync + 'static>(
    v: Arc<dyn Any + Send + Sync>,
) -> Result<Option<Arc<T>>, Arc<dyn Any + Send + Sync>> {
    if v.is::<Absent>() {
        return Ok(None);
    }
    v.downcast::<T>().map(Some)
}

/// Decodes an L2 row into a `T` (`None` for a negative entry) and the L1
/// entry that would hold it.
pub(crate) fn decode_row<T>(key: &str, row: Row) -> Result<(Option<Arc<T>>, L1Entry)>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let (value, stored): (Option<Arc<T>>, Arc<dyn Any + Send + Sync>) = match row.encoding.as_str()
    {
        ENCODING_ABSENT => (None, Arc::new(Absent)),
        encoding => {
            let v: Arc<T> = Arc::new(crate::codec::decode(key, encoding, &row.value)?);
            (Some(Arc::clone(&v)), v)
        }
    };
    let (fresh_until_us, stale_until_us) = row.until_us();
    let entry = L1Entry {
        value: stored,
        version: row.version,
        fresh_until_us,
        stale_until_us,
        weight: u32::try_from(row.value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX),
    };
    Ok((value, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_then_stale_then_dead() {
        assert_eq!(state(10, 20, 5), State::Fresh);
        assert_eq!(state(10, 20, 10), State::Stale);
        assert_eq!(state(10, 20, 20), State::Dead);
        assert_eq!(state(u64::MAX, u64::MAX, u64::MAX - 1), State::Fresh);
        let row = |fresh, stale| Row {
            value: Vec::new(),
            encoding: "json".into(),
            version: 1,
            fresh_until_us: fresh,
            stale_until_us: stale,
        };
        assert_eq!(row(None, None).state(u64::MAX - 1), State::Fresh);
        assert_eq!(
            row(Some(10), None).state(10),
            State::Dead,
            "no window: as fresh"
        );
        assert_eq!(
            row(Some(10), Some(5)).until_us(),
            (10, 10),
            "never shorter than fresh"
        );
        assert_eq!(row(Some(10), Some(30)).state(15), State::Stale);
    }
}
