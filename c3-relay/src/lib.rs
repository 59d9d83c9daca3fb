//! The c3 relay (PROTOCOL.md §6): reads c3's invalidations from a
//! PostgreSQL logical replication slot and publishes them to NATS, in
//! commit order, one leader per slot. Nodes in relay mode
//! ([`C3Builder::relay`](c3_core::C3Builder::relay)) subscribe there
//! instead of holding a LISTEN session each.
//!
//! This crate is the relay as a process of its own (the `c3-relay`
//! binary, configured by `C3_*` variables) and as a library. The relay
//! itself lives in `c3_core::relay`, so that a node can also run one
//! ([`C3Builder::embedded_relay`](c3_core::C3Builder::embedded_relay)).
//!
//! ```no_run
//! # async fn run() -> c3_core::Result<()> {
//! use c3_relay::{Nats, Relay};
//! let relay = Relay::builder()
//!     .postgres("postgres://relay@db/app")
//!     .nats(Nats::new("nats://nats:4222"))
//!     .build()?
//!     .spawn();
//! // … until the process is asked to stop:
//! relay.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub use c3_core::relay::{Nats, Relay, RelayBuilder, RelayHandle, RelayStatus, wire};
