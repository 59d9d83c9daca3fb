//! `get_or_load` against an HTTP source of truth (wiremock): singleflight,
//! cross-node stampede protection, breakers, fail-safe, timeouts, refresh.

mod support;

use std::time::{Duration, Instant};

use c3::core::{BreakerConfig, BreakerState, ErrorKind, LoadOptions, ManualClock};
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

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let db = TestDb::new("singleflight").await;
    let a = db.node().await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/users/1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(user("Ada"))
                .set_delay(Duration::from_millis(200)),
        )
        .expect(1)
        .mount(&upstream)
        .await;
    let url = format!("{}/users/1", upstream.uri());
    let opts = LoadOptions::new();
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let (a, url, opts) = (a.clone(), url.clone(), opts.clone());
            tokio::spawn(async move { a.get_or_load("user:1", &opts, http_loader(url)).await })
        })
        .collect();
    for c in calls {
        assert_eq!(*c.await.unwrap().unwrap().unwrap(), user("Ada"));
    }
    assert_eq!(a.stats().loads, 1);
    // Cached now: more calls stay local.
    for _ in 0..10 {
        a.get_or_load("user:1", &opts, http_loader(url.clone()))
            .await
            .unwrap();
    }
    upstream.verify().await;
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
async fn a_failing_source_opens_the_breaker_and_stale_values_are_served() {
    let db = TestDb::new("fail_safe_loader").await;
    let clock = ManualClock::new();
    let a = db
        .builder()
        .clock(clock.clone())
        .loader_breaker(BreakerConfig::new(3, Duration::from_millis(500)))
        .build()
        .await
        .unwrap();
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user("v1")))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&upstream)
        .await;
    let url = format!("{}/users/1", upstream.uri());
    let opts = LoadOptions::new()
        .ttl(Some(Duration::from_secs(10)))
        .fail_safe(Duration::from_secs(3600))
        .source("users-api");
    let load = || a.get_or_load("user:1", &opts, http_loader(url.clone()));
    assert_eq!(*load().await.unwrap().unwrap(), user("v1"));
    assert_eq!(requests(&upstream).await, 1);

    clock.advance(Duration::from_secs(11)); // v1 is now stale, within the window
    for i in 0..3 {
        assert_eq!(
            *load().await.unwrap().unwrap(),
            user("v1"),
            "stale answer {i}"
        );
    }
    assert_eq!(
        requests(&upstream).await,
        4,
        "three failed attempts reached the source"
    );
    assert_eq!(a.loader_breaker_state("users-api"), BreakerState::Open);
    assert_eq!(a.stats().loader_breaker_opened, 1);

    // While open: answers keep coming, the source sees nothing.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(*load().await.unwrap().unwrap(), user("v1"));
    }
    let per_answer = started.elapsed() / 20;
    assert_eq!(
        requests(&upstream).await,
        4,
        "no calls while the breaker is open"
    );
    assert!(a.stats().stale_hits >= 23);
    println!("fail-safe answer while the source is down: {per_answer:?} each");

    // Without a fail-safe window the failure is a typed error.
    let strict = LoadOptions::new().source("users-api");
    let err = a
        .get_or_load("user:2", &strict, http_loader(url.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);

    // The source recovers; after the cool-down exactly one probe goes through.
    upstream.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user("v2")))
        .mount(&upstream)
        .await;
    wait_until(
        "the probe after the cool-down refreshes the value",
        DELIVERY,
        || async { *load().await.unwrap().unwrap() == user("v2") },
    )
    .await;
    assert_eq!(requests(&upstream).await, 1, "one probe");
    assert_eq!(a.loader_breaker_state("users-api"), BreakerState::Closed);
    assert_eq!(*load().await.unwrap().unwrap(), user("v2"));
    assert_eq!(
        requests(&upstream).await,
        1,
        "fresh again: served from cache"
    );
}

