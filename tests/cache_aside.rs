//! `get_or_load` where PostgreSQL matters, against an HTTP source of truth
//! (wiremock): cross-node stampede protection, L2 failing, loads racing
//! writes on other nodes. The rules one node shows (singleflight, the loader
//! breaker, fail-safe, timeouts, refresh, negative caching) are c3-core's
//! own tests (`c3-core/tests/loader_rules.rs`).

mod support;

use std::time::Duration;

use c3::core::{BreakerConfig, BreakerState, ErrorKind, LoadOptions};
use serde::{Deserialize, Serialize};
use support::{DELIVERY, TestDb, wait_until};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user(name: &str) -> User {
    User {
        id: 1,
        name: name.into(),
    }
}

/// The small HTTP loader the tests use: 404 is "not found", other non-2xx
/// statuses are errors.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type LoadFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<User>, BoxError>> + Send>>;

fn http_loader(url: String) -> impl FnOnce() -> LoadFuture + Send + 'static {
    move || {
        Box::pin(async move {
            let resp = reqwest::get(&url).await?;
            match resp.status().as_u16() {
                404 => Ok(None),
                200..=299 => Ok(Some(serde_json::from_str(&resp.text().await?)?)),
                s => Err(format!("upstream answered {s}").into()),
            }
        })
    }
}

#[tokio::test]
async fn three_nodes_stampeding_one_key_make_one_upstream_request() {
    let db = TestDb::new("cluster_stampede").await;
    let nodes = db.nodes(3).await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/users/1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(user("Ada"))
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&upstream)
        .await;
    let url = format!("{}/users/1", upstream.uri());
    let opts = LoadOptions::new().cluster_lock(Duration::from_secs(10));
    let mut calls = Vec::new();
    for n in &nodes {
        for _ in 0..100 {
            let (n, url, opts) = (n.clone(), url.clone(), opts.clone());
            calls.push(tokio::spawn(async move {
                n.get_or_load("user:1", &opts, http_loader(url)).await
            }));
        }
    }
    for c in calls {
        assert_eq!(*c.await.unwrap().unwrap().unwrap(), user("Ada"));
    }
    let loads: u64 = nodes.iter().map(|n| n.stats().loads).sum();
    assert_eq!(loads, 1, "one loader call in the whole cluster");
    upstream.verify().await;
}

#[tokio::test]
async fn loads_succeed_while_l2_is_down_and_l2_is_probed_again_later() {
    let db = TestDb::new("l2_breaker").await;
    let proxy = support::proxy::FaultProxy::start(support::database_addr()).await;
    let a = db
        .builder()
        .postgres(&proxy.url(&support::database_url()))
        .op_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .l2_breaker(BreakerConfig::new(2, Duration::from_millis(300)))
        .build()
        .await
        .unwrap();
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user("Ada")))
        .mount(&upstream)
        .await;
    let url = format!("{}/users/1", upstream.uri());
    let opts = LoadOptions::new();

    proxy.drop_all();
    for i in 0..6 {
        let got = a
            .get_or_load(&format!("k{i}"), &opts, http_loader(url.clone()))
            .await;
        assert_eq!(
            *got.unwrap().unwrap(),
            user("Ada"),
            "load {i} answered by the source"
        );
    }
    assert_eq!(a.l2_breaker_state(), BreakerState::Open);
    assert_eq!(a.stats().l2_breaker_opened, 1);
    let errors = a.stats().l2_errors;
    let err = a.get::<User>("k0").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::CircuitOpen,
        "L2 not called while open"
    );
    assert_eq!(a.stats().l2_errors, errors);

    proxy.forward();
    wait_until("L2 probed and closed again", DELIVERY, || async {
        a.get::<User>("k0").await.is_ok() && a.l2_breaker_state() == BreakerState::Closed
    })
    .await;
    let got = a
        .get_or_load("after", &opts, http_loader(url.clone()))
        .await
        .unwrap();
    assert_eq!(*got.unwrap(), user("Ada"));
    let fresh = db.node().await;
    assert!(
        fresh.get::<User>("after").await.unwrap().is_some(),
        "written to L2 again"
    );
}

