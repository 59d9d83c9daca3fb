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
