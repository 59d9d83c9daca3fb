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

/// An axum handler may return [`Error`] (feature `axum`): the cache's
/// errors as [`c3_core::Error`] answers them; the database's as `503
/// Service Unavailable` when it could not be reached (pool timed out or
/// closed, I/O, TLS), `500 Internal Server Error` otherwise. Bodies say
/// only that; the error is logged (target `c3::axum`).
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        match self {
            Error::Cache(e) => e.into_response(),
            Error::Database(e) => {
                let unavailable = matches!(
                    e,
                    sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                );
                let (status, body) = if unavailable {
                    (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "service unavailable: the database cannot be reached",
                    )
                } else {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                };
                tracing::warn!(target: "c3::axum", error = %e, status = status.as_u16(),
                    "a handler answered with a database error");
                (status, body).into_response()
            }
        }
    }
}
