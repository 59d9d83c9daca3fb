//! Test support for the HTTP rule tests: nodes on an in-process L2 (the
//! rules need no PostgreSQL), and the origin and helpers shared with the
//! workspace's cross-crate tests.

#![allow(dead_code, unreachable_pub)]

pub mod origin;

pub use c3_core::C3;
pub use c3_tower::{C3Body, C3CacheLayer};

/// The request body the shared helpers send.
pub type ReqBody = http_body_util::Full<bytes::Bytes>;

/// A node on `server`; nodes on one server are replicas of each other.
pub async fn node(server: &c3_core::MemoryServer) -> C3 {
    C3::builder().memory(server).build().await.unwrap()
}

/// A node on an in-process L2 of its own whose clock is `clock`.
pub async fn clocked(clock: &c3_core::ManualClock) -> C3 {
    C3::builder()
        .memory(&c3_core::MemoryServer::new())
        .clock(clock.clone())
        .build()
        .await
        .unwrap()
}
