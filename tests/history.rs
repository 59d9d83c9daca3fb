//! A history checker: K nodes, many tasks doing get/get_or_load/set/delete on
//! a small key space; every operation is logged, and afterwards a checker
//! verifies
//!
//! 1. **no stale read after delivery**: a read on node X returns a value at
//!    least as new as every write to that key whose notification X had
//!    applied — or that X itself had completed — before the read started;
//! 2. **monotonic reads**: one task's reads of a key never go backwards;
//! 3. every value read was actually written.
//!
//! Writes to one key are serialised by the test (one writer at a time per
//! key, across all nodes), so each key's log is in commit order; after each
//! write the writer records the version it committed at (reading it back
//! under that key's lock). Nodes report applied versions through
//! `on_applied`.
//!
//! `get_or_load` loads from a model "source of truth" that each writer
//! updates *before* writing the cache (as cache-aside applications do). So
//! does the third kind of read, a **fill** through `begin_fill` →
//! `Fill::store` (as the sqlx repositories and the HTTP layer do), followed
//! by a `get`: a fill that read the source before a write and were stored
//! after it would show up as a stale read. Loads and fills write to L2 under
//! versions of their own, which no log holds; so a node's bound is matched
//! to the newest logged write at or below it — never a false anomaly, at
//! worst a slightly lower floor.
//!
//! A node that lost its LISTEN connection must, once it listens again, have
//! caught up: a read it starts then sees every write that had completed
//! before the loss was noticed (by a purge, or — with warm reconnect — by
//! replaying the change log). The test watches each node's listener state
//! and raises that node's floor accordingly.
//!
//! Seeded and bounded: `C3_HISTORY_SECS` (default 3) and `C3_HISTORY_SEED`
//! (default: random, printed) reproduce or lengthen a run. One variant runs
//! a reading node behind a fault proxy that drops its connections again and
//! again; another runs every node with warm reconnect, and alternates
//! dropped and blackholed links with killed listener backends.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use c3::core::{C3, ListenerState};
use support::proxy::FaultProxy;
use support::{Rng, TestDb};

/// Keys: few, so operations overlap; more with warm reconnect, so that a key
/// a replay failed to drop is not rewritten (and evicted) before it is read.
const KEYS: usize = 8;
const WARM_KEYS: usize = 64;

/// One key's committed history: (version, value written or `None` for a
/// delete, `History::clock` when the write began, and when it completed).
type Log = Vec<(u64, Option<u64>, u64, u64)>;

/// What a node has seen: per key, the highest version applied from
/// notifications and the highest version of its own completed writes.
#[derive(Default)]
struct NodeView {
    applied: Mutex<HashMap<String, u64>>,
    own: Mutex<HashMap<String, u64>>,
    /// `History::clock` when the node last noticed a lost listener, set
    /// once it listens again: every write completed before it is covered.
    covered: AtomicU64,
}

impl NodeView {
    fn bound(&self, key: &str) -> u64 {
        let a = self.applied.lock().unwrap().get(key).copied().unwrap_or(0);
        let o = self.own.lock().unwrap().get(key).copied().unwrap_or(0);
        a.max(o)
    }
}

/// A read to check: on which node, by which task, the bound when it
/// started, and what it returned.
struct Read {
    node: usize,
    task: usize,
    /// `get`, `get_or_load` or `fill+get`.
    op: &'static str,
    key: usize,
    bound: u64,
    got: Option<u64>,
    /// `History::clock` when the read started and when it returned.
    started: u64,
    ended: u64,
    /// The node's `NodeView::covered` when the read started.
    covered: u64,
}

struct History {
    logs: Vec<tokio::sync::Mutex<Log>>,
    /// The model source of truth `get_or_load` reads: per key, its value.
    source: Mutex<Vec<Option<u64>>>,
    reads: Mutex<Vec<Read>>,
    next_value: AtomicU64,
    /// Ticks at every read start and every completed cache write, so the
    /// checker can tell a value a load or fill took from the source *ahead*
    /// of its writer's cache write (which completed after the read began).
    clock: AtomicU64,
    /// Per key, value → the tick at which its cache write completed.
    written_at: Mutex<HashMap<(usize, u64), u64>>,
}

