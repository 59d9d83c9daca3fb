//! The README's service as a user runs it: two processes on two ports, one
//! PostgreSQL database of the test's own (created and dropped here). Needs a
//! reachable PostgreSQL (`DATABASE_URL`, else the local default) and fails
//! without one.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Long enough for a loaded 2-core CI machine; a pass never waits for it.
const DEADLINE: Duration = Duration::from_secs(20);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required: {e}"));
    tokio::spawn(connection);
    client
}

/// A database of the test's own, dropped (with its connections) at the end.
struct OwnDatabase {
    name: String,
    url: String,
}

impl OwnDatabase {
    async fn new() -> OwnDatabase {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("c3t_getting_started_{:x}{nanos:x}", std::process::id());
        connect(&database_url())
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let base = database_url();
        let (prefix, rest) = base.rsplit_once('/').expect("DATABASE_URL has a path");
        let query = rest
            .split_once('?')
            .map_or(String::new(), |(_, q)| format!("?{q}"));
        let url = format!("{prefix}/{name}{query}");
        OwnDatabase { name, url }
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Its own runtime: Drop may run while the test's runtime shuts down.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async { connect(&database_url()).await.batch_execute(&sql).await })
        })
        .join();
    }
}

/// Starts one replica and waits until it answers `/health`.
async fn replica(database: &str, client: &reqwest::Client) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_c3-getting-started"))
        .args(["--listen", &addr])
        .env("DATABASE_URL", database)
        .env_remove("C3_DATABASE_URL")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the service");
    let base = format!("http://{addr}");
    let health = format!("{base}/health");
    wait_until("the replica is healthy", || async {
        client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
    (child, base)
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(status, cache-status, body)`.
async fn get(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let r = client.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, cache, r.text().await.expect("body"))
}

async fn put(client: &reqwest::Client, url: &str, body: &str) -> u16 {
    client
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("PUT")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_responses_and_every_write_purges_them_on_both() {
    let db = OwnDatabase::new().await;
    let client = reqwest::Client::new();
    let (_a, a) = replica(&db.url, &client).await;
    let (_b, b) = replica(&db.url, &client).await;
    let (a, b) = (format!("{a}/products/1"), format!("{b}/products/1"));

    // A 404 is cached and tagged: creating the product through A purges it on B.
    assert_eq!(get(&client, &b).await.0, 404);
    assert_eq!(
        put(&client, &a, r#"{"name":"Lamp","price_cents":1200}"#).await,
        200
    );
    wait_until("B serves the product created through A", || async {
        get(&client, &b).await.2.contains("Lamp")
    })
    .await;

    // One entry for both replicas, although they are reached at different
    // host:port: once B's store is done (B answers from its cache), A — which
    // has not asked since the PUT — is answered from the shared cache.
    wait_until("B serves the product from its cache", || async {
        get(&client, &b).await.1.contains("hit")
    })
    .await;
    let (status, cache, _) = get(&client, &a).await;
    assert_eq!(status, 200);
    assert!(
        cache.contains("hit"),
        "A serves B's stored response: {cache}"
    );

    // A PUT on B: A (holding the response in L1) serves the new body.
    wait_until("A holds the response in L1", || async {
        get(&client, &a).await.1.contains("detail=l1")
    })
    .await;
    assert_eq!(
        put(&client, &b, r#"{"name":"Desk lamp","price_cents":1500}"#).await,
        200
    );
    wait_until("A serves the name written through B", || async {
        get(&client, &a).await.2.contains("Desk lamp")
    })
    .await;

    // A write outside the service, once both hold the response in L1.
    for url in [&a, &b] {
        wait_until("the replica serves the product from L1", || async {
            let (_, cache, body) = get(&client, url).await;
            cache.contains("detail=l1") && body.contains("Desk lamp")
        })
        .await;
    }
    connect(&db.url)
        .await
        .execute("UPDATE products SET price_cents = 900 WHERE id = 1", &[])
        .await
        .expect("UPDATE");
    for url in [&a, &b] {
        wait_until("the replica serves the price written by SQL", || async {
            get(&client, url).await.2.contains("\"price_cents\":900")
        })
        .await;
    }
}

/// The price in a product body (`"price_cents":N`).
fn price(body: &str) -> Option<i64> {
    let at = body.find("\"price_cents\":")? + "\"price_cents\":".len();
    let digits: String = body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// GET traffic on both replicas (filling their caches, through L2 and the
/// fenced fill) while a foreign client UPDATEs the product by SQL again and
/// again (the trigger invalidates through c3's function). No response may
/// be older than an UPDATE that committed before the request started, by
/// more than the propagation bound: a response stored from a read that
/// began before an UPDATE and survived it would be served for its whole
/// max-age. `C3_HTTP_RUN_SECS` (default 4) lengthens the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_updates_racing_get_traffic_never_leave_an_older_response() {
    /// A response may trail an UPDATE by this much (the notification's trip
    /// to the other replica's listener, on a loaded 2-core machine).
    const PROPAGATION: Duration = Duration::from_millis(500);
    let secs: u64 = std::env::var("C3_HTTP_RUN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let db = OwnDatabase::new().await;
    let client = reqwest::Client::new();
    let (_a, a) = replica(&db.url, &client).await;
    let (_b, b) = replica(&db.url, &client).await;
    let urls = [format!("{a}/products/1"), format!("{b}/products/1")];
    assert_eq!(
        put(&client, &urls[0], r#"{"name":"Lamp","price_cents":0}"#).await,
        200
    );
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);

    // Every UPDATE: its price (increasing) and when its commit had returned.
    let updater = tokio::spawn({
        let url = db.url.clone();
        async move {
            let sql = connect(&url).await;
            let mut committed = Vec::new();
            let mut p = 0i64;
            while Instant::now() < until {
                p += 1;
                sql.execute("UPDATE products SET price_cents = $1 WHERE id = 1", &[&p])
                    .await
                    .expect("UPDATE");
                committed.push((p, Instant::now()));
                tokio::time::sleep(Duration::from_millis(5 + (p as u64 * 7) % 20)).await;
            }
            committed
        }
    });
    // Readers: (when the GET started, the price it answered).
    let mut readers = Vec::new();
    for r in 0..8 {
        let (client, url) = (client.clone(), urls[r % 2].clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let (status, _, body) = get(&client, &url).await;
                assert_eq!(status, 200, "{body}");
                seen.push((started, price(&body).expect("a price")));
            }
            seen
        }));
    }
    let committed = updater.await.unwrap();
    let mut reads = Vec::new();
    for r in readers {
        reads.extend(r.await.unwrap());
    }
    // For each read: how long before it started had a newer price committed?
    let mut lags: Vec<Duration> = reads
        .iter()
        .filter_map(|&(started, p)| {
            committed
                .iter()
                .find(|&&(q, at)| q > p && at < started)
                .map(|&(_, at)| started - at)
        })
        .collect();
    lags.sort();
    let worst = lags.last().copied().unwrap_or_default();
    let beyond = lags.iter().filter(|l| **l > PROPAGATION).count();
    eprintln!(
        "http run: {} GETs, {} UPDATEs in {secs} s; {} answered an older price than one \
         committed before they started (worst by {worst:?}); {beyond} beyond {PROPAGATION:?}",
        reads.len(),
        committed.len(),
        lags.len()
    );
    assert!(
        reads.len() > 100 && committed.len() > 20,
        "the run did too little"
    );
    assert_eq!(
        beyond, 0,
        "responses older than an UPDATE committed {PROPAGATION:?} before they were asked for \
         (worst by {worst:?})"
    );
}
