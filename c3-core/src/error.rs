//! The one error type of c3-core, modelled on `tokio_postgres::Error`: an opaque
//! struct with a [`kind`](Error::kind) to match on and `is_*` shortcuts, so new
//! failure details can be added without breaking callers.

use std::fmt;
use std::time::Duration;

use crate::key::KeyError;

/// What went wrong, for callers that need to branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key is empty, too long, contains control characters or uses the
    /// reserved `c3|` prefix.
    InvalidKey,
    /// The encoded value is larger than the configured maximum.
    ValueTooLarge,
    /// The value could not be serialized.
    Encode,
    /// A stored value could not be deserialized into the requested type, or was
    /// written with an encoding this build cannot read.
    Decode,
    /// An L2 operation did not finish within the configured timeout.
    Timeout,
    /// PostgreSQL (or the connection pool) reported an error.
    Backend,
    /// The builder or the environment held an invalid setting.
    Config,
    /// A TLS handshake with PostgreSQL failed; the message says for which
    /// connection, under which `sslmode`, and which check failed (host name,
    /// chain, validity) — or that the server does not offer TLS.
    Tls,
    /// The L2 circuit breaker is open, so L2 was not called.
    CircuitOpen,
    /// A loader passed to `get_or_load` failed and no stale value could be served.
    Loader,
    /// The cache was shut down.
    Shutdown,
}

/// An error from a c3 operation.
///
/// Errors are cheap to move (one box) and say what happened in their `Display`
/// output, including the limit that was exceeded or the operation that timed out.
pub struct Error(Box<Repr>);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Repr {
    #[error("invalid cache key: {0}")]
    InvalidKey(#[from] KeyError),
    #[error("encoded value is {size} bytes, over the configured maximum of {max} bytes")]
    ValueTooLarge { size: usize, max: usize },
    #[error("could not encode value: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("could not decode the cached value of key {key:?}: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the value of key {key:?} uses encoding {encoding:?}, which this build cannot read")]
    UnknownEncoding { key: String, encoding: String },
    #[error("the stored value of key {key:?} is corrupt: {message}")]
    #[cfg_attr(not(feature = "lz4"), allow(dead_code))]
    Corrupt { key: String, message: String },
    #[error("could not decode the cached value of key {key:?} as {codec}: {message}")]
    #[cfg_attr(not(any(feature = "msgpack", feature = "postcard")), allow(dead_code))]
    DecodeWith {
        key: String,
        codec: &'static str,
        message: String,
    },
    #[error("could not encode value as {codec}: {message}")]
    #[cfg_attr(not(any(feature = "msgpack", feature = "postcard")), allow(dead_code))]
    EncodeWith {
        codec: &'static str,
        message: String,
    },
    #[error("L2 operation `{op}` timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("PostgreSQL error during `{op}`: {detail}")]
    Postgres {
        op: &'static str,
        /// The error and its causes (the server's message lives in the
        /// source of tokio-postgres's "db error").
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("could not get a PostgreSQL connection from the pool for `{op}`: {detail}")]
    Pool {
        op: &'static str,
        /// The error and its causes: tokio-postgres says only "db error"
        /// until one looks at its source, which holds the server's reason.
        detail: String,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Tls(String),
    #[error("PostgreSQL answered `{op}` unexpectedly: {what}")]
    Unexpected {
        op: &'static str,
        what: &'static str,
    },
    #[error("the L2 circuit breaker is open; L2 was not called")]
    CircuitOpen,
    #[error("loader failed: {0}")]
    Loader(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the cache has been shut down")]
    Shutdown,
    /// One error shared by every waiter of a load.
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

/// Whether PostgreSQL ended a statement for one of the bounds c3 sets on
/// its transactions: `statement_timeout` (57014), `lock_timeout` (55P03),
/// `idle_in_transaction_session_timeout` (25P03).
fn server_timeout(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::QUERY_CANCELED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        ]
        .contains(c)
    })
}

impl Error {
    pub(crate) fn new(repr: Repr) -> Self {
        Error(Box::new(repr))
    }

    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::new(Repr::Config(msg.into()))
    }

    pub(crate) fn timeout(op: &'static str, after: Duration) -> Self {
        Error::new(Repr::Timeout { op, after })
    }

