//! The write cost of coherency: `set` (upsert + `pg_notify` in one
//! transaction) against the same upsert without the notification, at 1, 4
//! and 16 concurrent writers — with the L2 table logged (the default) and
//! `UNLOGGED` (`Durability::Unlogged`) — and against Redis `SET` +
//! `PUBLISH` (pipelined: one round trip, as c3's `set` is); and what
//! batching several keys in one transaction (`set_many`) buys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::read::measure;
use crate::stats::Summary;
use crate::{Env, Profile, SCHEMA};

/// One writer count's comparison.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WriteCost {
    pub(crate) writers: usize,
    pub(crate) c3_set: Summary,
    /// `set` with `Durability::Unlogged`.
    pub(crate) c3_set_unlogged: Summary,
    pub(crate) plain_upsert: Summary,
    /// Redis `SET` + `PUBLISH`, if Redis answered.
    pub(crate) redis_set_publish: Option<Summary>,
    /// c3 `set` throughput over plain upsert throughput.
    pub(crate) ratio: f64,
}

/// Keys per second written one per transaction and `batch` per transaction.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Batching {
    pub(crate) batch: usize,
    pub(crate) single_keys_per_s: f64,
    pub(crate) batched_keys_per_s: f64,
}

/// c3's own upsert statement, minus the notification.
fn upsert() -> String {
    format!(
        "INSERT INTO {SCHEMA}.cache_data (key, value, encoding, expires_at, stale_until) \
VALUES ($1, $2, 'json', now() + interval '1 hour', NULL) ON CONFLICT (key) DO UPDATE SET \
value = EXCLUDED.value, encoding = EXCLUDED.encoding, expires_at = EXCLUDED.expires_at, \
stale_until = EXCLUDED.stale_until RETURNING version"
    )
}

pub(crate) async fn run(env: &Env) -> (Vec<WriteCost>, Batching) {
    let value = Profile::sample(1);
    let bytes = serde_json::to_vec(&value).expect("json");
    let counter = Arc::new(AtomicU64::new(0));
    let writer_counts: &[usize] = if env.quick { &[1, 16] } else { &[1, 4, 16] };
    let mut costs = Vec::new();
    for &w in writer_counts {
        let logged = env.node("c3_bench_write", 64 << 20);
        let c3_set = c3_sets(logged, "c3 set (upsert + notify)", env, w, &value, &counter).await;
        // The same, on a table of its own created UNLOGGED.
        let unlogged = env
            .node("c3_bench_write", 64 << 20)
            .table("cache_unlogged")
            .durability(c3::core::Durability::Unlogged);
        let c3_set_unlogged =
            c3_sets(unlogged, "c3 set, unlogged table", env, w, &value, &counter).await;

        let redis_set_publish = redis_writes(env, w, &bytes, &counter).await;

        let mut clients = Vec::new();
        for _ in 0..w {
            let c = env.pg().await;
            let stmt = c.prepare(&upsert()).await.expect("prepare");
            clients.push(Arc::new((c, stmt)));
        }
        let (b, n) = (bytes.clone(), Arc::clone(&counter));
        let plain_upsert = measure("plain upsert (no notify)", w, env.series, move |i| {
            let (cs, b) = (Arc::clone(&clients[i]), b.clone());
            let k = n.fetch_add(1, Ordering::Relaxed) % 100;
            async move {
                cs.0.query_one(&cs.1, &[&format!("w{i}:{k}"), &b])
                    .await
                    .expect("upsert");
            }
        })
        .await;
        let ratio = c3_set.ops_per_s / plain_upsert.ops_per_s.max(1e-9);
        eprintln!(
            "  {w} writers: set/upsert = {ratio:.2}, unlogged/logged = {:.2}",
            c3_set_unlogged.ops_per_s / c3_set.ops_per_s.max(1e-9)
        );
        costs.push(WriteCost {
            writers: w,
            c3_set,
            c3_set_unlogged,
            plain_upsert,
            redis_set_publish,
            ratio,
        });
    }
    (costs, batching(env, &value).await)
}

