//! Where an answer came from and how an operation ended: one vocabulary for
//! read results ([`C3::get_with_tier`](crate::C3::get_with_tier)), spans
//! (`c3.tier`, `c3.outcome`) and metrics (the same attributes).

/// The tier that answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tier {
    /// This node's memory: no I/O, no decoding.
    L1,
    /// The shared PostgreSQL table.
    L2,
    /// The source of truth, through a loader (`get_or_load`).
    Source,
    /// A stale value served under fail-safe, because the source failed.
    Stale,
}

impl Tier {
    /// Every tier, in the order of their metric attribute indexes.
    pub(crate) const ALL: [Tier; 4] = [Tier::L1, Tier::L2, Tier::Source, Tier::Stale];

    /// The `c3.tier` attribute value: `l1`, `l2`, `source` or `stale`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Source => "source",
            Tier::Stale => "stale",
        }
    }

    /// Index in metric attribute tables: 0 is "no tier recorded".
    pub(crate) const fn index(tier: Option<Tier>) -> u8 {
        match tier {
            None => 0,
            Some(t) => t as u8 + 1,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a cache operation ended (`c3.outcome` on spans and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Dropped before it ended (the default until something is recorded).
    Cancelled,
    /// A read that found a value.
    Hit,
    /// A read that found nothing.
    Miss,
    /// A write, or a load, that succeeded.
    Ok,
    Error,
}

impl Outcome {
    /// Every outcome, in the order of their metric attribute indexes.
    pub(crate) const ALL: [Outcome; 5] = [
        Outcome::Cancelled,
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Ok,
        Outcome::Error,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Outcome::Cancelled => "cancelled",
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }

    /// Index in metric attribute tables.
    pub(crate) const fn index(self) -> u8 {
        self as u8
    }

    /// `Ok` or `Error`, from a result.
    pub(crate) fn of<T, E>(r: &Result<T, E>) -> Outcome {
        if r.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_all() {
        for (i, t) in Tier::ALL.iter().enumerate() {
            assert_eq!(usize::from(Tier::index(Some(*t))), i + 1, "{t}");
        }
        assert_eq!(Tier::index(None), 0);
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(usize::from(o.index()), i, "{}", o.as_str());
        }
    }
}
