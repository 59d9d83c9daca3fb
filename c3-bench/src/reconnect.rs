//! Warm reconnect against the full purge: a reading node with a large L1
//! loses its LISTEN connection for two seconds (its link is cut: open
//! connections closed, new ones refused) while another node rewrites 1 % of
//! the keys; two readers keep reading random keys throughout. Counted: L2
//! reads in the seconds after the node listens again, and the share of reads
//! L1 answered then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use c3::core::ListenerState;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{Env, Profile};

/// One mode's outage.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outage {
    pub(crate) mode: &'static str,
    pub(crate) entries: usize,
    pub(crate) changed: usize,
    /// From the cut to L1 in use again.
    pub(crate) outage_ms: f64,
    /// L1 entries right after the node listened again.
    pub(crate) kept: u64,
    /// How long the counted window after the reconnect lasted.
    pub(crate) window_s: f64,
    /// Reads that went to L2 in that window.
    pub(crate) l2_reads: u64,
    /// Share of reads L1 answered in that window.
    pub(crate) l1_hit_ratio: f64,
}

pub(crate) async fn run(env: &Env) -> Vec<Outage> {
    let (entries, window) = if env.quick {
        (20_000, Duration::from_secs(3))
    } else {
        (100_000, Duration::from_secs(10))
    };
    let mut out = Vec::new();
    for warm in [false, true] {
        out.push(outage(env, warm, entries, window).await);
    }
    out
}

fn key(i: usize) -> String {
    format!("user:{i}")
}

async fn outage(env: &Env, warm: bool, entries: usize, window: Duration) -> Outage {
    let channel = "c3_bench_reconnect";
    let link = Link::start(&env.url).await;
    let node = env
        .node(channel, 512 << 20)
        .listen_postgres(&link.url)
        .warm_reconnect(warm)
        .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .await
        .expect("node");
    let writer = env.node(channel, 1 << 20).build().await.expect("writer");
    let keys: Vec<String> = (0..entries).map(key).collect();
    for (c, chunk) in keys.chunks(1_000).enumerate() {
        let values: Vec<(&str, Profile)> = chunk
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), Profile::sample((c * 1_000 + i) as u64)))
            .collect();
        node.set_many(&values).await.expect("fill");
    }
    // Two heartbeats on: the mark covers the fill (see c3's `replay`).
    let marks = node.stats().replay_marks;
    let deadline = Instant::now() + Duration::from_secs(10);
    while warm && node.stats().replay_marks < marks + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (node, stop) = (node.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (r + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = key((x % entries as u64) as usize);
                    let _ = node.get::<Profile>(&k).await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    let mut state = node.watch_listener();
    let began = Instant::now();
    link.cut();
    let _ = state
        .wait_for(|s| *s != ListenerState::Listening)
        .await
        .expect("listener state");
    let changed = entries / 100;
    let rewritten: Vec<(&str, Profile)> = keys[..changed]
        .iter()
        .map(|k| (k.as_str(), Profile::sample(u64::MAX)))
        .collect();
    writer.set_many(&rewritten).await.expect("rewrite");
    tokio::time::sleep_until((began + Duration::from_secs(2)).into()).await;
    link.restore();
    let _ = state
        .wait_for(|s| *s == ListenerState::Listening)
        .await
        .expect("listener state");
    let outage = began.elapsed();
    let kept = node.stats().l1_entries;
    let before = node.stats();
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let after = node.stats();
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let l1 = after.l1_hits - before.l1_hits;
    let reads = l1 + after.l1_misses - before.l1_misses;
    let l2_reads = after.l2_hits + after.l2_misses - before.l2_hits - before.l2_misses;
    node.shutdown().await;
    writer.shutdown().await;
    Outage {
        mode: if warm { "warm reconnect" } else { "full purge" },
        entries,
        changed,
        outage_ms: outage.as_secs_f64() * 1e3,
        kept,
        window_s: took.as_secs_f64(),
        l2_reads,
        l1_hit_ratio: if reads == 0 {
            0.0
        } else {
            l1 as f64 / reads as f64
        },
    }
}

/// A TCP link to PostgreSQL for the LISTEN connection that can be cut:
/// while cut, it closes its connections and refuses new ones.
struct Link {
    url: String,
    down: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

impl Link {
    async fn start(db_url: &str) -> Link {
        // postgres://user@host:port/db?…: the link replaces host:port.
        let at = db_url
            .rfind('@')
            .map_or_else(|| db_url.find("//").map_or(0, |i| i + 2), |i| i + 1);
        let rest = &db_url[at..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let hostport = &rest[..end];
        let upstream = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:5432")
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link");
        let port = listener.local_addr().expect("link address").port();
        let url = format!("{}127.0.0.1:{port}{}", &db_url[..at], &rest[end..]);
        let down = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let (d, c) = (Arc::clone(&down), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let (upstream, mut cut) = (upstream.clone(), c.subscribe());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Link { url, down, cuts }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}
