//! # c3-core: a coherent two-tier cache on PostgreSQL
//!
//! Every service instance keeps a hot in-process cache (**L1**, [moka]), all
//! instances share a durable cache table in the PostgreSQL they already run
//! (**L2**), and they stay consistent through PostgreSQL itself: each write
//! commits its row and a `pg_notify` in one transaction, and every node
//! `LISTEN`s and drops what became stale. No Redis, no sidecar.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), c3_core::Error> {
//! use c3_core::{C3, MemoryServer};
//!
//! // Two nodes sharing one L2. With PostgreSQL: C3::builder().postgres(&url).
//! let db = MemoryServer::new();
//! let a = C3::builder().memory(&db).build().await?;
//! let b = C3::builder().memory(&db).build().await?;
//!
//! a.set("user:42", &"Ada".to_string()).await?;
//! assert_eq!(*b.get::<String>("user:42").await?.unwrap(), "Ada"); // L2 hit, fills B's L1
//!
//! a.set("user:42", &"Ada Lovelace".to_string()).await?;          // notifies B
//! # tokio::task::yield_now().await;
//! assert_eq!(*a.get::<String>("user:42").await?.unwrap(), "Ada Lovelace"); // A's L1
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//!
//! * An L1 hit does no I/O and no decoding: L1 keeps the decoded `Arc<T>`.
//! * A write and its invalidation commit together; a rolled-back write
//!   publishes nothing.
//! * After a node applies an invalidation, it never serves the older value
//!   again — including from an L2 read that was in flight at the time.
//! * When the LISTEN connection is lost or stops answering heartbeats, L1 is
//!   purged and bypassed until LISTEN is back (and purged again then).
//! * `get_or_load` runs a loader once per key per node however many callers
//!   miss at once, and keeps answering with the last known value (within a
//!   fail-safe window) while the source fails.
//! * Any client can invalidate with `SELECT pg_notify('cache_invalidate', 'key')`.
//!   The wire protocol is specified in `docs/PROTOCOL.md`.
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `test-util` | `C3Builder::fill_hook`, to make race tests deterministic |
//! | `lz4` | `C3Builder::compress_above`: LZ4 compression of large values in L2 (`json+lz4`) |
//! | `msgpack` | [`Codec`]`::MessagePack` for values (`msgpack` rows) |
//! | `postcard` | [`Codec`]`::Postcard` for values (`postcard` rows) |
//! | `otlp` | `otlp::install`: tracer and meter providers exporting over OTLP (HTTP/protobuf or gRPC) |
//!
//! ## Layout
//!
//! The engine — everything but `postgres/` — talks to L2 through
//! `store::Store` and hears other nodes through the invalidation feed (a
//! task that applies each notification to `coherency`); PostgreSQL is one
//! implementation of both, the in-process `memory` server the other. Only
//! `start` picks one.
//!
//! * `builder` — [`C3Builder`]: every setting, nothing else.
//! * `config` — [`C3Builder::from_env`]: the `C3_*` variables.
//! * `start` — [`C3Builder::build`]: from settings to a running [`C3`]
//!   (L1, the store, the feed, the sweeper).
//! * `cache` — [`C3`], the typed get/set/delete/invalidate API: the handle in
//!   `cache/mod.rs`, each kind of operation beside it (`read`, `write`,
//!   `invalidate`).
//! * `fill` — [`C3::begin_fill`] and [`Fill`]: caching what was read from a
//!   source, fenced against writes that committed after the read began
//!   (writers `set`, fillers `fill`).
//! * `loader` — [`C3::get_or_load`]: cache-aside loading with singleflight,
//!   cross-node stampede protection, fail-safe stale answers, soft/hard
//!   timeouts, negative caching and eager refresh.
//! * `breaker` — the circuit breakers guarding L2 and each loader source.
//! * `l2` — the one way into L2: breaker, timeout, span and counters
//!   around every store call.
//! * `coherency` — L1 and the rules that keep it coherent (versions, fill
//!   tokens, fail-safe purge); what a feed calls to apply notifications.
//! * `combiner` — concurrent writes sharing one transaction and one NOTIFY.
//! * `store` — the L2 interface the engine owns ([`Durability`], fences,
//!   the deadline every L2 call runs under, the sweeper).
//! * `memory` — [`MemoryServer`]: the in-process store and its feed.
//! * `postgres` — everything PostgreSQL: `sql` (statement text), `schema`
//!   (migrate, verify), `session` (bounded transactions), `store` (the
//!   operations), `listen` (the LISTEN feed and heartbeat), `warm_reconnect`
//!   (the change-log replay), [`tls`]. A second invalidation transport is a sibling of
//!   `postgres/listen.rs`: a task holding a `feed::Feed`, started from
//!   `start`.
//! * `feed` — the invalidation feed a transport drives: messages and
//!   liveness ([`ListenerState`]).
//! * `protocol` — the notification payload grammar.
//! * `events` — [`Applied`], the observer hook for each applied notification.
//! * `operation`, `tier` — one vocabulary for operations, tiers and
//!   outcomes (span names, metric attributes).
//! * `telemetry` — the tracing spans (`c3.get`, `c3.l2`, …) and the
//!   OpenTelemetry metrics (instruments listed on [`C3Builder::meter`]).
//! * `otlp` — one-call OTLP export (feature `otlp`).
//! * `codec` — [`Codec`]: how values are encoded in L2 (JSON, MessagePack,
//!   postcard, each optionally LZ4-compressed; `absent`).
//! * `key`, `ident`, `clock`, `stats`, `error` — key rules, SQL identifiers,
//!   injectable time, counters, errors.
//!
//! [moka]: https://docs.rs/moka

mod breaker;
mod builder;
mod cache;
mod clock;
mod codec;
mod coherency;
mod combiner;
mod config;
mod entry;
mod error;
mod events;
mod feed;
mod fill;
mod flights;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod ident;
mod key;
mod l2;
mod loader;
mod memory;
mod operation;
#[cfg(feature = "otlp")]
pub mod otlp;
mod postgres;
mod protocol;
#[cfg(feature = "relay")]
pub mod relay;
mod start;
mod stats;
mod store;
mod telemetry;
mod tier;
pub mod tls;

pub use breaker::{BreakerConfig, BreakerState};
pub use builder::C3Builder;
#[cfg(feature = "test-util")]
pub use builder::FillHook;
pub use cache::{C3, SqlNames};
pub use clock::{Clock, ManualClock, SystemClock, unix_micros};
pub use codec::Codec;
pub use coherency::L1Eviction;
pub use error::{Error, ErrorKind, Result};
pub use events::{Applied, AppliedObserver};
pub use feed::ListenerState;
pub use fill::Fill;
pub use key::{HTTP_TAG_PREFIX, KeyError, MAX_KEY_BYTES_LIMIT};
pub use loader::{LoadOptions, Loader};
pub use memory::MemoryServer;
pub use protocol::ProtocolError;
pub use stats::Stats;
pub use store::Durability;
pub use tier::Tier;
