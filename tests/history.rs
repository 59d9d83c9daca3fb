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
//! Writes can fail (a frozen link, a lock held by a frozen node): c3's
//! promise is that a write reported as failed never commits afterwards. So
//! a failed write is settled at once — the row is read back under the key's
//! lock: it committed (and is logged as any write) or it did not, and then
//! it is logged as *unacknowledged*: the source changed, so a load or fill
//! may legitimately return its value, but no node's floor rises to it. A
//! write that committed later anyway would leave an older value over newer
//! ones: stale reads, and the final check — L2 holds, for every key, the
//! last acknowledged write or something newer — catches it.
//!
//! Some writes carry a 1 s TTL, shorter than an outage, and every node
//! sweeps: a key may then read as absent once its newest write expired, but
//! never as an older value.
//!
//! Seeded and bounded: `C3_HISTORY_SECS` (default 3) and `C3_HISTORY_SEED`
//! (default: random, printed) reproduce or lengthen a run. Variants: a
//! reading node behind a fault proxy that drops its connections again and
//! again; every node with warm reconnect, alternating dropped and
//! blackholed links with killed listener backends; a node that reads,
//! writes and fills the same keys as the others (fills share tags) whose
//! whole link **freezes mid-transaction** for 3 s at a time (bytes held,
//! its closes hidden from the server, then every connection closed), with
//! and without warm reconnect; the freezing run again with every
//! node's sessions defaulting to REPEATABLE READ; and the freezing run in
//! relay mode (PROTOCOL.md §6: a cluster with `wal_level = logical` and a
//! NATS server of the test's own, two relays), where meanwhile the leading
//! relay is killed (the standby takes over), NATS is restarted and the
//! slot's walsender is terminated, in turn.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use c3::core::relay::{Nats, Relay, RelayHandle};
use c3::core::{C3, ListenerState};
use support::cluster::Cluster;
use support::nats::NatsServer;
use support::proxy::FaultProxy;
use support::{Rng, TestDb};

/// Keys: few, so operations overlap; more with warm reconnect, so that a key
/// a replay failed to drop is not rewritten (and evicted) before it is read.
const KEYS: usize = 8;
const WARM_KEYS: usize = 64;

/// One write of a key, in the key's order.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The version it committed at (for an unacknowledged write, the
    /// version the key was at: it changed nothing in L2).
    version: u64,
    /// The value written, or `None` for a delete.
    value: Option<u64>,
    /// `History::clock` when the write began, and when it completed.
    began: u64,
    done: u64,
    /// Whether it committed (acknowledged, or found committed when its
    /// failure was settled).
    acked: bool,
    /// When a write with a TTL may have expired (it was written from
    /// `began` on, with the TTL added to the writer's clock then).
    expires: Option<Instant>,
    /// When the write began (wall time): a load or fill may store its value
    /// again from then on, with `STORED_TTL`.
    began_at: Instant,
}

/// One key's history.
type Log = Vec<Entry>;

/// The implicit first entry of every key: it did not exist.
fn never() -> Entry {
    Entry {
        version: 0,
        value: None,
        began: 0,
        done: 0,
        acked: true,
        expires: None,
        began_at: Instant::now(),
    }
}

/// The TTL of the short-lived writes: shorter than a frozen link lasts.
const SHORT_TTL: Duration = Duration::from_secs(1);

/// The TTL of what loads and fills store: a key's newest value, stored again
/// by one of them, expires this long after — and then reads as absent,
/// rightly, although its write had no TTL.
const STORED_TTL: Duration = Duration::from_secs(5);

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
    /// Wall time when the read returned (for TTLs).
    ended_at: Instant,
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

/// What a run does to node 3, and how every node is configured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing: four healthy nodes.
    None,
    /// Node 3 only reads, through a link whose connections are dropped
    /// (and, with warm reconnect, blackholed) again and again.
    Flap,
    /// Node 3 reads, writes and fills like the others, through a link that
    /// freezes whole (mid-transaction) for 3 s at a time, then closes.
    Freeze,
}

#[derive(Clone, Copy)]
struct Variant {
    fault: Fault,
    warm: bool,
    /// Every node's sessions default to REPEATABLE READ.
    repeatable_read: bool,
    /// Relay mode: nodes hear each other through NATS (the URL), fed by
    /// relays that the run kills, and whose NATS and walsender it breaks.
    relay: bool,
}