/// The classic cache-aside race: a load reads the source, a writer changes
/// the source and invalidates the key, and only then does the load write
/// its (older) value to L2. The write-back must be refused — decided by L2
/// itself, so it holds even before the loading node hears of the write.
#[tokio::test]
async fn a_load_that_raced_a_write_does_not_write_its_older_value_back() {
    let db = TestDb::new("load_race").await;
    // A's LISTEN connection goes through a proxy that holds B's
    // notifications back while the loads run: A's own bookkeeping cannot
    // refuse the write-back in time, so only L2's fence is tested.
    let listen_link = support::proxy::FaultProxy::start(support::database_addr()).await;
    let a = db.listening_through(&listen_link).build().await.unwrap();
    let b = db.node().await;
    listen_link.blackhole();
    let opts = LoadOptions::new();
    let stored = |key: &'static str| {
        let client = &db.client;
        let table = db.table();
        async move {
            client
                .query_opt(
                    &format!("SELECT convert_from(value, 'UTF8') FROM {table} WHERE key = $1"),
                    &[&key],
                )
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0))
        }
    };

    // The key is deleted (invalidated) while the load is in flight.
    let writer = b.clone();
    let got = a
        .get_or_load("deleted", &opts, move || async move {
            writer.delete("deleted").await.unwrap();
            Ok::<_, std::io::Error>(Some("old".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(
        got.as_deref().map(String::as_str),
        Some("old"),
        "the caller still gets its answer"
    );
    assert_eq!(
        stored("deleted").await,
        None,
        "the older value is not written back"
    );
    assert!(!a.is_cached_locally("deleted"));

    // The key is set by another node while the load is in flight.
    let writer = b.clone();
    a.get_or_load("set", &opts, move || async move {
        writer.set("set", &"new".to_owned()).await.unwrap();
        Ok::<_, std::io::Error>(Some("old".to_owned()))
    })
    .await
    .unwrap();
    assert_eq!(stored("set").await.as_deref(), Some("\"new\""));
    wait_until("A reads the newer value", DELIVERY, || async {
        a.get::<String>("set")
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str)
            == Some("new")
    })
    .await;

    // Nothing in the way: the loaded value is written and kept.
    a.get_or_load("quiet", &opts, || async {
        Ok::<_, std::io::Error>(Some("loaded".to_owned()))
    })
    .await
    .unwrap();
    assert_eq!(stored("quiet").await.as_deref(), Some("\"loaded\""));
    assert!(a.is_cached_locally("quiet"));

    // A clear during the load counts too.
    let writer = b.clone();
    a.get_or_load("cleared", &opts, move || async move {
        writer.clear().await.unwrap();
        Ok::<_, std::io::Error>(Some("old".to_owned()))
    })
    .await
    .unwrap();
    assert_eq!(stored("cleared").await, None);
    listen_link.forward();
}

/// A load whose read of L2 failed has no lease: nothing can tell whether the
/// key changed while it loaded. Its value goes to the callers (and at most
/// this node's L1), never to L2 — else an older value could land over a
/// newer write for every node.
#[tokio::test]
async fn a_load_whose_l2_read_failed_never_writes_back() {
    let db = TestDb::new("no_lease").await;
    // A's pool and its LISTEN connection go through proxies of their own, so
    // its read can fail while it is still listening, and B's notification
    // can be late: A's own L1 bookkeeping cannot see the write in time, only
    // L2 can.
    let pool_link = support::proxy::FaultProxy::start(support::database_addr()).await;
    let listen_link = support::proxy::FaultProxy::start(support::database_addr()).await;
    let a = db
        .split_builder(&pool_link.url(&db.url), &listen_link.url(&db.url))
        .heartbeat(Duration::from_secs(10), Duration::from_secs(10))
        .op_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let b = db.node().await;

    // A's read of L2 stalls past its timeout; the load starts without a lease.
    pool_link.set_latency(Duration::from_secs(1));
    listen_link.set_latency(Duration::from_secs(5));
    let (load, release_tx) = held_load(&a, "k", "old").await;
    pool_link.set_latency(Duration::ZERO);
    wait_until("A's pool answers promptly again", DELIVERY, || async {
        a.get::<String>("probe").await.is_ok()
    })
    .await;
    // The source changes and B writes the new value while A is loading.
    b.set("k", &"new".to_owned()).await.unwrap();
    release_tx.send(()).unwrap();
    let got = load.await.unwrap().unwrap();
    assert_eq!(
        got.as_deref().map(String::as_str),
        Some("old"),
        "the caller's answer"
    );

    // Whatever A tries afterwards, L2 keeps B's write.
    let row: String = db
        .client
        .query_one(
            &format!(
                "SELECT convert_from(value, 'UTF8') FROM {} WHERE key = 'k'",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(row, "\"new\"");
    let fresh = db.node().await;
    assert_eq!(
        fresh
            .get::<String>("k")
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("new")
    );
}

/// Singleflight must not hand a caller a value older than what it has seen
/// invalidated: a `get_or_load` that starts after this node applied a write
/// to the key does not join a load that started before that write.
#[tokio::test]
async fn a_caller_after_an_invalidation_does_not_join_an_older_load() {
    let db = TestDb::new("late_join").await;
    let (a, b) = (db.node().await, db.node().await);
    let (early, release_tx) = held_load(&a, "k", "old").await;
    let heard = a.stats().invalidations_received;
    b.set("k", &"new".to_owned()).await.unwrap();
    support::received(&a, heard).await;

    // Started after A applied B's write: must not wait for the old load.
    assert_eq!(
        late_caller(&a).await.as_deref().map(String::as_str),
        Some("new")
    );
    release_tx.send(()).unwrap();
    let early = early.await.unwrap().unwrap();
    assert_eq!(
        early.as_deref().map(String::as_str),
        Some("old"),
        "the first caller overlapped the write; its answer may be the old value"
    );
    assert_eq!(
        read(&a, "k").await.as_deref(),
        Some("new"),
        "and the old load changed nothing"
    );
}

/// The singleflight's two fixes, held deterministically: with L1 off (so
/// joining must be checked without it) and the node deaf to notifications
/// (its LISTEN link blackholed), the only thing that tells it a newer value
/// exists is its own L2 read. A caller after that read must not join the
/// load that started before it.
#[tokio::test]
async fn a_version_read_from_l2_keeps_later_callers_off_an_older_load_even_with_l1_off() {
    use support::proxy::FaultProxy;

    let db = TestDb::new("read_known").await;
    let listen = FaultProxy::start(support::database_addr()).await;
    let a = db
        .listening_through(&listen)
        .l1_max_bytes(0)
        .build()
        .await
        .unwrap();
    let b = db.node().await;
    let (early, release_tx) = held_load(&a, "k", "old").await;
    listen.blackhole(); // A will not hear of B's write
    b.set("k", &"new".to_owned()).await.unwrap();
    assert_eq!(
        read(&a, "k").await.as_deref(),
        Some("new"),
        "A reads B's write from L2"
    );
    assert_eq!(
        late_caller(&a).await.as_deref().map(String::as_str),
        Some("new")
    );
    release_tx.send(()).unwrap();
    early.await.unwrap().unwrap();
    listen.forward();
}

/// `get(key)` as an owned string.
async fn read(node: &c3::C3, key: &str) -> Option<String> {
    node.get::<String>(key).await.unwrap().map(|v| (*v).clone())
}

/// `get_or_load("k")` by a caller that must not join the load held by
/// `held_load` (which waits until released — so a bug here is a timeout,
/// not a hung test).
async fn late_caller(node: &c3::C3) -> Option<std::sync::Arc<String>> {
    tokio::time::timeout(
        support::DELIVERY,
        node.get_or_load("k", &LoadOptions::new(), || async {
            Ok::<_, std::io::Error>(Some("late load".to_owned()))
        }),
    )
    .await
    .expect("the late caller joined the held, older load")
    .unwrap()
}

/// Starts `get_or_load(key)` on `node` with a loader that answers `value`
/// only when released; returns once the loader is running.
async fn held_load(
    node: &c3::C3,
    key: &'static str,
    value: &'static str,
) -> (
    tokio::task::JoinHandle<c3::core::Result<Option<std::sync::Arc<String>>>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let node = node.clone();
    let load = tokio::spawn(async move {
        node.get_or_load(key, &LoadOptions::new(), move || async move {
            let _ = loading_tx.send(());
            let _ = release_rx.await;
            Ok::<_, std::io::Error>(Some(value.to_owned()))
        })
        .await
    });
    loading_rx.await.expect("the loader runs");
    (load, release_tx)
}
