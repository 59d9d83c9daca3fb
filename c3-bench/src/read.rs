//! Read path: the same ~200-byte value through c3 L1, bare moka (the floor),
//! c3 L2, Redis `GET` + decode (the "just add Redis" design), and a
//! `SELECT` by primary key (no cache), with 1 and 2 worker tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use c3::C3;

use crate::redis::{Redis, Reply};
use crate::stats::{Samples, Summary};
use crate::{Env, Profile, SCHEMA};

/// Runs `op` in a loop on `workers` tasks for `series`, timing each call.
pub(crate) async fn measure<F, Fut>(name: &str, workers: usize, series: Duration, op: F) -> Summary
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + series;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut s = Samples::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(w).await;
                    s.push(t.elapsed());
                }
                s
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all.summary(name, workers, start.elapsed())
}

pub(crate) async fn run(env: &Env) -> Vec<Summary> {
    let value = Profile::sample(42);
    let bytes = serde_json::to_vec(&value).expect("json");

    let moka: moka::sync::Cache<String, Arc<Profile>> = moka::sync::Cache::new(100_000);
    moka.insert("user:42".into(), Arc::new(value.clone()));

    let l1 = env
        .node("c3_bench_read", 64 << 20)
        .build()
        .await
        .expect("c3 node");
    l1.set("user:42", &value).await.expect("set");
    l1.get::<Profile>("user:42").await.expect("get");
    let l2 = env.node("c3_bench_read", 0).build().await.expect("c3 node");

    let pg = env.pg().await;
    pg.batch_execute(&format!(
        "CREATE TABLE {SCHEMA}.users (id bigint PRIMARY KEY, name text, email text, bio text);
         INSERT INTO {SCHEMA}.users VALUES (42, $${}$$, $${}$$, $${}$$);",
        value.name, value.email, value.bio
    ))
    .await
    .expect("users table");

    let mut redis = Redis::connect(&env.redis)
        .await
        .unwrap_or_else(|e| panic!("Redis at {}: {e}", env.redis));
    redis
        .cmd(&[b"SET", b"c3bench:user:42", &bytes])
        .await
        .expect("redis SET");

    let mut out = Vec::new();
    for workers in [1, 2] {
        let m = moka.clone();
        out.push(
            measure("moka get (floor)", workers, env.series, move |_| {
                let v = m.get("user:42");
                async move {
                    std::hint::black_box(v);
                }
            })
            .await,
        );
        let c = l1.clone();
        out.push(
            measure("c3 L1 hit", workers, env.series, move |_| {
                let c = c.clone();
                async move {
                    std::hint::black_box(c.get::<Profile>("user:42").await.expect("l1"));
                }
            })
            .await,
        );
        let c = l2.clone();
        out.push(
            measure("c3 L2 hit", workers, env.series, move |_| {
                let c = c.clone();
                async move {
                    std::hint::black_box(c.get::<Profile>("user:42").await.expect("l2"));
                }
            })
            .await,
        );
        out.push(redis_get(env, workers).await);
        out.push(pg_select(env, workers).await);
    }
    l1.shutdown().await;
    l2.shutdown().await;
    check_hits(&out);
    out
}

fn check_hits(out: &[Summary]) {
    // Every series must have done real work, or the comparison means nothing.
    for s in out {
        assert!(s.count > 0, "{} made no progress", s.name);
    }
}

async fn redis_get(env: &Env, workers: usize) -> Summary {
    let mut conns = Vec::new();
    for _ in 0..workers {
        conns.push(Arc::new(tokio::sync::Mutex::new(
            Redis::connect(&env.redis).await.expect("redis"),
        )));
    }
    measure("Redis GET + decode", workers, env.series, move |w| {
        let conn = Arc::clone(&conns[w]);
        async move {
            let mut r = conn.lock().await;
            let Reply::Bulk(Some(b)) = r.cmd(&[b"GET", b"c3bench:user:42"]).await.expect("GET")
            else {
                panic!("redis lost the value");
            };
            std::hint::black_box(serde_json::from_slice::<Profile>(&b).expect("decode"));
        }
    })
    .await
}

async fn pg_select(env: &Env, workers: usize) -> Summary {
    let mut clients = Vec::new();
    for _ in 0..workers {
        let c = env.pg().await;
        let stmt = c
            .prepare(&format!(
                "SELECT id, name, email, bio FROM {SCHEMA}.users WHERE id = $1"
            ))
            .await
            .expect("prepare");
        clients.push(Arc::new((c, stmt)));
    }
    measure("PostgreSQL SELECT by key", workers, env.series, move |w| {
        let cs = Arc::clone(&clients[w]);
        async move {
            let row = cs.0.query_one(&cs.1, &[&42i64]).await.expect("select");
            std::hint::black_box(Profile {
                id: row.get::<_, i64>(0) as u64,
                name: row.get(1),
                email: row.get(2),
                bio: row.get(3),
            });
        }
    })
    .await
}

/// A c3 handle is usable from many tasks at once.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<C3>();
};