/// `url` with its sessions defaulting to REPEATABLE READ.
fn repeatable(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20default_transaction_isolation%3Drepeatable%5C%20read")
}

async fn node_with_view(
    db: &TestDb,
    url: Option<&str>,
    v: Variant,
    nats: Option<&str>,
) -> (C3, Arc<NodeView>) {
    let view = Arc::new(NodeView::default());
    let sink = Arc::clone(&view);
    let mut b = db
        .builder()
        .on_applied(move |n| {
            let mut applied = sink.applied.lock().unwrap();
            for (v, k) in n.written {
                let e = applied.entry(k.clone()).or_default();
                *e = (*e).max(*v);
            }
        })
        // Short-lived writes expire during outages and are swept.
        .sweep_interval(Some(Duration::from_millis(200)));
    let url = url
        .map(str::to_owned)
        .or_else(|| v.repeatable_read.then(|| db.url.clone()));
    if let Some(url) = url {
        let url = if v.repeatable_read {
            repeatable(&url)
        } else {
            url
        };
        b = b.postgres(&url).connect_timeout(Duration::from_secs(1));
    }
    b = match v.fault {
        Fault::None => b,
        Fault::Flap => b.op_timeout(Duration::from_millis(500)),
        // As the history that found writes committing after their callers
        // were told they failed: 1 s for every node.
        Fault::Freeze => b.op_timeout(Duration::from_secs(1)),
    };
    b = b.warm_reconnect(v.warm);
    if let Some(nats) = nats {
        b = b.relay(Nats::new(nats));
    }
    (b.build().await.expect("node"), view)
}

