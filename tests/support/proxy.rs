//! A TCP fault proxy between c3 nodes and PostgreSQL.
//!
//! Modes: forward; **blackhole** (keep every socket open but move no bytes — a
//! half-open link as seen from the client); **drop** (close every connection,
//! and refuse new ones until restored) ; and added latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FORWARD: u8 = 0;
const BLACKHOLE: u8 = 1;
const DROP: u8 = 2;

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    // Bumped on drop(): every live connection watches it and closes.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (host:port) on an ephemeral local port.
    pub async fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let (generation, _) = watch::channel(0u64);
        let (m, l, g) = (mode.clone(), latency_ms.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if m.load(Ordering::SeqCst) == DROP {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (m, l, rx) = (m.clone(), l.clone(), g.subscribe());
                tokio::spawn(pipe(client, server, m, l, rx));
            }
        });
        FaultProxy {
            port,
            mode,
            latency_ms,
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

    pub fn forward(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
    }

    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
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

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    latency: Arc<AtomicU64>,
    mut gen_rx: watch::Receiver<u64>,
) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let one_way = |mut r: tokio::net::tcp::OwnedReadHalf,
                   mut w: tokio::net::tcp::OwnedWriteHalf,
                   mode: Arc<AtomicU8>,
                   latency: Arc<AtomicU64>| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Blackhole: hold the bytes forever (until the connection is dropped).
            while mode.load(Ordering::SeqCst) == BLACKHOLE {
                tokio::time::sleep(Duration::from_millis(20)).await;
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
    let mut up = tokio::spawn(one_way(cr, sw, mode.clone(), latency.clone()));
    let mut down = tokio::spawn(one_way(sr, cw, mode, latency));
    tokio::select! {
        _ = gen_rx.changed() => {}
        _ = &mut up => {}
        _ = &mut down => {}
    }
    up.abort();
    down.abort();
}
