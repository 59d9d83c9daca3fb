//! Starting before the database: `start_degraded(true)` returns a node that
//! answers with L2 errors (and its loader) while PostgreSQL is down, and
//! becomes coherent once it is up — with no restart.

mod support;

use std::time::Duration;

use c3::core::{C3, LoadOptions};
use support::cluster::Cluster;
use support::{DELIVERY, received, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_postgresql_becomes_coherent_when_it_answers() {
    let cluster = Cluster::start("degraded");
    cluster.stop();
    let url = cluster.url();
    let builder = || {
        C3::builder()
            .postgres(&url)
            .connect_timeout(Duration::from_secs(1))
            .op_timeout(Duration::from_secs(1))
            .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(300))
    };
    // Without the setting: a typed error, as before.
    let err = builder().build().await.unwrap_err();
    assert!(err.is_l2_unavailable(), "{err}");

    let a = builder()
        .start_degraded(true)
        .build()
        .await
        .expect("degraded start");
    assert_ne!(a.listener_state(), c3::ListenerState::Listening);
    let err = a.get::<u32>("k").await.unwrap_err();
    assert!(err.is_l2_unavailable(), "{err}");
    let loaded = a
        .get_or_load("l", &LoadOptions::new(), || async {
            Ok::<_, std::io::Error>(Some(7u32))
        })
        .await
        .unwrap();
    assert_eq!(*loaded.unwrap(), 7, "the loader answers while L2 is down");

    cluster.start_again();
    wait_until("the degraded node listens", DELIVERY, || async {
        a.listener_state() == c3::ListenerState::Listening
    })
    .await;
    // Its schema was created in the background, by A itself: a node that
    // only checks the schema (migrate(false)) starts once A's step is done,
    // and the two are coherent.
    let deadline = std::time::Instant::now() + DELIVERY;
    let b = loop {
        match builder().migrate(false).build().await {
            Ok(b) => break b,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the degraded node never created its schema: {e}"),
        }
    };
    a.set("probe", &0u32).await.unwrap();
    b.set("k", &1u32).await.unwrap();
    assert_eq!(*a.get::<u32>("k").await.unwrap().unwrap(), 1);
    let r = a.stats().invalidations_received;
    b.set("k", &2u32).await.unwrap();
    received(&a, r).await;
    assert_eq!(*a.get::<u32>("k").await.unwrap().unwrap(), 2);
    a.shutdown().await;
    b.shutdown().await;
}
