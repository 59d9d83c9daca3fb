//! # c3-axum: c3 for axum applications
//!
//! * [`C3CacheLayer`] (from c3-tower) works as `Router::layer` and
//!   `Router::route_layer`: responses cached by one replica are served by all,
//!   and writes invalidate them everywhere.
//! * [`Cache`] extracts the [`C3`] handle from state (`C3: FromRef<S>`).
//! * [`CacheTags`] tags a response (`Surrogate-Key`); [`InvalidateTags`] asks
//!   the layer to invalidate tags when a write succeeds.
//! * [`admin_router`] exposes stats and invalidation behind a bearer token;
//!   [`health`] reports the listener state (503 unless LISTEN is active).
//!
//! ```
//! use axum::{Router, routing::get};
//! use c3_axum::{C3CacheLayer, CacheTags};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), c3_core::Error> {
//! let c3 = c3_core::C3::builder().memory(&c3_core::MemoryServer::new()).build().await?;
//! let app: Router = Router::new()
//!     .route(
//!         "/users/{id}",
//!         get(|| async { (CacheTags::new(["user:1"]), [("cache-control", "max-age=60")], "Ada") }),
//!     )
//!     .layer(C3CacheLayer::new(c3.clone()))
//!     // After the layer: health and admin answers are never cached.
//!     .route("/health", get(c3_axum::health))
//!     .nest("/admin/cache", c3_axum::admin_router(c3.clone(), "s3cret"))
//!     .with_state(c3);
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! * `extract` — [`Cache`], the state extractor.
//! * `response` — [`CacheTags`] and [`InvalidateTags`] response parts.
//! * `admin` — [`admin_router`], [`health`] and [`AdminRejection`].

mod admin;
mod extract;
mod response;

pub use admin::{AdminRejection, admin_router, health};
pub use c3_core::C3;
pub use c3_tower::{C3CacheLayer, invalidate_tag, invalidate_uri};
pub use extract::Cache;
pub use response::{CacheTags, InvalidateTags};
