//! Shared test support: a throwaway schema per test, nodes built on it,
//! condition waits with deadlines, and a TCP fault proxy.
//!
//! Every test gets its own schema and notification channel, so tests run in
//! parallel against one server and never depend on leftovers.

#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod nats;
pub mod pgbouncer;
pub mod proxy;
pub mod web;

pub use web::{DELIVERY, wait_until};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use c3::core::{C3, C3Builder};

/// The PostgreSQL the tests use: `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `host:port` of [`database_url`], for the fault proxy's upstream.
pub fn database_addr() -> String {
    let url = database_url();
    let rest = url.rsplit('@').next().unwrap_or(&url);
    let rest = rest
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://");
    rest.split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .to_owned()
}

/// Waits until the standby behind `standby` has replayed everything the
/// primary behind `primary` had written when called.
pub async fn standby_caught_up(primary: &tokio_postgres::Client, standby: &tokio_postgres::Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        "the standby has replayed the primary's writes",
        DELIVERY,
        || async {
            standby
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        },
    )
    .await;
}

/// Connects a plain tokio-postgres client (a "foreign", non-c3 client).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach PostgreSQL at {url}: {e}\n\
             These tests need a real server. Run `scripts/test.sh`, which finds or starts one, \
             or set DATABASE_URL to a reachable database."
        ),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The URL c3 nodes of a test use: `url`, with the sessions' default
/// isolation set to `C3_TEST_ISOLATION` when that is set (scripts/test.sh
/// runs the fence and warm-reconnect tests again under `repeatable read`:
/// c3 must begin its own transactions READ COMMITTED whatever the
/// database's or role's default says).
pub fn node_url(url: &str) -> String {
    match std::env::var("C3_TEST_ISOLATION") {
        Ok(level) if !level.is_empty() => {
            let sep = if url.contains('?') { '&' } else { '?' };
            let level = level.replace(' ', "%5C%20");
            format!("{url}{sep}options=-c%20default_transaction_isolation%3D{level}")
        }
        _ => url.to_owned(),
    }
}

/// One test's private schema and channel on the shared server.
pub struct TestDb {
    pub url: String,
    pub schema: String,
    pub channel: String,
    pub client: tokio_postgres::Client,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    /// Creates a fresh schema named after the test.
    pub async fn new(test: &str) -> TestDb {
        Self::on(&database_url(), test).await
    }

    /// [`new`](Self::new), on the server at `url` (a cluster of the test's
    /// own).
    pub async fn on(url: &str, test: &str) -> TestDb {
        let url = url.to_owned();
        let client = connect(&url).await;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = format!("{:x}{:x}{:x}", std::process::id(), n, nanos);
        let short: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(20)
            .collect::<String>()
            .to_ascii_lowercase();
        let schema = format!("c3t_{short}_{tag}");
        let channel = format!("c3t_{tag}");
        client
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("create test schema");
        TestDb {
            url,
            schema,
            channel,
            client,
        }
    }