#[tokio::test]
async fn a_failing_source_without_stale_value_is_a_loader_error() {
    let db = TestDb::new("loader_error").await;
    let a = db.node().await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .expect(2)
        .mount(&upstream)
        .await;
    let url = format!("{}/users/1", upstream.uri());
    for _ in 0..2 {
        let err = a
            .get_or_load("user:1", &LoadOptions::new(), http_loader(url.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Loader);
        assert!(err.to_string().contains("503"), "{err}");
    }
    // Errors are not cached: the second call reached the source again.
    upstream.verify().await;
}

#[tokio::test]
async fn a_slow_source_past_the_soft_timeout_gets_stale_now_and_fresh_later() {
    let db = TestDb::new("soft_timeout").await;
    let clock = ManualClock::new();
    let a = db.builder().clock(clock.clone()).build().await.unwrap();
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user("v1")))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(user("v2"))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&upstream)
        .await;
    let url = format!("{}/users/1", upstream.uri());
    let opts = LoadOptions::new()
        .ttl(Some(Duration::from_secs(10)))
        .fail_safe(Duration::from_secs(600))
        .soft_timeout(Duration::from_millis(100));
    assert_eq!(
        *a.get_or_load("u", &opts, http_loader(url.clone()))
            .await
            .unwrap()
            .unwrap(),
        user("v1")
    );
    clock.advance(Duration::from_secs(11));

    let started = Instant::now();
    let got = a
        .get_or_load("u", &opts, http_loader(url.clone()))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(*got, user("v1"), "stale answer at the soft timeout");
    assert!(
        took < Duration::from_millis(1400),
        "did not wait for the slow source: {took:?}"
    );

    wait_until("the slow response lands in the cache", DELIVERY, || async {
        a.get::<User>("u").await.unwrap().as_deref() == Some(&user("v2"))
    })
    .await;
    assert_eq!(requests(&upstream).await, 2);
}

#[tokio::test]
async fn eager_refresh_reloads_a_hot_key_before_it_expires_once_per_refresh() {
    let db = TestDb::new("eager_refresh").await;
    let clock = ManualClock::new();
    let a = db.builder().clock(clock.clone()).build().await.unwrap();
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user("v1")))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(user("v2"))
                .set_delay(Duration::from_millis(100)),
        )
        .mount(&upstream)
        .await;
    let url = format!("{}/users/1", upstream.uri());
    let opts = LoadOptions::new()
        .ttl(Some(Duration::from_secs(10)))
        .eager_refresh(0.5);
    let load = || a.get_or_load("hot", &opts, http_loader(url.clone()));
    assert_eq!(*load().await.unwrap().unwrap(), user("v1"));
    clock.advance(Duration::from_secs(4));
    load().await.unwrap();
    assert_eq!(
        requests(&upstream).await,
        1,
        "before the refresh point: no reload"
    );

    clock.advance(Duration::from_secs(2)); // 60% of the TTL
    for _ in 0..20 {
        // Hits keep answering (v1) while one refresh runs in the background.
        assert!(load().await.unwrap().is_some());
    }
    wait_until("the refreshed value is cached", DELIVERY, || async {
        a.get::<User>("hot").await.unwrap().as_deref() == Some(&user("v2"))
    })
    .await;
    for _ in 0..20 {
        assert_eq!(*load().await.unwrap().unwrap(), user("v2"));
    }
    assert_eq!(
        requests(&upstream).await,
        2,
        "exactly one upstream call for the refresh"
    );
}

#[tokio::test]
async fn not_found_is_cached_when_negative_caching_is_on() {
    let db = TestDb::new("negative").await;
    let nodes = db.nodes(2).await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&upstream)
        .await;
    let url = format!("{}/users/404", upstream.uri());
    let opts = LoadOptions::new().negative_ttl(Duration::from_secs(30));
    for n in nodes.iter().chain(nodes.iter()) {
        assert!(
            n.get_or_load("user:404", &opts, http_loader(url.clone()))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(nodes[1].get::<User>("user:404").await.unwrap().is_none());
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