fn key(k: usize) -> String {
    format!("h{k}")
}

fn settings() -> (Duration, u64) {
    let secs = std::env::var("C3_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = support::seed_from("C3_HISTORY_SEED");
    (Duration::from_secs(secs), seed)
}

/// Records, in `view.covered`, when `node` noticed a lost listener — once
/// it is listening again (see the module docs).
fn watch_reconnects(node: &C3, view: Arc<NodeView>, history: Arc<History>) {
    let mut rx = node.watch_listener();
    tokio::spawn(async move {
        let mut lost: Option<u64> = None;
        while rx.changed().await.is_ok() {
            let state = *rx.borrow_and_update();
            if state == ListenerState::Listening {
                if let Some(t) = lost.take() {
                    view.covered.fetch_max(t, Ordering::SeqCst);
                }
            } else if lost.is_none() {
                lost = Some(history.clock.fetch_add(1, Ordering::SeqCst));
            }
        }
    });
}

async fn node_with_view(db: &TestDb, url: Option<&str>, warm: bool) -> (C3, Arc<NodeView>) {
    let view = Arc::new(NodeView::default());
    let sink = Arc::clone(&view);
    let mut b = db.builder().on_applied(move |n| {
        let mut applied = sink.applied.lock().unwrap();
        for (v, k) in n.written {
            let e = applied.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    });
    if let Some(url) = url {
        b = b
            .postgres(url)
            .op_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(1));
    }
    b = b.warm_reconnect(warm);
    (b.build().await.expect("node"), view)
}

/// The version `key` committed at, read back while its lock is held. After
/// a delete the row is gone, so the sequence's last value stands in: at or
/// above the delete's own version, and below any later write to the key
/// (which must wait for the lock this task holds).
async fn committed_version(db: &TestDb, key: &str) -> u64 {
    let v: i64 = match db.row_version(key).await {
        Some(v) => v,
        None => db
            .client
            .query_one(
                &format!(
                    "SELECT last_value FROM \"{}\".cache_data_version_seq",
                    db.schema
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0),
    };
    u64::try_from(v).unwrap()
}

/// Loads cache their answer (misses too) for a short while.
fn load_options() -> c3::core::LoadOptions {
    c3::core::LoadOptions::new()
        .ttl(Some(Duration::from_secs(5)))
        .negative_ttl(Duration::from_secs(5))
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    db: Arc<TestDb>,
    node: C3,
    view: Arc<NodeView>,
    history: Arc<History>,
    (node_ix, task): (usize, usize),
    writes: bool,
    seed: u64,
    until: Instant,
) -> u64 {
    let mut rng = Rng(seed);
    let mut ops = 0;
    while Instant::now() < until {
        let k = rng.below(history.logs.len());
        let name = key(k);
        let roll = rng.below(100);
        if !writes || roll < 55 {
            let bound = view.bound(&name);
            let covered = view.covered.load(Ordering::SeqCst);
            let started = history.clock.fetch_add(1, Ordering::SeqCst);
            let op = ["get", "get_or_load", "fill+get"][roll % 3];
            let read = if op == "get" {
                node.get::<u64>(&name).await
            } else if op == "fill+get" {
                // Fence, read the source, store what it said, read back.
                match node.begin_fill(&[&name]).await {
                    Ok(fill) => {
                        let read = history.source.lock().unwrap()[k];
                        if let Some(v) = read {
                            let ttl = Some(Duration::from_secs(5));
                            fill.store(&name, &v, ttl, &[&format!("t{}", k % 2)])
                                .await
                                .expect("a valid fill");
                        }
                        node.get::<u64>(&name).await
                    }
                    Err(e) => Err(e),
                }
            } else {
                let history = Arc::clone(&history);
                node.get_or_load(&name, &load_options(), move || async move {
                    Ok::<_, std::io::Error>(history.source.lock().unwrap()[k])
                })
                .await
            };
            let ended = history.clock.fetch_add(1, Ordering::SeqCst);
            match read {
                Ok(got) => history.reads.lock().unwrap().push(Read {
                    node: node_ix,
                    task,
                    op,
                    key: k,
                    bound,
                    got: got.map(|v| *v),
                    started,
                    ended,
                    covered,
                }),
                // A node cut off from PostgreSQL answers with errors, not data.
                Err(e) if !writes => assert!(e.is_l2_unavailable() || e.is_timeout(), "{e}"),
                Err(e) => panic!("read on a healthy node failed: {e}"),
            }
        } else {
            let mut log = history.logs[k].lock().await;
            let began = history.clock.fetch_add(1, Ordering::SeqCst);
            let value = if roll < 88 {
                let v = history.next_value.fetch_add(1, Ordering::Relaxed);
                history.source.lock().unwrap()[k] = Some(v);
                node.set(&name, &v).await.expect("set");
                Some(v)
            } else {
                history.source.lock().unwrap()[k] = None;
                node.delete(&name).await.expect("delete");
                None
            };
            let version = committed_version(&db, &name).await;
            let done = history.clock.fetch_add(1, Ordering::SeqCst);
            if let Some(v) = value {
                history.written_at.lock().unwrap().insert((k, v), done);
            }
            log.push((version, value, began, done));
            let mut own = view.own.lock().unwrap();
            let e = own.entry(name).or_default();
            *e = (*e).max(version);
        }
        ops += 1;
        // L1 hits never wait; without this a reader would starve the writers
        // and the fault injector sharing its thread.
        tokio::task::yield_now().await;
    }
    ops
}

/// Checks every read against the logs; returns the anomalies found.
fn check(history: &History, logs: &[Log]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut last_seen: HashMap<(usize, usize, usize), usize> = HashMap::new();
    for r in history.reads.lock().unwrap().iter() {
        // The implicit first entry: the key did not exist.
        let mut log: Log = vec![(0, None, 0, 0)];
        log.extend(logs[r.key].iter().copied());
        // The newest logged write at or below the bound (entry 0 has version
        // 0), or completed before a lost listener the node has recovered from.
        let floor = log
            .iter()
            .rposition(|e| e.0 <= r.bound)
            .unwrap_or(0)
            .max(log.iter().rposition(|e| e.3 < r.covered).unwrap_or(0));
        match r.got {
            Some(w) => match log.iter().position(|e| e.1 == Some(w)) {
                None => anomalies.push(format!(
                    "node {} read h{} = {w}, never written",
                    r.node, r.key
                )),
                Some(at) if at < floor => anomalies.push(format!(
                    "node {} {} of h{} = {w} (entry {at}) after applying entry {floor} (version {}); log around: {:?}",
                    r.node,
                    r.op,
                    r.key,
                    r.bound,
                    log[at.saturating_sub(1)..(floor + 2).min(log.len())]
                        .iter()
                        .map(|e| (e.0, e.1))
                        .collect::<Vec<_>>()
                )),
                Some(at) => {
                    let seen = last_seen.entry((r.node, r.task, r.key)).or_insert(0);
                    if at < *seen {
                        anomalies.push(format!(
                            "task {}/{} read h{} backwards: entry {at} after entry {seen}",
                            r.node, r.task, r.key
                        ));
                    }
                    // A value read from the source before its writer's cache
                    // write completed does not raise the floor: until that
                    // write lands, the cache rightly still holds the value
                    // before it (cache-aside with a writer that updates the
                    // source first). Every other read does.
                    let ahead = history
                        .written_at
                        .lock()
                        .unwrap()
                        .get(&(r.key, w))
                        .is_none_or(|t| *t > r.started);
                    if !ahead {
                        *seen = (*seen).max(at);
                    }
                }
            },
            None => {
                // Absent is right only if a delete at or after both floors
                // (what the node had applied, what this task had seen) had
                // begun before the read returned — a delete after it cannot
                // explain it.
                let seen = last_seen.entry((r.node, r.task, r.key)).or_insert(0);
                let from = floor.max(*seen);
                match (from..log.len()).find(|&i| log[i].1.is_none() && log[i].2 < r.ended) {
                    None => anomalies.push(format!(
                        "node {} task {} read h{} as absent, but no delete at or after entry {from} \
                         had begun before the read returned",
                        r.node, r.task, r.key
                    )),
                    // A delete that completed before the read began is now
                    // this task's floor too (one still under way may have
                    // reached only the source).
                    Some(i) if log[i].3 < r.started => *seen = (*seen).max(i),
                    Some(_) => {}
                }
            }
        }
    }
    anomalies
}

async fn run(name: &str, flapping: bool, warm: bool) {
    let (duration, seed) = settings();
    eprintln!("{name}: seed {seed}, {duration:?} (C3_HISTORY_SEED / C3_HISTORY_SECS)");
    let db = Arc::new(TestDb::new(name).await);
    let proxy = FaultProxy::start(support::database_addr()).await;
    let proxied = proxy.url(&db.url);
    let mut nodes = Vec::new();
    for i in 0..4 {
        // In the flapping run, node 3 reaches PostgreSQL through the proxy
        // and only reads: its writes' outcomes would be unknowable.
        let url = (flapping && i == 3).then_some(proxied.as_str());
        nodes.push(node_with_view(&db, url, warm).await);
    }
    let keys = if warm { WARM_KEYS } else { KEYS };
    let history = Arc::new(History {
        logs: (0..keys)
            .map(|_| tokio::sync::Mutex::new(Vec::new()))
            .collect(),
        reads: Mutex::new(Vec::new()),
        source: Mutex::new(vec![None; keys]),
        next_value: AtomicU64::new(1),
        clock: AtomicU64::new(0),
        written_at: Mutex::new(HashMap::new()),
    });
    let until = Instant::now() + duration;
    let stop = Arc::new(AtomicBool::new(false));
    for (node, view) in &nodes {
        watch_reconnects(node, Arc::clone(view), Arc::clone(&history));
    }
    let flapper = flapping.then(|| {
        let stop = Arc::clone(&stop);
        let (db, writers) = (
            Arc::clone(&db),
            nodes[..3]
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let mut faults = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                // With warm reconnect: also blackholes (a half-open link,
                // found by the heartbeat) and killed listener backends of
                // the writing nodes.
                if warm && faults % 2 == 1 {
                    proxy.blackhole();
                    db.kill_listener(&writers[(faults as usize / 2) % writers.len()])
                        .await;
                    tokio::time::sleep(Duration::from_millis(1_200)).await;
                } else {
                    proxy.drop_all();
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                faults += 1;
                proxy.forward();
            }
            faults
        })
    });
    let mut tasks = Vec::new();
    let mut seeds = Rng(seed);
    for (i, (node, view)) in nodes.iter().enumerate() {
        for t in 0..3 {
            let writes = !(flapping && i == 3);
            tasks.push(tokio::spawn(worker(
                Arc::clone(&db),
                node.clone(),
                Arc::clone(view),
                Arc::clone(&history),
                (i, t),
                writes,
                seeds.next(),
                until,
            )));
        }
    }
    let mut ops = 0;
    for t in tasks {
        ops += t.await.expect("worker");
    }
    stop.store(true, Ordering::Relaxed);
    let faults = match flapper {
        Some(f) => f.await.unwrap(),
        None => 0,
    };
    let mut logs = Vec::new();
    for l in &history.logs {
        logs.push(l.lock().await.clone());
    }
    let writes: usize = logs.iter().map(Vec::len).sum();
    let reads = history.reads.lock().unwrap().len();
    let anomalies = check(&history, &logs);
    eprintln!(
        "{name}: {ops} operations ({writes} writes, {reads} reads checked), {faults} connection drops, {} anomalies",
        anomalies.len()
    );
    assert!(
        reads > 100 && writes > 20,
        "the run did too little to mean anything"
    );
    assert!(
        anomalies.is_empty(),
        "seed {seed}: {} anomalies, first: {:#?}",
        anomalies.len(),
        &anomalies[..anomalies.len().min(10)]
    );
    if warm {
        let (kept, purged): (u64, u64) = nodes.iter().fold((0, 0), |(k, p), (n, _)| {
            let s = n.stats();
            (k + s.warm_reconnects, p + s.warm_reconnect_fallbacks)
        });
        eprintln!("{name}: {kept} warm reconnects, {purged} that purged");
        assert!(
            kept > 0,
            "no reconnect was warm: the run tested nothing new"
        );
    }
    for (n, _) in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_histories_have_no_stale_reads() {
    run("history", false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_while_a_node_link_flaps() {
    run("history_flap", true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_with_warm_reconnects_through_drops_blackholes_and_kills() {
    run("history_warm", true, true).await;
}