/// `set` throughput of a node built from `node` with `writers` pooled
/// connections, each writer cycling over 100 keys of its own.
async fn c3_sets(
    node: c3::C3Builder,
    name: &str,
    env: &Env,
    writers: usize,
    value: &Profile,
    counter: &Arc<AtomicU64>,
) -> Summary {
    let c3 = node.pool_size(writers).build().await.expect("node");
    let (v, n, cc) = (value.clone(), Arc::clone(counter), c3.clone());
    let summary = measure(name, writers, env.series, move |i| {
        let (c3, v) = (cc.clone(), v.clone());
        let k = n.fetch_add(1, Ordering::Relaxed) % 100;
        async move {
            c3.set(&format!("w{i}:{k}"), &v).await.expect("set");
        }
    })
    .await;
    c3.shutdown().await;
    summary
}

/// Redis `SET` + `PUBLISH` per write, both sent before either reply is
/// read: one round trip, like c3's one-statement `set`. `None` if Redis does
/// not answer.
async fn redis_writes(
    env: &Env,
    writers: usize,
    bytes: &[u8],
    counter: &Arc<AtomicU64>,
) -> Option<Summary> {
    let mut conns = Vec::new();
    for _ in 0..writers {
        match crate::redis::Redis::connect(&env.redis).await {
            Ok(c) => conns.push(Arc::new(tokio::sync::Mutex::new(c))),
            Err(e) => {
                eprintln!(
                    "  Redis at {} does not answer ({e}): no Redis write baseline",
                    env.redis
                );
                return None;
            }
        }
    }
    let (b, n) = (Arc::new(bytes.to_vec()), Arc::clone(counter));
    Some(
        measure("Redis SET + PUBLISH", writers, env.series, move |i| {
            let (conn, b) = (Arc::clone(&conns[i]), Arc::clone(&b));
            let k = n.fetch_add(1, Ordering::Relaxed) % 100;
            async move {
                let key = format!("c3bench:w{i}:{k}");
                let mut r = conn.lock().await;
                r.send(&[b"SET", key.as_bytes(), &b]).await.expect("SET");
                r.send(&[b"PUBLISH", b"c3bench_writes", key.as_bytes()])
                    .await
                    .expect("PUBLISH");
                r.reply().await.expect("SET reply");
                r.reply().await.expect("PUBLISH reply");
            }
        })
        .await,
    )
}

async fn batching(env: &Env, value: &Profile) -> Batching {
    const BATCH: usize = 10;
    let c3 = env
        .node("c3_bench_write", 64 << 20)
        .build()
        .await
        .expect("node");
    let series = env.series.min(Duration::from_secs(3));
    let (cc, v) = (c3.clone(), value.clone());
    let single = measure("set, one key per transaction", 1, series, move |_| {
        let (c3, v) = (cc.clone(), v.clone());
        async move {
            c3.set("batch:single", &v).await.expect("set");
        }
    })
    .await;
    let (cc, v) = (c3.clone(), value.clone());
    let keys: Arc<Vec<String>> = Arc::new((0..BATCH).map(|i| format!("batch:{i}")).collect());
    let batched = measure("set_many, 10 keys per transaction", 1, series, move |_| {
        let (c3, v, keys) = (cc.clone(), v.clone(), Arc::clone(&keys));
        async move {
            let entries: Vec<(&str, Profile)> =
                keys.iter().map(|k| (k.as_str(), v.clone())).collect();
            c3.set_many(&entries).await.expect("set_many");
        }
    })
    .await;
    c3.shutdown().await;
    Batching {
        batch: BATCH,
        single_keys_per_s: single.ops_per_s,
        batched_keys_per_s: batched.ops_per_s * BATCH as f64,
    }
}