/// Whether a write whose caller was told it failed committed anyway
/// (before the failure was reported: c3 promises it cannot commit after).
/// A set committed if the row holds its value; a delete is never taken as
/// committed (unknowable when the key was absent before; the checker then
/// only keeps a lower floor).
async fn committed(db: &TestDb, key: &str, value: Option<u64>) -> bool {
    let Some(v) = value else {
        return false;
    };
    let row = db
        .client
        .query_opt(
            &format!(
                "SELECT convert_from(value, 'UTF8')::bigint FROM {} WHERE key = $1 \
                 AND encoding = 'json'",
                db.table()
            ),
            &[&key],
        )
        .await
        .unwrap();
    row.is_some_and(|r| r.get::<_, i64>(0) == v as i64)
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
        .ttl(Some(STORED_TTL))
        .negative_ttl(STORED_TTL)
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    db: Arc<TestDb>,
    node: C3,
    view: Arc<NodeView>,
    history: Arc<History>,
    (node_ix, task): (usize, usize),
    (writes, faulted): (bool, bool),
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
                            let ttl = Some(STORED_TTL);
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
                    ended_at: Instant::now(),
                }),
                // A node cut off from PostgreSQL, or waiting behind one that
                // is, answers with errors, not data.
                Err(e) if faulted => assert!(e.is_l2_unavailable() || e.is_timeout(), "{e}"),
                Err(e) => panic!("read on a healthy node failed: {e}"),
            }
        } else {
            let mut log = history.logs[k].lock().await;
            let began = history.clock.fetch_add(1, Ordering::SeqCst);
            let began_at = Instant::now();
            let (value, ttl) = if roll < 88 {
                let ttl = (roll >= 80).then_some(SHORT_TTL);
                (
                    Some(history.next_value.fetch_add(1, Ordering::Relaxed)),
                    ttl,
                )
            } else {
                (None, None)
            };
            history.source.lock().unwrap()[k] = value;
            let written = match value {
                Some(v) => node.set_with_ttl(&name, &v, ttl).await,
                None => node.delete(&name).await,
            };
            let answered = written.is_ok();
            let acked = match written {
                Ok(()) => true,
                Err(e) if faulted => {
                    assert!(e.is_l2_unavailable() || e.is_timeout(), "{e}");
                    committed(&db, &name, value).await
                }
                Err(e) => panic!("a write on a healthy node failed: {e}"),
            };
            let version = committed_version(&db, &name).await;
            let done = history.clock.fetch_add(1, Ordering::SeqCst);
            if let Some(v) = value {
                history.written_at.lock().unwrap().insert((k, v), done);
            }
            log.push(Entry {
                version,
                value,
                began,
                done,
                acked,
                expires: ttl.map(|t| began_at + t),
                began_at,
            });
            // Only a write whose caller was answered raises this node's own
            // floor: one reported failed that committed anyway (its reply
            // lost in a frozen link) is known to the node only when its
            // notification arrives — within the heartbeat bound, c3's promise
            // for a node whose link froze.
            if answered {
                let mut own = view.own.lock().unwrap();
                let e = own.entry(name).or_default();
                *e = (*e).max(version);
            }
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
        let mut log: Log = vec![never()];
        log.extend(logs[r.key].iter().copied());
        // The newest acknowledged write at or below the bound (entry 0 has
        // version 0), or completed before a lost listener the node has
        // recovered from.
        let floor = log
            .iter()
            .rposition(|e| e.acked && e.version <= r.bound)
            .unwrap_or(0)
            .max(
                log.iter()
                    .rposition(|e| e.acked && e.done < r.covered)
                    .unwrap_or(0),
            );
        match r.got {
            Some(w) => match log.iter().position(|e| e.value == Some(w)) {
                None => anomalies.push(format!(
                    "node {} read h{} = {w}, never written",
                    r.node, r.key
                )),
                Some(at) if at < floor => anomalies.push(format!(
                    "node {} {} of h{} = {w} (entry {at}) after applying entry {floor} (bound {}; \
                     read at clock {}..{}, recovered from a lost listener at {}; entry {floor} \
                     written at {}..{}); log around (version, value, acked, done): {:?}",
                    r.node,
                    r.op,
                    r.key,
                    r.bound,
                    r.started,
                    r.ended,
                    r.covered,
                    log[floor].began,
                    log[floor].done,
                    log[at.saturating_sub(1)..(floor + 2).min(log.len())]
                        .iter()
                        .map(|e| (e.version, e.value, e.acked, e.done))
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
                    // source first). Nor does a value whose cache write
                    // failed and did not commit: the source has it, the
                    // cache rightly still holds what came before. Every
                    // other read does.
                    let ahead = history
                        .written_at
                        .lock()
                        .unwrap()
                        .get(&(r.key, w))
                        .is_none_or(|t| *t > r.started);
                    if !ahead && log[at].acked {
                        *seen = (*seen).max(at);
                    }
                }
            },
            None => {
                // Absent is right only if a delete at or after both floors
                // (what the node had applied, what this task had seen) had
                // begun before the read returned — a delete after it cannot
                // explain it — or a write there may have expired by then.
                let seen = last_seen.entry((r.node, r.task, r.key)).or_insert(0);
                let from = floor.max(*seen);
                let gone = |e: &Entry| {
                    (e.value.is_none() && e.began < r.ended)
                        || e.expires.is_some_and(|x| x < r.ended_at)
                        || (e.value.is_some() && e.began_at + STORED_TTL < r.ended_at)
                };
                match (from..log.len()).find(|&i| gone(&log[i])) {
                    None => anomalies.push(format!(
                        "node {} task {} read h{} as absent, but no delete or expiry at or after \
                         entry {from} had happened before the read returned",
                        r.node, r.task, r.key
                    )),
                    // A delete that completed before the read began is now
                    // this task's floor too (one still under way may have
                    // reached only the source).
                    Some(i)
                        if log[i].value.is_none() && log[i].acked && log[i].done < r.started =>
                    {
                        *seen = (*seen).max(i)
                    }
                    Some(_) => {}
                }
            }
        }
    }
    anomalies
}

