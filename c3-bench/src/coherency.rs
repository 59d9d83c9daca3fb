//! Invalidation propagation: from a write's commit on the writer to
//! "applied" on every listener, for N listeners at several write rates, and
//! the same fan-out over Redis pub/sub (the design of Redis-synchronised
//! local caches).
//!
//! Write i sets key `k{i}` (c3) or publishes `k{i}` (Redis), so a listener
//! knows which write each message is, whatever order concurrent writers
//! committed in. That gives each delivery's exact lag and lets a checker read
//! the key right after delivery and demand the value of write i — a stale
//! read after delivery. Where one writer cannot drive the rate asked (32
//! listeners on two cores), a second c3 series uses several writers on the
//! writer node, whose writes share commits and notifications.
//!
//! Lag is reported two ways. From the moment the writer issued the write
//! (p50/p99/max): an upper bound on commit → applied, since it includes the
//! commit itself. And from the moment the writer saw its commit
//! acknowledged (p99 after ack): often zero, because PostgreSQL signals the
//! listeners at commit, as it answers the writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Env;
use crate::redis::{Redis, Reply};
use crate::stats::Samples;

/// One propagation series.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Propagation {
    pub(crate) system: String,
    pub(crate) listeners: usize,
    /// Concurrent writers (one unless a single writer could not drive the rate).
    pub(crate) writers: usize,
    pub(crate) target_rate: String,
    pub(crate) achieved_rate: f64,
    pub(crate) deliveries: u64,
    pub(crate) lost: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    pub(crate) p99_after_ack_us: f64,
    /// Reads right after delivery that returned an older value (must be 0).
    pub(crate) stale_reads: Option<u64>,
    pub(crate) reads_checked: Option<u64>,
}

/// What one listener saw: write number → when it was applied.
#[derive(Default)]
struct Seen {
    next: AtomicU64,
    at: Mutex<Vec<(u64, u64)>>,
}

/// Now, in nanoseconds of the system-wide monotonic clock: comparable
/// between this process and a listener child.
pub(crate) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// What every listener of a series applied (write number, when), and the
/// reads checked right after.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub(crate) struct Heard {
    pub(crate) at: Vec<Vec<(u64, u64)>>,
    pub(crate) stale: u64,
    pub(crate) checked: u64,
}

pub(crate) fn rate_name(rate: Option<u32>) -> String {
    rate.map_or_else(|| "max".to_owned(), |r| format!("{r}/s"))
}

/// Waits until every listener has seen `n` messages, or `within` passes.
async fn drain(seen: &[Arc<Seen>], n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && seen.iter().any(|s| s.next.load(Ordering::SeqCst) < n) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// When the writer issued write i, and when it saw it acknowledged
/// ([`mono_ns`]).
#[derive(Default)]
struct Writes {
    issued: Vec<u64>,
    acked: Vec<u64>,
}

fn summarise(
    system: &str,
    rate: Option<u32>,
    writes: &Writes,
    seen: &[Vec<(u64, u64)>],
    elapsed: Duration,
) -> Propagation {
    let (mut lags, mut after_ack) = (Samples::default(), Samples::default());
    for s in seen {
        for (i, at) in s {
            let i = usize::try_from(*i).unwrap_or(usize::MAX);
            if let (Some(w), Some(c)) = (writes.issued.get(i), writes.acked.get(i)) {
                lags.push(Duration::from_nanos(at.saturating_sub(*w)));
                // Heard before the writer's own acknowledgement: no delay.
                after_ack.push(Duration::from_nanos(at.saturating_sub(*c)));
            }
        }
    }
    let commits = &writes.acked;
    let deliveries = lags.0.len() as u64;
    let expected = commits.len() as u64 * seen.len() as u64;
    let s = lags.summary(system, seen.len(), elapsed);
    let ack = after_ack.summary(system, seen.len(), elapsed);
    Propagation {
        system: system.to_owned(),
        listeners: seen.len(),
        writers: 1,
        target_rate: rate_name(rate),
        achieved_rate: commits.len() as f64 / elapsed.as_secs_f64(),
        deliveries,
        lost: expected.saturating_sub(deliveries),
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        max_us: s.max_us,
        p99_after_ack_us: ack.p99_us,
        stale_reads: None,
        reads_checked: None,
    }
}

/// Runs one sequential writer for `series`, at `rate` (or as fast as it
/// can), timing each write's issue and acknowledgement.
async fn write_series(
    series: Duration,
    rate: Option<u32>,
    mut write: impl AsyncFnMut(u64),
) -> (Writes, Duration) {
    let mut writes = Writes::default();
    let start = Instant::now();
    let deadline = start + series;
    let mut i = 0u64;
    while Instant::now() < deadline {
        pace(start, i, rate).await;
        writes.issued.push(mono_ns());
        write(i).await;
        writes.acked.push(mono_ns());
        i += 1;
    }
    (writes, start.elapsed())
}

/// `writers` concurrent writers on one node for `series`, together at `rate`
/// (or each as fast as it can). Write numbers come from one counter, so
/// they are 0..n with no gap once every writer has finished.
async fn write_series_on(
    node: &c3::C3,
    series: Duration,
    rate: Option<u32>,
    writers: usize,
) -> (Writes, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let each = rate.map(|r| (r / writers as u32).max(1));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (node, next) = (node.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut j = 0u64;
                while start.elapsed() < series {
                    pace(start, j, each).await;
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let issued = mono_ns();
                    node.set(&format!("k{i}"), &i).await.expect("set");
                    done.push((i, issued, mono_ns()));
                    j += 1;
                }
                done
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    let elapsed = start.elapsed();
    all.sort_unstable_by_key(|(i, _, _)| *i);
    let writes = Writes {
        issued: all.iter().map(|(_, w, _)| *w).collect(),
        acked: all.iter().map(|(_, _, a)| *a).collect(),
    };
    (writes, elapsed)
}

/// Paces write `i` of a series started at `start`.
pub(crate) async fn pace(start: Instant, i: u64, rate: Option<u32>) {
    if let Some(r) = rate {
        let at = start + Duration::from_secs_f64(i as f64 / f64::from(r));
        tokio::time::sleep_until(at.into()).await;
    }
}

/// How the nodes of a series hear each other.
#[derive(Clone, Copy)]
pub(crate) enum Transport<'a> {
    /// A LISTEN session per node (the default).
    Listen,
    /// NATS, fed by a relay reading logical decoding; the table is another
    /// one, since a table keeps one transport.
    Relay { nats: &'a str },
}

impl Transport<'_> {
    fn system(self) -> &'static str {
        match self {
            Transport::Listen => "c3 (LISTEN/NOTIFY)",
            Transport::Relay { .. } => "c3 (relay: WAL → NATS)",
        }
    }

    fn node(self, env: &Env, channel: &str, l1: u64) -> c3::C3Builder {
        match self {
            Transport::Listen => env.node(channel, l1),
            Transport::Relay { nats } => env
                .node(channel, l1)
                .table(crate::relay::TABLE)
                .relay(c3::core::relay::Nats::new(nats)),
        }
    }
}

