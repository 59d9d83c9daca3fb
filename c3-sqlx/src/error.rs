//! [`Error`]: what a repository call can fail with.

/// A repository or invalidation failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the cache: an invalid key, or — for `find` — the query failed
    /// (or its breaker is open) and no value within the fail-safe window
    /// existed ([`c3_core::ErrorKind::Loader`] / `CircuitOpen`).
    #[error(transparent)]
    Cache(#[from] c3_core::Error),
    /// From the database, for a write or a query outside the cache.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}
