//! Fault injection against real PostgreSQL: half-open links and killed
//! connections. A node must notice within its configured bound, stop using
//! L1 (fail safe), keep answering correctly from L2, and recover by itself.

mod support;

use std::time::{Duration, Instant};

use c3::ListenerState;
use support::proxy::FaultProxy;
use support::{DELIVERY, TestDb, wait_until};

/// A blackholed link (sockets open, no bytes moving) is only visible
/// through the heartbeat. The node must purge and bypass L1 within
/// `heartbeat interval + timeout` (plus scheduling slack), and must never
/// serve the value that was current before the outage once it is back.
#[tokio::test]
async fn a_half_open_link_is_detected_within_the_heartbeat_bound() {
    let db = TestDb::new("half_open").await;
    let proxy = FaultProxy::start(support::database_addr()).await;
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(800));
    let a = db
        .builder()
        .postgres(&proxy.url(&db.url))
        .heartbeat(interval, timeout)
        .op_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let b = db.node().await;
    a.set("x", &1u32).await.unwrap();
    assert!(a.is_cached_locally("x"));

    let mut state = a.watch_listener();
    let cut = Instant::now();
    proxy.blackhole();
    tokio::time::timeout(
        DELIVERY,
        state.wait_for(|s| matches!(s, ListenerState::Reconnecting { .. })),
    )
    .await
    .expect("the half-open link is noticed")
    .unwrap();
    let detected = cut.elapsed();
    eprintln!(
        "half-open link detected after {detected:?} (bound {:?})",
        interval + timeout
    );
    // Generous slack for a loaded 2-core machine; the point is "bounded".
    assert!(detected < (interval + timeout) * 4, "took {detected:?}");
    assert!(!a.is_cached_locally("x"), "L1 purged on detection");

    // Written while A cannot hear anything.
    b.set("x", &2u32).await.unwrap();
    proxy.forward();
    tokio::time::timeout(DELIVERY, state.wait_for(|s| *s == ListenerState::Listening))
        .await
        .expect("A reconnects")
        .unwrap();
    wait_until(
        "A reads the write made during its outage",
        DELIVERY,
        || async {
            // Old pooled sockets may still fail once; a good answer must be 2.
            match a.get::<u32>("x").await {
                Ok(v) => {
                    assert_ne!(v.as_deref(), Some(&1), "stale value after recovery");
                    v.as_deref() == Some(&2)
                }
                Err(_) => false,
            }
        },
    )
    .await;
    // And coherency is back: B's next write reaches A's L1.
    wait_until("A caches x again", DELIVERY, || async {
        a.get::<u32>("x").await.is_ok() && a.is_cached_locally("x")
    })
    .await;
    b.set("x", &3u32).await.unwrap();
    wait_until("A hears B again", DELIVERY, || async {
        !a.is_cached_locally("x")
    })
    .await;
    assert_eq!(*a.get::<u32>("x").await.unwrap().unwrap(), 3);
}

/// Every connection of a node killed at once (as a failover or an
/// administrator would): the node recovers without a restart.
#[tokio::test]
async fn a_node_whose_connections_are_all_terminated_recovers() {
    let db = TestDb::new("terminated").await;
    let a = db.node().await;
    let b = db.node().await;
    a.set("k", &1u32).await.unwrap();
    let killed: i64 = db
        .client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name IN ($1, $2)",
            &[
                &format!("c3-listener {}", a.node_id()),
                &format!("c3-pool {}", a.node_id()),
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        killed >= 2,
        "listener and pool connections found ({killed})"
    );
    wait_until("the listener notices and reconnects", DELIVERY, || async {
        a.stats().reconnects >= 1 && a.listener_state() == ListenerState::Listening
    })
    .await;
    wait_until("A writes and reads again", DELIVERY, || async {
        a.set("k", &2u32).await.is_ok()
            && a.get::<u32>("k").await.ok().flatten().as_deref() == Some(&2)
    })
    .await;
    wait_until("B sees A's write", DELIVERY, || async {
        b.get::<u32>("k").await.unwrap().as_deref() == Some(&2)
    })
    .await;
}

/// The PostgreSQL server restarts, three times, under two nodes (a cluster
/// of the test's own): each time both notice, purge L1, reconnect by
/// themselves and serve the latest write — never their pre-restart copy —
/// and their task count does not grow from one restart to the next.
#[tokio::test]
async fn every_node_recovers_from_server_restarts_without_growing() {
    let cluster = support::cluster::Cluster::start("restart");
    let url = cluster.url();
    let node = || {
        c3::C3::builder()
            .postgres(&url)
            .schema("c3_restart")
            .channel("c3_restart")
            .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(2))
            .op_timeout(Duration::from_secs(2))
            .pool_size(4)
            .build()
    };
    let a = node().await.unwrap();
    let b = node().await.unwrap();
    a.set("k", &0u32).await.unwrap();
    assert_eq!(*b.get::<u32>("k").await.unwrap().unwrap(), 0);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let mut tasks_after_first = None;
    for round in 1..=3u32 {
        assert!(b.is_cached_locally("k"), "round {round}: B holds a copy");
        let (ra, rb) = (a.stats().reconnects, b.stats().reconnects);
        cluster.restart();
        wait_until("both nodes reconnect", Duration::from_secs(30), || async {
            a.stats().reconnects > ra
                && b.stats().reconnects > rb
                && a.listener_state() == ListenerState::Listening
                && b.listener_state() == ListenerState::Listening
        })
        .await;
        assert!(
            !b.is_cached_locally("k"),
            "round {round}: the loss purged B's L1"
        );
        wait_until("A writes again", DELIVERY, || async {
            a.set("k", &round).await.is_ok()
        })
        .await;
        wait_until("B reads A's write", DELIVERY, || async {
            b.get::<u32>("k").await.ok().flatten().as_deref() == Some(&round)
        })
        .await;
        wait_until("B keeps it in L1 again", DELIVERY, || async {
            b.get::<u32>("k").await.ok().flatten().as_deref() == Some(&round)
                && b.is_cached_locally("k")
        })
        .await;
        let now = tasks();
        match tasks_after_first {
            None => tasks_after_first = Some(now),
            Some(first) => assert!(
                now <= first + 2,
                "round {round}: {now} tasks alive, {first} after the first restart"
            ),
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A write the origin accepted, whose invalidation cannot be committed (the
/// node's pool cannot reach PostgreSQL), is not reported as a success: other
/// replicas may still serve the older response. Once L2 is reachable again,
/// writes answer as the origin did.
#[tokio::test]
async fn a_write_whose_invalidation_cannot_commit_is_answered_503() {
    use axum::body::Body;
    use support::web::{VersionedOrigin, send};

    let db = TestDb::new("invalidation_fails").await;
    let link = FaultProxy::start(support::database_addr()).await;
    let node = db
        .pool_through(&link)
        .op_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let origin = VersionedOrigin::new("max-age=300");
    let svc = origin.cached(&node);
    let put = || {
        http::Request::put("http://app.test/item")
            .body(Body::empty())
            .unwrap()
    };

    link.drop_all();
    let (p, _) = send(&svc, put()).await;
    assert_eq!(origin.version("/item"), 1, "the origin took the write");
    assert_eq!(p.status, 503, "{:?}", p.headers);
    let status = p.headers["cache-status"].to_str().unwrap().to_owned();
    assert!(
        status.contains("fwd-status=200") && status.contains("detail=invalidation-failed"),
        "{status}"
    );

    link.forward();
    let (p, _) = send(&svc, put()).await;
    assert_eq!(p.status, 200);
}