    pub(crate) fn postgres(op: &'static str, source: tokio_postgres::Error) -> Self {
        let detail = with_causes(&source);
        Error::new(Repr::Postgres { op, detail, source })
    }

    pub(crate) fn unexpected(op: &'static str, what: &'static str) -> Self {
        Error::new(Repr::Unexpected { op, what })
    }

    pub(crate) fn tls(detail: String) -> Self {
        Error::new(Repr::Tls(detail))
    }

    pub(crate) fn pool(op: &'static str, source: deadpool_postgres::PoolError) -> Self {
        let detail = with_causes(&source);
        Error::new(Repr::Pool { op, detail, source })
    }

    /// Wraps a loader's error so it can travel through `get_or_load`.
    pub fn loader(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::new(Repr::Loader(source.into()))
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match &*self.0 {
            Repr::InvalidKey(_) => ErrorKind::InvalidKey,
            Repr::ValueTooLarge { .. } => ErrorKind::ValueTooLarge,
            Repr::Encode(_) => ErrorKind::Encode,
            Repr::Decode { .. }
            | Repr::UnknownEncoding { .. }
            | Repr::Corrupt { .. }
            | Repr::DecodeWith { .. } => ErrorKind::Decode,
            Repr::EncodeWith { .. } => ErrorKind::Encode,
            Repr::Timeout { .. } => ErrorKind::Timeout,
            // The server's own bound on a c3 transaction fired (they sit
            // below the caller's deadline): to the caller, a timeout.
            Repr::Postgres { source, .. } if server_timeout(source) => ErrorKind::Timeout,
            Repr::Postgres { .. } | Repr::Pool { .. } | Repr::Unexpected { .. } => {
                ErrorKind::Backend
            }
            Repr::Config(_) => ErrorKind::Config,
            Repr::Tls(_) => ErrorKind::Tls,
            Repr::CircuitOpen => ErrorKind::CircuitOpen,
            Repr::Loader(_) => ErrorKind::Loader,
            Repr::Shutdown => ErrorKind::Shutdown,
            Repr::Shared(e) => e.kind(),
        }
    }

    /// The key was rejected before any I/O.
    #[must_use]
    pub fn is_invalid_key(&self) -> bool {
        self.kind() == ErrorKind::InvalidKey
    }

    /// An L2 call timed out.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// PostgreSQL or the pool failed (other than by timing out).
    #[must_use]
    pub fn is_backend(&self) -> bool {
        self.kind() == ErrorKind::Backend
    }

    /// A TLS handshake with PostgreSQL failed (see [`ErrorKind::Tls`]).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.kind() == ErrorKind::Tls
    }

    /// Whether the failure came from L2's availability (timeout, backend error or
    /// an open breaker) rather than from the caller's input. Such failures count
    /// towards the L2 circuit breaker.
    #[must_use]
    pub fn is_l2_unavailable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Timeout | ErrorKind::Backend | ErrorKind::Tls | ErrorKind::CircuitOpen
        )
    }

    /// The SQLSTATE code, when PostgreSQL reported one.
    #[must_use]
    pub fn sqlstate(&self) -> Option<&str> {
        match &*self.0 {
            Repr::Postgres { source, .. } => source.code().map(|c| c.code()),
            Repr::Shared(e) => e.sqlstate(),
            _ => None,
        }
    }
}

/// An error's text followed by its causes' (each once).
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut detail = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        cause = c.source();
    }
    detail
}

impl From<Repr> for Error {
    fn from(repr: Repr) -> Self {
        Error::new(repr)
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::new(Repr::InvalidKey(e))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind())
            .field("detail", &self.0)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// The result type of c3 operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An axum handler may return [`Error`]: `503 Service Unavailable` when L2
/// is unavailable (a timeout, PostgreSQL failing, the breaker open, the
/// cache shut down) — retrying later may work —, `500 Internal Server
/// Error` otherwise. The body says only that; the error itself is logged
/// (target `c3::axum`), since a client should not read the cache's
/// internals.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        use http::StatusCode;
        let unavailable = self.is_l2_unavailable() || self.kind() == ErrorKind::Shutdown;
        let (status, body) = if unavailable {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable: the cache cannot reach its store",
            )
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        };
        tracing::warn!(target: "c3::axum", error = %self, status = status.as_u16(),
            "a handler answered with c3's error");
        (status, body).into_response()
    }
}