pub(crate) async fn c3_run(
    env: &Env,
    listeners: usize,
    rate: Option<u32>,
    (writers, transport): (usize, Transport<'_>),
    run: usize,
    child: Option<&crate::placement::Split>,
) -> Propagation {
    let channel = format!("c3_bench_coh_{run}");
    let writer = transport
        .node(env, &channel, 64 << 20)
        .node_id("bench-writer")
        .build()
        .await
        .expect("writer");
    // Enough checks to catch a stale read, few enough not to load the server.
    let total_rate = f64::from(rate.unwrap_or(2000)) * listeners as f64;
    let every = ((total_rate / 400.0).ceil() as u64).max(1);
    let spec = ListenerSpec {
        url: env.url.clone(),
        channel,
        nats: match transport {
            Transport::Listen => None,
            Transport::Relay { nats } => Some(nats.to_owned()),
        },
        listeners,
        every,
    };
    let mut host = match child {
        None => Host::Local(Listeners::start(env, &spec).await),
        Some(split) => Host::Child(Box::new(crate::listeners::Child::start(split, &spec).await)),
    };
    let (writes, elapsed) = write_series_on(&writer, env.series, rate, writers).await;
    let heard = match &mut host {
        Host::Local(l) => l.finish(writes.acked.len() as u64).await,
        Host::Child(c) => c.finish(writes.acked.len() as u64).await,
    };
    let mut p = summarise(transport.system(), rate, &writes, &heard.at, elapsed);
    p.writers = writers;
    p.stale_reads = Some(heard.stale);
    p.reads_checked = Some(heard.checked);
    writer.shutdown().await;
    p
}

/// Where a series' listener nodes run.
enum Host {
    Local(Listeners),
    Child(Box<crate::listeners::Child>),
}

/// What a set of listener nodes needs to start (also sent to a child).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct ListenerSpec {
    pub(crate) url: String,
    pub(crate) channel: String,
    /// `Some(NATS URL)`: relay mode, on the relay's table.
    pub(crate) nats: Option<String>,
    pub(crate) listeners: usize,
    /// Check a read after every `every`th write a listener applies.
    pub(crate) every: u64,
}

/// Listener nodes in this process: each records when it applied which
/// write, and reads some keys back right after.
pub(crate) struct Listeners {
    seen: Vec<Arc<Seen>>,
    nodes: Vec<c3::C3>,
    checkers: Vec<tokio::task::JoinHandle<()>>,
    stale: Arc<AtomicU64>,
    checked: Arc<AtomicU64>,
}