    /// A builder pointed at this test's schema and channel, with short
    /// heartbeats so failures are detected quickly.
    pub fn builder(&self) -> C3Builder {
        C3::builder()
            .postgres(&node_url(&self.url))
            .schema(self.schema.clone())
            .channel(self.channel.clone())
            .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(5))
            .pool_size(4)
    }

    /// A builder for a node whose L2 pool goes to `pool_url` and whose LISTEN
    /// connection goes to `listen_url` — e.g. each through a fault proxy of
    /// its own, so one can be held while the other works.
    pub fn split_builder(&self, pool_url: &str, listen_url: &str) -> C3Builder {
        let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
            node_url(pool_url)
                .parse::<tokio_postgres::Config>()
                .expect("pool URL"),
            tokio_postgres::NoTls,
        ))
        .max_size(4)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .expect("pool");
        self.builder().pool(pool).postgres(&node_url(listen_url))
    }

    /// A builder whose L2 pool goes through `link` (a fault proxy); LISTEN
    /// goes direct.
    pub fn pool_through(&self, link: &proxy::FaultProxy) -> C3Builder {
        self.split_builder(&link.url(&self.url), &self.url)
    }

    /// A builder whose LISTEN connection goes through `link`, with
    /// heartbeats so long that a held link only makes the node slow to hear,
    /// never a loss; the pool goes direct.
    pub fn listening_through(&self, link: &proxy::FaultProxy) -> C3Builder {
        self.split_builder(&self.url, &link.url(&self.url))
            .heartbeat(Duration::from_secs(60), Duration::from_secs(60))
    }

    pub async fn node(&self) -> C3 {
        self.builder().build().await.expect("build node")
    }

    pub async fn nodes(&self, n: usize) -> Vec<C3> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.node().await);
        }
        v
    }

    /// `"schema"."cache_data"`.
    pub fn table(&self) -> String {
        format!("\"{}\".cache_data", self.schema)
    }

    /// The L2 row version of `key`, if the row exists.
    pub async fn row_version(&self, key: &str) -> Option<i64> {
        self.client
            .query_opt(
                &format!("SELECT version FROM {} WHERE key = $1", self.table()),
                &[&key],
            )
            .await
            .expect("read a row version")
            .map(|r| r.get(0))
    }

    /// Waits until no other session holds or waits for a lock on this
    /// test's tables: whatever was queued has committed or rolled back, so
    /// what L2 holds now is final.
    pub async fn quiet(&self) {
        wait_until(
            "no transaction left on the test's tables",
            DELIVERY,
            || async {
                let n: i64 = self
                    .client
                    .query_one(
                        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                        &[&self.schema],
                    )
                    .await
                    .expect("read pg_locks")
                    .get(0);
                n == 0
            },
        )
        .await;
    }

    /// Terminates the listener backend of `node` (found by application_name).
    pub async fn kill_listener(&self, node: &C3) -> u64 {
        let app = format!("c3-listener {}", node.node_id());
        let rows = self
            .client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .expect("terminate listener");
        rows.len() as u64
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A node's background write may still hold a lock on the schema's
        // table in a transaction that will never finish (its runtime is gone
        // or blocked by this very drop): bound the wait, end those backends,
        // and try again, so a failing test reports instead of hanging.
        let drop = format!(
            "SET lock_timeout = '3s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        );
        let schema = self.schema.clone();
        run_cleanup(&self.url, move |client| async move {
            if client.batch_execute(&drop).await.is_err() {
                let _ = client
                    .execute(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                         JOIN pg_class c ON c.oid = l.relation \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                        &[&schema],
                    )
                    .await;
                let _ = client.batch_execute(&drop).await;
            }
        });
    }
}

/// Runs `cleanup` with a fresh connection to `url`, from `Drop`: on a thread
/// of its own with its own runtime, because we may be inside (or unwinding
/// out of) the test's runtime. Failures are ignored: cleanup is best effort.
pub fn run_cleanup<F, Fut>(url: &str, cleanup: F)
where
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let url = url.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                cleanup(client).await;
            }
        });
    })
    .join();
}

/// Waits until `node` has applied more invalidations from other nodes than
/// `before` (a value of `node.stats().invalidations_received`).
pub async fn received(node: &C3, before: u64) {
    wait_until("an invalidation reaches the node", DELIVERY, || async {
        node.stats().invalidations_received > before
    })
    .await;
}

/// splitmix64: small, seedable, good enough to pick operations in
/// randomized tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A randomized test's seed: `var` if set (to reproduce a run), else the
/// clock; the caller prints it.
pub fn seed_from(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// A port free now, below the kernel's ephemeral range, and never handed
/// out twice in this process: a port from that range (what binding port 0
/// hands out) can be taken by any outgoing connection before the server the
/// test starts binds it, or while the test has it stopped.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 20_000 {
        (15_000, low)
    } else {
        (40_000, 60_000)
    };
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}
