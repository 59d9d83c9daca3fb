//! Read path micro-benchmarks: a c3 L1 hit against the floor (a bare moka
//! get of the same `Arc` value) and, when PostgreSQL answers, a c3 L2 hit
//! (L1 disabled) against a plain `SELECT` by primary key, and a node's first
//! read of a key right after another node wrote it — with an invalidation
//! (an L2 read follows) and with value push (`push_values`: an L1 hit).
//!
//! ```text
//! cargo bench --bench read_path
//! ```
//!
//! The in-process pair runs twice: without telemetry (`read/…`), then with
//! the OpenTelemetry pipeline installed (`read_otel/…`).
//!
//! L2 and SELECT need `DATABASE_URL` (or the local default); without it they
//! are skipped with a message and the in-process pair still runs.

use std::sync::Arc;
use std::time::Duration;

use c3::{C3, MemoryServer};
mod common;

use common::timed;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
    bio: String,
}

fn user() -> User {
    User {
        id: 42,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        bio: "x".repeat(140),
    }
}

fn read_path(c: &mut Criterion) {
    let rt = common::runtime();
    let mut g = c.benchmark_group("read");

    l1_pair(&mut g, &rt);

    let url = common::database_url();
    let pg = rt.block_on(async {
        let c3 = C3::builder()
            .postgres(&url)
            .schema("c3_bench_read")
            .channel("c3_bench_read")
            .l1_max_bytes(0)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await
            .ok()?;
        c3.set("user:42", &user()).await.ok()?;
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS c3_bench_users (id bigint PRIMARY KEY, name text, email text, bio text);
                 INSERT INTO c3_bench_users VALUES (42, 'Ada Lovelace', 'ada@example.com', repeat('x', 140))
                 ON CONFLICT (id) DO NOTHING",
            )
            .await
            .ok()?;
        let stmt = client
            .prepare("SELECT id, name, email, bio FROM c3_bench_users WHERE id = $1")
            .await
            .ok()?;
        Some((c3, client, stmt))
    });
    match &pg {
        Some((c3, client, stmt)) => {
            g.bench_function("c3_l2_hit", |b| {
                b.iter_custom(|n| {
                    timed(&rt, n, || async {
                        std::hint::black_box(c3.get::<User>("user:42").await.unwrap());
                    })
                });
            });
            g.bench_function("postgres_select_pk", |b| {
                b.iter_custom(|n| {
                    timed(&rt, n, || async {
                        let row = client.query_one(stmt, &[&42i64]).await.unwrap();
                        std::hint::black_box(User {
                            id: row.get::<_, i64>(0) as u64,
                            name: row.get(1),
                            email: row.get(2),
                            bio: row.get(3),
                        });
                    })
                });
            });
        }
        None => eprintln!("read_path: PostgreSQL not reachable at {url}; L2 and SELECT skipped"),
    }
    if pg.is_some() {
        let nodes = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..2 {
                let node = C3::builder()
                    .postgres(&url)
                    .schema("c3_bench_read")
                    .channel("c3_bench_peer")
                    .push_values("pushed:")
                    .build()
                    .await
                    .unwrap();
                v.push(node);
            }
            v
        });
        for (name, key) in [
            ("peer_read_after_write_invalidated", "plain:1"),
            ("peer_read_after_write_pushed", "pushed:1"),
        ] {
            g.bench_function(name, |b| {
                b.iter_custom(|n| rt.block_on(read_after_peer_write(&nodes[0], &nodes[1], key, n)));
            });
        }
        rt.block_on(async {
            for node in nodes {
                node.shutdown().await;
            }
        });
    }
    g.finish();
    l1_hit_with_otel(c, &rt);
    if let Some((c3, client, _)) = pg {
        rt.block_on(async {
            let _ = client
                .batch_execute(
                    "DROP TABLE IF EXISTS c3_bench_users; DROP SCHEMA IF EXISTS c3_bench_read CASCADE",
                )
                .await;
            c3.shutdown().await;
        });
    }
}

/// The floor and the c3 L1 hit of the same value, side by side: a bare
/// moka get of an `Arc`, and `C3::get` answered from L1 (a fresh cache,
/// built after whatever telemetry is installed).
fn l1_pair(g: &mut BenchmarkGroup<'_, WallTime>, rt: &tokio::runtime::Runtime) {
    let moka: moka::sync::Cache<String, Arc<User>> = moka::sync::Cache::new(10_000);
    moka.insert("user:42".into(), Arc::new(user()));
    g.bench_function("moka_get", |b| {
        b.iter(|| std::hint::black_box(moka.get("user:42")));
    });
    let mem = rt.block_on(async {
        let c3 = C3::builder()
            .memory(&MemoryServer::new())
            .build()
            .await
            .unwrap();
        c3.set("user:42", &user()).await.unwrap();
        c3.get::<User>("user:42").await.unwrap();
        c3
    });
    g.bench_function("c3_l1_hit", |b| {
        b.iter_custom(|n| {
            timed(rt, n, || async {
                std::hint::black_box(mem.get::<User>("user:42").await.unwrap());
            })
        });
    });
}

/// The L1 pair again with the OpenTelemetry pipeline installed (how users
/// run c3): an answer from L1 is a DEBUG span, so at the pipeline's INFO it
/// should cost what it costs without.
fn l1_hit_with_otel(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let otel = rt.block_on(common::install_otel("read-path-bench"));
    let mut g = c.benchmark_group("read_otel");
    l1_pair(&mut g, rt);
    g.finish();
    rt.block_on(async { drop(otel.shutdown().await) });
}

/// Times only `reader`'s first read after each of `writer`'s writes has
/// reached it.
async fn read_after_peer_write(writer: &C3, reader: &C3, key: &str, n: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut u = user();
    for i in 0..n {
        u.id = i;
        let heard = reader.stats().invalidations_received;
        writer.set(key, &u).await.unwrap();
        while reader.stats().invalidations_received == heard {
            tokio::task::yield_now().await;
        }
        let t = std::time::Instant::now();
        let got = reader.get::<User>(key).await.unwrap();
        total += t.elapsed();
        assert_eq!(got.map(|u| u.id), Some(i));
    }
    total
}

criterion_group!(
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = read_path
);
criterion_main!(benches);