/// What L2 holds at the end, key by key, against the logs: the last
/// acknowledged write of a key, or something newer (a later write, a fill
/// of a newer source value), or nothing — never an older value. A write
/// reported failed that committed afterwards leaves exactly that.
async fn check_l2(db: &TestDb, logs: &[Log]) -> Vec<String> {
    let mut anomalies = Vec::new();
    for (k, entries) in logs.iter().enumerate() {
        let mut log: Log = vec![never()];
        log.extend(entries.iter().copied());
        let last_acked = log.iter().rposition(|e| e.acked).unwrap_or(0);
        let row = db
            .client
            .query_opt(
                &format!(
                    "SELECT CASE WHEN encoding = 'json' THEN convert_from(value, 'UTF8')::bigint END, \
                     version FROM {} WHERE key = $1",
                    db.table()
                ),
                &[&key(k)],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            // A cached miss (`absent`) is what a load read after a delete.
            let (v, version): (Option<i64>, i64) = (row.get(0), row.get(1));
            let Some(v) = v else {
                if !(last_acked..log.len()).any(|i| log[i].value.is_none()) {
                    anomalies.push(format!(
                        "L2 holds h{k} as a cached miss (version {version}), but entry {last_acked} \
                         ({:?}) was acknowledged after the last delete",
                        log[last_acked].value
                    ));
                }
                continue;
            };
            match log.iter().position(|e| e.value == Some(v as u64)) {
                Some(at) if at >= last_acked => {}
                at => anomalies.push(format!(
                    "L2 holds h{k} = {v} (entry {at:?}, version {version}), but entry {last_acked} \
                     ({:?}, version {}) was acknowledged after it",
                    log[last_acked].value, log[last_acked].version
                )),
            }
        }
    }
    anomalies
}

/// Node 3's link fails again and again until `stop`; returns how many
/// faults it injected. `recovered` gets the history clock after the first
/// fault ended.
fn inject_faults(
    proxy: FaultProxy,
    v: Variant,
    db: Arc<TestDb>,
    (writers, faulted): (Vec<C3>, C3),
    (history, recovered, stop): (Arc<History>, Arc<AtomicU64>, Arc<AtomicBool>),
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut faults = 0u64;
        let mut marks_since = 0;
        while !stop.load(Ordering::Relaxed) {
            if v.fault == Fault::Freeze {
                tokio::time::sleep(Duration::from_millis(700)).await;
                if v.warm {
                    // A warm reconnect needs a mark: a heartbeat echo heard
                    // since the node's last reconnect. Freezing before it
                    // has one can only test the purge again (and a purge
                    // leaves no mark for the next one): wait for it.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    while faulted.stats().replay_marks <= marks_since
                        && tokio::time::Instant::now() < deadline
                        && !stop.load(Ordering::Relaxed)
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // The whole link freezes, mid-transaction wherever a
                // transaction was: bytes held both ways, closes hidden from
                // the server. Then every connection closes, as a dead link
                // ends.
                proxy.freeze_all();
                tokio::time::sleep(Duration::from_secs(3)).await;
                proxy.thaw();
                marks_since = faulted.stats().replay_marks;
            } else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                // With warm reconnect: also blackholes (a half-open link,
                // found by the heartbeat) and killed listener backends of
                // the writing nodes.
                if v.warm && faults % 2 == 1 {
                    proxy.blackhole();
                    db.kill_listener(&writers[(faults as usize / 2) % writers.len()])
                        .await;
                    tokio::time::sleep(Duration::from_millis(1_200)).await;
                } else {
                    proxy.drop_all();
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                proxy.forward();
            }
            faults += 1;
            if faults == 1 {
                recovered.store(history.clock.load(Ordering::SeqCst), Ordering::SeqCst);
            }
        }
        faults
    })
}

/// What the relay faults did.
#[derive(Default, Debug)]
struct RelayFaults {
    leaders_killed: u64,
    nats_restarts: u64,
    walsenders_terminated: u64,
}

fn relay(cluster: &Cluster, nats: &str, name: String) -> RelayHandle {
    Relay::builder()
        .postgres(cluster.url())
        .nats(Nats::new(nats))
        .name(name)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .expect("relay")
        .spawn()
}

/// Relay mode's own faults, in turn every 1.5 s: the leading relay killed
/// (a standby takes over; a new standby starts), NATS restarted, the slot's
/// walsender terminated.
fn inject_relay_faults(
    (cluster, mut nats, mut relays): (Arc<Cluster>, NatsServer, Vec<RelayHandle>),
    admin: Arc<TestDb>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<RelayFaults> {
    tokio::spawn(async move {
        let url = nats.url();
        let mut done = RelayFaults::default();
        let mut turn = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            match turn % 3 {
                0 => {
                    if let Some(i) = relays.iter().position(|r| r.status().leader) {
                        // Killed as a process would be.
                        relays.swap_remove(i).abort();
                        relays.push(relay(&cluster, &url, format!("relay-{}", turn + 2)));
                        done.leaders_killed += 1;
                    }
                }
                1 => {
                    tokio::task::block_in_place(|| nats.kill());
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    tokio::task::block_in_place(|| nats.start_again());
                    done.nats_restarts += 1;
                }
                _ => {
                    let n = admin
                        .client
                        .execute(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                             WHERE active_pid IS NOT NULL",
                            &[],
                        )
                        .await
                        .unwrap_or(0);
                    done.walsenders_terminated += n;
                }
            }
            turn += 1;
        }
        for r in relays {
            r.shutdown().await;
        }
        done
    })
}

