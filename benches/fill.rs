//! What the fence costs: a writer's `set` against a filler's `begin_fill` +
//! `Fill::store` of the same value, and the fence alone — the one round trip
//! the HTTP layer adds before a miss goes upstream (its store runs in the
//! background, after the response has started streaming).
//!
//! ```text
//! cargo bench --bench fill
//! ```
//!
//! Needs PostgreSQL: `DATABASE_URL`, else the local default. Uses (and drops)
//! its own schema.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use c3::C3;
use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::{database_url, runtime, timed};

const SCHEMA: &str = "c3_bench_fill";

fn fill(c: &mut Criterion) {
    let rt = runtime();
    let url = database_url();
    let Some(c3) = rt.block_on(async {
        C3::builder()
            .postgres(&url)
            .schema(SCHEMA)
            .build()
            .await
            .map_err(|e| eprintln!("fill bench skipped: PostgreSQL at {url}: {e}"))
            .ok()
    }) else {
        return;
    };
    let value = "x".repeat(200);
    let ttl = Some(Duration::from_secs(600));
    let n = AtomicU64::new(0);
    // A fresh key per call, as a miss would store.
    let key = || format!("k{}", n.fetch_add(1, Ordering::Relaxed));

    let mut g = c.benchmark_group("fill");
    g.bench_function("set_tagged (writer)", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                c3.set_tagged(&key(), &value, ttl, &["uri:x"])
                    .await
                    .unwrap();
            })
        });
    });
    g.bench_function("begin_fill (the fence alone)", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                drop(std::hint::black_box(c3.begin_fill(&[]).await.unwrap()));
            })
        });
    });
    g.bench_function("begin_fill + store (filler)", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                let k = key();
                let fill = c3.begin_fill(&[&k]).await.unwrap();
                assert!(fill.store(&k, &value, ttl, &["uri:x"]).await.unwrap());
            })
        });
    });
    g.finish();

    rt.block_on(async {
        c3.shutdown().await;
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            .await
            .unwrap();
    });
}

criterion_group!(
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = fill
);
criterion_main!(benches);
