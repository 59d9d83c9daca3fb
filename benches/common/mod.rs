//! Shared by the criterion benches (a folder, so Cargo does not take it for
//! a bench of its own).

use std::time::{Duration, Instant};

/// Times `iters` sequential awaits of `f` inside one runtime entry, so the
/// cost of entering the runtime is not part of the figure.
pub(crate) fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        t.elapsed()
    })
}

/// A single-threaded runtime: one worker, so figures are per core.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `DATABASE_URL`, else the local default.
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}
