//! A TCP fault proxy between c3 nodes and PostgreSQL.
//!
//! Modes: forward; **blackhole** (keep every socket open but move no bytes — a
//! half-open link as seen from the client); **hold replies** (requests reach
//! the server, its answers wait in the proxy: a query that has run but whose
//! result has not arrived); **freeze on reply** (the connection whose server
//! reply contains a needle stops moving bytes both ways, and hides its
//! client's close from the server — a link frozen mid-transaction, the
//! server's transaction left open with its locks); **drop** (close every
//! connection, and refuse new ones until restored) ; and added latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FORWARD: u8 = 0;
const BLACKHOLE: u8 = 1;
const DROP: u8 = 2;
const HOLD_REPLIES: u8 = 3;
const FREEZE_ON_REPLY: u8 = 4;
const FREEZE_ALL: u8 = 5;

pub struct FaultProxy {
    pub port: u16,
    /// Where new connections go (`set_upstream`).
    upstream: Arc<std::sync::Mutex<String>>,
    mode: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    /// Chunks from the server being held (`hold_replies`), their bytes, and
    /// what a reply must contain to be held.
    held: Arc<AtomicU64>,
    held_bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    hold_needle: Arc<std::sync::Mutex<Vec<u8>>>,
    /// Connections frozen by `freeze_on_reply` and not yet closed.
    frozen: Arc<AtomicU64>,
    // Bumped on drop(): every live connection watches it and closes.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (host:port) on an ephemeral local port.
    pub async fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let target = Arc::clone(&upstream);
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let held_bytes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hold_needle = Arc::new(std::sync::Mutex::new(Vec::new()));
        let frozen = Arc::new(AtomicU64::new(0));
        let (generation, _) = watch::channel(0u64);
        let (m, l, g, h) = (
            mode.clone(),
            latency_ms.clone(),
            generation.clone(),
            (
                held.clone(),
                held_bytes.clone(),
                hold_needle.clone(),
                frozen.clone(),
            ),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if m.load(Ordering::SeqCst) == DROP {
                    drop(client);
                    continue;
                }
                let to = target.lock().unwrap().clone();
                let Ok(server) = TcpStream::connect(&to).await else {
                    continue;
                };
                let (m, l, h, rx) = (m.clone(), l.clone(), h.clone(), g.subscribe());
                tokio::spawn(pipe(client, server, m, l, h, rx));
            }
        });
        FaultProxy {
            port,
            upstream,
            mode,
            latency_ms,
            held,
            held_bytes,
            hold_needle,
            frozen,
            generation,
            task,
        }
    }

    /// A database URL that goes through this proxy.
    pub fn url(&self, db_url: &str) -> String {
        // Only the port differs: the tests' URLs are postgres://user@127.0.0.1:PORT/db.
        let at = db_url.rfind('@').map_or(0, |i| i + 1);
        let rest = &db_url[at..];
        let slash = rest.find('/').unwrap_or(rest.len());
        format!("{}127.0.0.1:{}{}", &db_url[..at], self.port, &rest[slash..])
    }

    /// Sends new connections to another server (host:port) — e.g. a
    /// failover, as a client behind a fixed address sees it.
    pub fn set_upstream(&self, upstream: String) {
        *self.upstream.lock().unwrap() = upstream;
    }

    pub fn forward(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
    }

    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Lets requests through but holds the first server reply that contains
    /// `needle` (and everything after it on that connection) until
    /// `forward()`; [`held`](Self::held) counts what is waiting.
    pub fn hold_replies(&self, needle: &[u8]) {
        self.held_bytes.lock().unwrap().clear();
        *self.hold_needle.lock().unwrap() = needle.to_vec();
        self.mode.store(HOLD_REPLIES, Ordering::SeqCst);
    }

    /// Freezes the first connection whose server reply contains `needle`:
    /// that reply is not delivered, and from then on no byte moves either
    /// way on that connection and its client's close does not reach the
    /// server — until [`thaw`](Self::thaw). Other connections forward.
    pub fn freeze_on_reply(&self, needle: &[u8]) {
        *self.hold_needle.lock().unwrap() = needle.to_vec();
        self.mode.store(FREEZE_ON_REPLY, Ordering::SeqCst);
    }

    /// Freezes every connection, and those opened meanwhile, as
    /// [`freeze_on_reply`](Self::freeze_on_reply) freezes one — the whole
    /// link, mid-transaction — until [`thaw`](Self::thaw).
    pub fn freeze_all(&self) {
        self.mode.store(FREEZE_ALL, Ordering::SeqCst);
    }

    /// Connections frozen now.
    pub fn frozen(&self) -> u64 {
        self.frozen.load(Ordering::SeqCst)
    }

    /// Ends every freeze as a dead link ends: the frozen connections are
    /// closed (their held bytes discarded); new ones are forwarded.
    pub fn thaw(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// How many reply chunks are being held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Whether the replies held since `hold_replies` contain `needle`.
    pub fn holds(&self, needle: &[u8]) -> bool {
        contains(&self.held_bytes.lock().unwrap(), needle)
    }

    /// Refuses new connections until `forward()`, leaving current ones be.
    pub fn refuse_new(&self) {
        self.mode.store(DROP, Ordering::SeqCst);
    }

    /// Closes all current connections and refuses new ones until `forward()`.
    pub fn drop_all(&self) {
        self.mode.store(DROP, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn set_latency(&self, d: Duration) {
        self.latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

/// What `hold_replies` and `freeze_on_reply` share with each connection:
/// how many chunks are held, their bytes, what a reply must contain to be
/// held, and how many connections are frozen.
type Held = (
    Arc<AtomicU64>,
    Arc<std::sync::Mutex<Vec<u8>>>,
    Arc<std::sync::Mutex<Vec<u8>>>,
    Arc<AtomicU64>,
);

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    latency: Arc<AtomicU64>,
    held: Held,
    mut gen_rx: watch::Receiver<u64>,
) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // This connection, frozen: both directions stop for good, and an end
    // of stream seen meanwhile is not passed on (the pipe stays open until
    // the proxy's generation changes).
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let one_way = |mut r: tokio::net::tcp::OwnedReadHalf,
                   mut w: tokio::net::tcp::OwnedWriteHalf,
                   mode: Arc<AtomicU8>,
                   latency: Arc<AtomicU64>,
                   held: Option<Held>,
                   frozen: Arc<std::sync::atomic::AtomicBool>,
                   count: Arc<AtomicU64>| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = r.read(&mut buf).await;
            if mode.load(Ordering::SeqCst) == FREEZE_ALL && !frozen.swap(true, Ordering::SeqCst) {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let n = match read {
                Ok(0) | Err(_) if frozen.load(Ordering::SeqCst) => {
                    return std::future::pending::<()>().await;
                }
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.load(Ordering::SeqCst) {
                continue;
            }
            if let Some((_, _, needle, _)) = &held
                && mode.load(Ordering::SeqCst) == FREEZE_ON_REPLY
                && contains(&buf[..n], &needle.lock().unwrap())
                && mode
                    .compare_exchange(FREEZE_ON_REPLY, FORWARD, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                if !frozen.swap(true, Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            }
            // Blackhole: hold the bytes forever (until the connection is dropped).
            while mode.load(Ordering::SeqCst) == BLACKHOLE {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Hold replies: only the server-to-client direction waits,
            // and it keeps reading meanwhile, so `holds` sees everything
            // the server has sent.
            if let Some((held, held_bytes, needle, _)) = &held
                && mode.load(Ordering::SeqCst) == HOLD_REPLIES
                && contains(&buf[..n], &needle.lock().unwrap())
            {
                let mut pending = buf[..n].to_vec();
                held.fetch_add(1, Ordering::SeqCst);
                held_bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                while mode.load(Ordering::SeqCst) == HOLD_REPLIES {
                    tokio::select! {
                        more = r.read(&mut buf) => match more {
                            Ok(0) | Err(_) => return,
                            Ok(m) => {
                                pending.extend_from_slice(&buf[..m]);
                                held_bytes.lock().unwrap().extend_from_slice(&buf[..m]);
                            }
                        },
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
                held.fetch_sub(1, Ordering::SeqCst);
                if w.write_all(&pending).await.is_err() {
                    return;
                }
                continue;
            }
            let ms = latency.load(Ordering::SeqCst);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let count = held.3.clone();
    let mut up = tokio::spawn(one_way(
        cr,
        sw,
        mode.clone(),
        latency.clone(),
        None,
        frozen.clone(),
        count.clone(),
    ));
    let mut down = tokio::spawn(one_way(
        sr,
        cw,
        mode,
        latency,
        Some(held),
        frozen.clone(),
        count.clone(),
    ));
    tokio::select! {
        _ = gen_rx.changed() => {}
        _ = &mut up => {}
        _ = &mut down => {}
    }
    up.abort();
    down.abort();
    if frozen.load(Ordering::SeqCst) {
        count.fetch_sub(1, Ordering::SeqCst);
    }
}
