//! LZ4 compression of large values: size in L2 and the time of a write and
//! of an L2 read, with and without it, on one 64 KiB JSON value, in one run.
//!
//! ```text
//! cargo bench --bench compression
//! ```
//!
//! Needs PostgreSQL (`DATABASE_URL`, else the local default). L1 is off on
//! both nodes, so every read goes to L2.

mod common;

use std::time::Duration;

use c3::C3;
use common::timed;
use criterion::{Criterion, criterion_group, criterion_main};

fn compression(c: &mut Criterion) {
    let rt = common::runtime();
    let url = common::database_url();
    let doc: Vec<String> = (0..1210)
        .map(|i| format!("{{\"id\":{i},\"name\":\"user {i}\",\"active\":true}}"))
        .collect();
    let json = serde_json::to_vec(&doc).unwrap().len();
    let (plain, packed, client) = rt.block_on(async {
        let node = |compress: Option<usize>| {
            C3::builder()
                .postgres(&url)
                .schema("c3_bench_compression")
                .channel("c3_bench_compression")
                .l1_max_bytes(0)
                .compress_above(compress)
                .build()
        };
        let plain = node(None).await.expect("PostgreSQL");
        let packed = node(Some(4096)).await.unwrap();
        plain.set("plain", &doc).await.unwrap();
        packed.set("packed", &doc).await.unwrap();
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        (plain, packed, client)
    });
    let sizes = rt.block_on(async {
        client
            .query(
                "SELECT key, encoding, octet_length(value) FROM c3_bench_compression.cache_data \
                 WHERE key IN ('plain', 'packed') ORDER BY key DESC",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} bytes ({})",
                    r.get::<_, String>(0),
                    r.get::<_, i32>(2),
                    r.get::<_, String>(1)
                )
            })
            .collect::<Vec<_>>()
    });
    eprintln!(
        "compression: {json} bytes of JSON stored as {}",
        sizes.join(", ")
    );
    let mut g = c.benchmark_group("64KiB");
    for (name, node, key) in [("plain", &plain, "plain"), ("lz4", &packed, "packed")] {
        g.bench_function(format!("set_{name}"), |b| {
            b.iter_custom(|n| {
                timed(&rt, n, || async {
                    node.set(key, &doc).await.unwrap();
                })
            });
        });
        g.bench_function(format!("l2_get_{name}"), |b| {
            b.iter_custom(|n| {
                timed(&rt, n, || async {
                    std::hint::black_box(node.get::<Vec<String>>(key).await.unwrap());
                })
            });
        });
    }
    g.finish();
    rt.block_on(async {
        let _ = client
            .batch_execute("DROP SCHEMA IF EXISTS c3_bench_compression CASCADE")
            .await;
    });
}

criterion_group!(
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = compression
);
criterion_main!(benches);
