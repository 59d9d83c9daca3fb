//! `Repository::find` against the plain sqlx query it wraps, in one run:
//! an L1 hit, an L2 hit (a node without L1), and `SELECT … WHERE id = $1`.
//!
//! ```text
//! cargo bench --bench repository
//! ```
//!
//! Needs PostgreSQL (`DATABASE_URL`, else the local default); works in its
//! own schema and drops it.

use std::str::FromStr;
use std::time::Duration;

use c3::C3;
use c3_sqlx::{Cached, Repository};
mod common;

use common::timed;
use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const SCHEMA: &str = "c3_bench_repository";

#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize, Cached)]
#[c3(table = "users", key = "id", ttl = "1h")]
struct User {
    id: i64,
    email: String,
    name: String,
}

fn repository(c: &mut Criterion) {
    let rt = common::runtime();
    let url = common::database_url();
    let (pool, l1, l2) = rt.block_on(async {
        let opts = PgConnectOptions::from_str(&url)
            .unwrap()
            .options([("search_path", SCHEMA)]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
        sqlx::raw_sql(
            "DROP SCHEMA IF EXISTS c3_bench_repository CASCADE;
             CREATE SCHEMA c3_bench_repository;
             CREATE TABLE c3_bench_repository.users (id bigint PRIMARY KEY, email text, name text);
             INSERT INTO c3_bench_repository.users VALUES (42, 'ada@example.com', 'Ada Lovelace');",
        )
        .execute(&pool)
        .await
        .unwrap();
        let node = |l1_bytes| {
            C3::builder()
                .postgres(&url)
                .schema(SCHEMA)
                .channel("c3_bench_repository")
                .l1_max_bytes(l1_bytes)
                .build()
        };
        let l1 = Repository::<User>::new(node(64 << 20).await.unwrap(), pool.clone());
        let l2 = Repository::<User>::new(node(0).await.unwrap(), pool.clone());
        l1.find(&42).await.unwrap().unwrap();
        l2.find(&42).await.unwrap().unwrap();
        (pool, l1, l2)
    });
    let mut g = c.benchmark_group("find");
    g.bench_function("plain_sqlx_select", |b| {
        b.iter_custom(|n| {
            timed(&rt, n, || async {
                let u: Option<User> =
                    sqlx::query_as("SELECT id, email, name FROM users WHERE id = $1")
                        .bind(42i64)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                std::hint::black_box(u);
            })
        });
    });
    g.bench_function("repository_l2_hit", |b| {
        b.iter_custom(|n| {
            timed(&rt, n, || async {
                std::hint::black_box(l2.find(&42).await.unwrap());
            })
        });
    });
    g.bench_function("repository_l1_hit", |b| {
        b.iter_custom(|n| {
            timed(&rt, n, || async {
                std::hint::black_box(l1.find(&42).await.unwrap());
            })
        });
    });
    g.finish();
    rt.block_on(async {
        sqlx::raw_sql("DROP SCHEMA c3_bench_repository CASCADE")
            .execute(&pool)
            .await
            .unwrap();
    });
}

criterion_group!(
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = repository
);
criterion_main!(benches);