async fn run(name: &str, v: Variant) {
    let (duration, seed) = settings();
    // A freeze lasts 3 s: the run outlasts two of them, and the frozen node
    // reads for a while after the first.
    let duration = if v.fault == Fault::Freeze {
        duration.max(Duration::from_secs(9))
    } else {
        duration
    };
    eprintln!("{name}: seed {seed}, {duration:?} (C3_HISTORY_SEED / C3_HISTORY_SECS)");
    // Relay mode needs wal_level = logical and NATS: both the run's own.
    let relay_env = v
        .relay
        .then(|| (Arc::new(Cluster::start_logical(name)), NatsServer::start()));
    let (db, upstream) = match &relay_env {
        Some((cluster, _)) => (
            Arc::new(TestDb::on(&cluster.url(), name).await),
            format!("127.0.0.1:{}", cluster.port()),
        ),
        None => (Arc::new(TestDb::new(name).await), support::database_addr()),
    };
    let nats_url = relay_env.as_ref().map(|(_, n)| n.url());
    // Two relays from the start (one leads): nodes wait for their first
    // heartbeat to come back when they are built.
    let relays: Vec<RelayHandle> = match (&relay_env, &nats_url) {
        (Some((cluster, _)), Some(url)) => (0..2)
            .map(|i| relay(cluster, url, format!("relay-{i}")))
            .collect(),
        _ => Vec::new(),
    };
    let proxy = FaultProxy::start(upstream).await;
    let proxied = proxy.url(&db.url);
    let faulty = v.fault != Fault::None;
    let mut nodes = Vec::new();
    for i in 0..4 {
        // Node 3 reaches PostgreSQL through the proxy.
        let url = (faulty && i == 3).then_some(proxied.as_str());
        nodes.push(node_with_view(&db, url, v, nats_url.as_deref()).await);
    }
    let keys = if v.warm { WARM_KEYS } else { KEYS };
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
    let recovered = Arc::new(AtomicU64::new(u64::MAX));
    for (node, view) in &nodes {
        watch_reconnects(node, Arc::clone(view), Arc::clone(&history));
    }
    let injector = faulty.then(|| {
        let writers = nodes[..3].iter().map(|(n, _)| n.clone()).collect();
        let faulted = nodes[3].0.clone();
        let shared = (
            Arc::clone(&history),
            Arc::clone(&recovered),
            Arc::clone(&stop),
        );
        inject_faults(proxy, v, Arc::clone(&db), (writers, faulted), shared)
    });
    // The cluster must outlive the injector (it holds a clone): the checks
    // below read L2.
    let cluster = relay_env.as_ref().map(|(c, _)| Arc::clone(c));
    let relay_faults = relay_env.map(|(cluster, nats)| {
        inject_relay_faults((cluster, nats, relays), Arc::clone(&db), Arc::clone(&stop))
    });
    let mut tasks = Vec::new();
    let mut seeds = Rng(seed);
    for (i, (node, view)) in nodes.iter().enumerate() {
        for t in 0..3 {
            // The flapping node only reads; the frozen one does everything.
            let writes = !(v.fault == Fault::Flap && i == 3);
            tasks.push(tokio::spawn(worker(
                Arc::clone(&db),
                node.clone(),
                Arc::clone(view),
                Arc::clone(&history),
                (i, t),
                (writes, faulty),
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
    let faults = match injector {
        Some(f) => f.await.unwrap(),
        None => 0,
    };
    let relay_faults = match relay_faults {
        Some(f) => Some(f.await.unwrap()),
        None => None,
    };
    let mut logs = Vec::new();
    for l in &history.logs {
        logs.push(l.lock().await.clone());
    }
    db.quiet().await;
    let writes: usize = logs.iter().map(Vec::len).sum();
    let unacked: usize = logs.iter().flatten().filter(|e| !e.acked).count();
    let reads = history.reads.lock().unwrap().len();
    let after_recovery = history
        .reads
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.node == 3 && r.started > recovered.load(Ordering::SeqCst))
        .count();
    let mut anomalies = check(&history, &logs);
    anomalies.extend(check_l2(&db, &logs).await);
    if !anomalies.is_empty() {
        // Where the old value lives now: L2, or one node's L1.
        for k in 0..keys {
            if !anomalies.iter().any(|a| a.contains(&format!(" h{k} "))) {
                continue;
            }
            let row = db
                .client
                .query_opt(
                    &format!(
                        "SELECT encoding, convert_from(value, 'UTF8'), version FROM {} WHERE key = $1",
                        db.table()
                    ),
                    &[&key(k)],
                )
                .await
                .unwrap()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2)));
            eprintln!(
                "h{k}: L2 {row:?}; last log entries {:?}",
                &logs[k][logs[k].len().saturating_sub(3)..]
            );
            for (i, (n, _)) in nodes.iter().enumerate() {
                eprintln!(
                    "  node {i}: in L1 {}, reads {:?}, {:?}",
                    n.is_cached_locally(&key(k)),
                    n.get::<u64>(&key(k)).await.map(|v| v.map(|v| *v)),
                    n.stats()
                );
            }
        }
    }
    let dropped: u64 = nodes.iter().map(|(n, _)| n.stats().fills_dropped).sum();
    eprintln!(
        "{name}: {ops} operations ({writes} writes, {unacked} failed and not committed, {reads} reads \
         checked, {after_recovery} by the faulted node after its first fault), {faults} faults, \
         {dropped} fills refused, {} anomalies",
        anomalies.len()
    );
    assert!(
        reads > 100 && writes > 20,
        "the run did too little to mean anything"
    );
    if faulty {
        assert!(faults > 0, "no fault was injected");
        assert!(
            after_recovery > 0,
            "the faulted node checked no read after its first fault ended"
        );
        assert!(
            dropped > 0,
            "no fill was ever refused: the fills never raced a write"
        );
    }
    assert!(
        anomalies.is_empty(),
        "seed {seed}: {} anomalies, first: {:#?}",
        anomalies.len(),
        &anomalies[..anomalies.len().min(10)]
    );
    if let Some(rf) = relay_faults {
        let (purges, gaps) = nodes.iter().fold((0, 0), |(p, g), (n, _)| {
            let s = n.stats();
            (p + s.purges, g + s.relay_gaps)
        });
        eprintln!(
            "{name}: relay faults {rf:?}; {purges} purges, {gaps} relay gaps seen by the nodes"
        );
        assert!(
            rf.leaders_killed > 0 && rf.nats_restarts > 0 && rf.walsenders_terminated > 0,
            "not every relay fault happened: {rf:?}"
        );
    }
    if v.warm {
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
    drop(cluster);
}

const HEALTHY: Variant = Variant {
    fault: Fault::None,
    warm: false,
    repeatable_read: false,
    relay: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_histories_have_no_stale_reads() {
    run("history", HEALTHY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_while_a_node_link_flaps() {
    let v = Variant {
        fault: Fault::Flap,
        ..HEALTHY
    };
    run("history_flap", v).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_with_warm_reconnects_through_drops_blackholes_and_kills() {
    let v = Variant {
        fault: Fault::Flap,
        warm: true,
        ..HEALTHY
    };
    run("history_warm", v).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_while_a_writing_and_filling_node_freezes_mid_transaction() {
    let v = Variant {
        fault: Fault::Freeze,
        ..HEALTHY
    };
    run("history_freeze", v).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_with_warm_reconnects_while_a_node_freezes_mid_transaction() {
    let v = Variant {
        fault: Fault::Freeze,
        warm: true,
        ..HEALTHY
    };
    run("history_freeze_warm", v).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_under_repeatable_read_defaults_while_a_node_freezes() {
    let v = Variant {
        fault: Fault::Freeze,
        repeatable_read: true,
        ..HEALTHY
    };
    run("history_freeze_rr", v).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_clean_in_relay_mode_through_relay_kills_nats_restarts_and_a_freezing_node()
{
    let v = Variant {
        fault: Fault::Freeze,
        relay: true,
        ..HEALTHY
    };
    run("history_relay", v).await;
}
