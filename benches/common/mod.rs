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
