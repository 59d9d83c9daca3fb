//! # c3: coherent caching on PostgreSQL
//!
//! The facade crate. It re-exports the c3 crates so one dependency is enough:
//!
//! | module | crate | what it is |
//! |---|---|---|
//! | [`core`] | `c3-core` | the coherent two-tier cache ([`C3`]) |
//! | `tower` | `c3-tower` | HTTP response cache layer (feature `tower`, default) |
//! | `axum` | `c3-axum` | axum integration (feature `axum`, default) |
//! | `sqlx` | `c3-sqlx` | cached repositories for sqlx (feature `sqlx`, default; `#[derive(c3::sqlx::Cached)]` works through this facade alone) |
//!
//! Optional features: `otlp` (`c3::core::otlp`: one-call OpenTelemetry
//! export over OTLP, and `traceparent` continuation in the HTTP layer),
//! `lz4` (compression of large values), `msgpack` and `postcard` (binary
//! value codecs).
//!
//! The most used items are also re-exported at the top level.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), c3::Error> {
//! let db = c3::MemoryServer::new(); // or C3::builder().postgres("postgres://…")
//! let cache = c3::C3::builder().memory(&db).build().await?;
//! cache.set("answer", &42u32).await?;
//! assert_eq!(cache.get::<u32>("answer").await?.as_deref(), Some(&42));
//! # Ok(()) }
//! ```

#[cfg(feature = "axum")]
pub use c3_axum as axum;
pub use c3_core as core;
pub use c3_core::{C3, C3Builder, Error, ErrorKind, ListenerState, MemoryServer, Stats};
#[cfg(feature = "sqlx")]
pub use c3_sqlx as sqlx;
#[cfg(feature = "tower")]
pub use c3_tower as tower;