impl Listeners {
    pub(crate) async fn start(env: &Env, spec: &ListenerSpec) -> Listeners {
        let transport = match &spec.nats {
            None => Transport::Listen,
            Some(nats) => Transport::Relay { nats },
        };
        let every = spec.every;
        let stale = Arc::new(AtomicU64::new(0));
        let checked = Arc::new(AtomicU64::new(0));
        let mut seen = Vec::new();
        let mut nodes = Vec::new();
        let mut checkers = Vec::new();
        for _ in 0..spec.listeners {
            let s = Arc::new(Seen::default());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, String)>();
            let sink = Arc::clone(&s);
            let node = transport
                .node(env, &spec.channel, 16 << 20)
                .pool_size(1)
                .on_applied(move |n| {
                    if n.from != Some("bench-writer") {
                        return;
                    }
                    let now = mono_ns();
                    for (_, key) in n.written {
                        let Some(i) = key.strip_prefix('k').and_then(|i| i.parse::<u64>().ok())
                        else {
                            continue;
                        };
                        sink.next.fetch_add(1, Ordering::SeqCst);
                        sink.at.lock().expect("seen").push((i, now));
                        if i % every == 0 {
                            let _ = tx.send((i, key.clone()));
                        }
                    }
                })
                .build()
                .await
                .expect("listener");
            let (reader, stale, checked) = (node.clone(), Arc::clone(&stale), Arc::clone(&checked));
            // The node holds the sender (in its observer) and this task holds
            // the node, so the task is aborted at the end rather than waited on.
            checkers.push(tokio::spawn(async move {
                while let Some((i, key)) = rx.recv().await {
                    if let Ok(Some(v)) = reader.get::<u64>(&key).await {
                        checked.fetch_add(1, Ordering::Relaxed);
                        if *v < i {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
            seen.push(s);
            nodes.push(node);
        }
        Listeners {
            seen,
            nodes,
            checkers,
            stale,
            checked,
        }
    }

    /// Waits (up to 10 s) for every listener to apply `writes` writes, lets
    /// the last checks finish, and stops the nodes.
    pub(crate) async fn finish(&mut self, writes: u64) -> Heard {
        drain(&self.seen, writes, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let heard = Heard {
            at: self
                .seen
                .iter()
                .map(|s| std::mem::take(&mut *s.at.lock().expect("seen")))
                .collect(),
            stale: self.stale.load(Ordering::SeqCst),
            checked: self.checked.load(Ordering::SeqCst),
        };
        for c in self.checkers.drain(..) {
            c.abort();
            let _ = c.await;
        }
        for n in self.nodes.drain(..) {
            n.shutdown().await;
        }
        heard
    }
}

async fn redis_run(env: &Env, listeners: usize, rate: Option<u32>, run: usize) -> Propagation {
    let channel = format!("c3bench:coh:{run}");
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..listeners {
        let mut sub = Redis::connect(&env.redis).await.expect("redis");
        sub.cmd(&[b"SUBSCRIBE", channel.as_bytes()])
            .await
            .expect("subscribe");
        let s = Arc::new(Seen::default());
        let sink = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            while let Ok(Reply::Array(parts)) = sub.reply().await {
                let now = mono_ns();
                if let Some(Reply::Bulk(Some(key))) = parts.get(2)
                    && let Some(i) = std::str::from_utf8(key)
                        .ok()
                        .and_then(|k| k.strip_prefix('k')?.parse::<u64>().ok())
                {
                    sink.next.fetch_add(1, Ordering::SeqCst);
                    sink.at.lock().expect("seen").push((i, now));
                }
            }
        }));
        seen.push(s);
    }
    let mut publisher = Redis::connect(&env.redis).await.expect("redis");
    let (writes, elapsed) = write_series(env.series, rate, async |i| {
        let key = format!("k{i}");
        publisher
            .cmd(&[b"PUBLISH", channel.as_bytes(), key.as_bytes()])
            .await
            .expect("publish");
    })
    .await;
    let i = writes.acked.len() as u64;
    drain(&seen, i, Duration::from_secs(10)).await;
    for t in tasks {
        t.abort();
    }
    let seen: Vec<_> = seen
        .iter()
        .map(|s| std::mem::take(&mut *s.at.lock().expect("seen")))
        .collect();
    summarise("Redis pub/sub", rate, &writes, &seen, elapsed)
}

/// Writers for a series one writer cannot drive.
pub(crate) const SEVERAL: usize = 4;

pub(crate) async fn run(env: &Env) -> Vec<Propagation> {
    let (fanouts, rates): (&[usize], &[Option<u32>]) = if env.quick {
        (&[2, 8], &[Some(1000), None])
    } else {
        (&[2, 8, 32], &[Some(100), Some(1000), None])
    };
    let mut out = Vec::new();
    let mut run = 0;
    for &n in fanouts {
        for &rate in rates {
            run += 1;
            eprintln!("  {n} listeners at {}", rate_name(rate));
            let one = c3_run(env, n, rate, (1, Transport::Listen), run, None).await;
            // One writer could not drive the rate asked: several can, their
            // writes sharing commits (the write combiner).
            let short = rate.is_some_and(|r| one.achieved_rate < 0.95 * f64::from(r));
            out.push(one);
            if short {
                run += 1;
                eprintln!("  {n} listeners at {}, {SEVERAL} writers", rate_name(rate));
                out.push(c3_run(env, n, rate, (SEVERAL, Transport::Listen), run, None).await);
            }
            out.push(redis_run(env, n, rate, run).await);
        }
    }
    out
}
