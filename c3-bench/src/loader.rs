//! Cache-aside loading under a stampede and while the source is down:
//! how many loader calls 100 simultaneous misses cost, and how fast a
//! fail-safe (stale) answer comes back while every load fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use c3::core::LoadOptions;
use serde::Serialize;

use crate::read::measure;
use crate::stats::Summary;
use crate::{Env, Profile};

/// What loading cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Loading {
    pub(crate) stampede_callers: usize,
    pub(crate) stampede_loader_calls: u64,
    pub(crate) stampede_all_answered_ms: f64,
    pub(crate) fail_safe: Summary,
    pub(crate) loader_calls_while_down: u64,
}

pub(crate) async fn run(env: &Env) -> Loading {
    const CALLERS: usize = 100;
    let c3 = env
        .node("c3_bench_loader", 64 << 20)
        .build()
        .await
        .expect("node");
    let calls = Arc::new(AtomicU64::new(0));
    let opts = LoadOptions::new().ttl(Some(Duration::from_secs(60)));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (c3, opts, calls) = (c3.clone(), opts.clone(), Arc::clone(&calls));
            tokio::spawn(async move {
                c3.get_or_load("stampede", &opts, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // A source that takes a while: a slow query or service.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, std::io::Error>(Some(Profile::sample(1)))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.expect("task").expect("load").is_some());
    }
    let all_answered = start.elapsed();

    let opts = LoadOptions::new()
        .ttl(Some(Duration::from_millis(200)))
        .fail_safe(Duration::from_secs(3600))
        .source("down");
    c3.get_or_load("fail-safe", &opts, || async {
        Ok::<_, std::io::Error>(Some(Profile::sample(2)))
    })
    .await
    .expect("first load");
    tokio::time::sleep(Duration::from_millis(300)).await; // past the TTL
    let down = Arc::new(AtomicU64::new(0));
    let (cc, d) = (c3.clone(), Arc::clone(&down));
    let fail_safe = measure(
        "get_or_load while the source fails",
        1,
        env.series.min(Duration::from_secs(2)),
        move |_| {
            let (c3, opts, down) = (cc.clone(), opts.clone(), Arc::clone(&d));
            async move {
                let v = c3
                    .get_or_load::<Profile, _, _, _>("fail-safe", &opts, move || async move {
                        down.fetch_add(1, Ordering::SeqCst);
                        Err::<Option<Profile>, _>(std::io::Error::other("source down"))
                    })
                    .await
                    .expect("a stale answer, not an error");
                assert!(v.is_some());
            }
        },
    )
    .await;
    c3.shutdown().await;
    Loading {
        stampede_callers: CALLERS,
        stampede_loader_calls: calls.load(Ordering::SeqCst),
        stampede_all_answered_ms: all_answered.as_secs_f64() * 1000.0,
        fail_safe,
        loader_calls_while_down: down.load(Ordering::SeqCst),
    }
}
