//! Warm reconnect: a node that lost its LISTEN connection drops, once it is
//! back, exactly the keys the L2 change log shows changed meanwhile — and
//! purges everything when the log cannot prove that (another cluster).

mod support;

use std::time::Duration;

use c3::core::{C3, ListenerState, Stats};
use support::cluster::Cluster;
use support::proxy::FaultProxy;
use support::{DELIVERY, TestDb, wait_until};

/// L1 entries the node holds when it loses its connection.
const ENTRIES: usize = 100_000;
/// Keys another node sets, deletes, and tag-invalidates during the outage.
const SET: usize = 200;
const DELETED: usize = 25;
const TAGGED: usize = 25;

fn key(i: usize) -> String {
    format!("k:{i}")
}

fn grp(i: usize) -> String {
    format!("grp:{i}")
}

/// Fills `node`'s L1 (and L2) with `n` entries `k:i = i`, and the tagged
/// group.
async fn fill(node: &C3, n: usize) {
    let keys: Vec<String> = (0..n).map(key).collect();
    for chunk in keys.chunks(2_000) {
        let start = chunk[0][2..].parse::<u64>().unwrap();
        let entries: Vec<(&str, u64)> = chunk
            .iter()
            .zip(start..)
            .map(|(k, i)| (k.as_str(), i))
            .collect();
        node.set_many(&entries).await.unwrap();
    }
    for i in 0..TAGGED {
        node.set_tagged(&grp(i), &(i as u64), None, &["grp"])
            .await
            .unwrap();
    }
}

/// Waits until `node`'s warm-reconnect mark covers everything committed so
/// far: two marks on, the second heartbeat was sent after the first echo.
async fn marked(node: &C3) {
    let m = node.stats().replay_marks;
    wait_until("the mark covers the writes so far", DELIVERY, || async {
        node.stats().replay_marks >= m + 2
    })
    .await;
}

fn cached(node: &C3, keys: impl Iterator<Item = String>) -> usize {
    keys.filter(|k| node.is_cached_locally(k)).count()
}

async fn reconnected(node: &C3, before: &Stats) {
    wait_until("the node is listening again", DELIVERY, || async {
        let s = node.stats();
        s.warm_reconnects + s.warm_reconnect_fallbacks
            > before.warm_reconnects + before.warm_reconnect_fallbacks
            && node.listener_state() == ListenerState::Listening
    })
    .await;
}

/// The changes another node makes while `node` is not listening.
async fn change(writer: &C3) {
    let set: Vec<String> = (0..SET).map(key).collect();
    let entries: Vec<(&str, u64)> = set.iter().map(|k| (k.as_str(), 1_000_000)).collect();
    writer.set_many(&entries).await.unwrap();
    for i in SET..SET + DELETED {
        writer.delete(&key(i)).await.unwrap();
    }
    assert_eq!(writer.invalidate_tag("grp").await.unwrap(), TAGGED);
}

async fn outage(how: &str) {
    let db = TestDb::new(&format!("warm_{how}")).await;
    let link = FaultProxy::start(support::database_addr()).await;
    let node = db
        .split_builder(&db.url, &link.url(&db.url))
        .warm_reconnect(true)
        .connect_timeout(Duration::from_secs(1))
        .l1_max_bytes(512 << 20)
        .build()
        .await
        .unwrap();
    let writer = db.node().await;
    fill(&node, ENTRIES).await;
    let held = cached(&node, (0..ENTRIES).map(key));
    assert!(held >= ENTRIES * 999 / 1000, "L1 holds {held} of {ENTRIES}");
    marked(&node).await;

    let before = node.stats();
    let began = tokio::time::Instant::now();
    match how {
        // The server ends the listener's backend; the link refuses the
        // reconnects until the outage is over.
        "terminated" => {
            link.refuse_new();
            assert_eq!(db.kill_listener(&node).await, 1);
        }
        _ => link.blackhole(),
    }
    wait_until("the node sees the loss", DELIVERY, || async {
        node.listener_state() != ListenerState::Listening
    })
    .await;
    change(&writer).await;
    // The outage lasts about two seconds, whatever the writes took.
    tokio::time::sleep_until(began + Duration::from_secs(2)).await;
    link.forward();
    reconnected(&node, &before).await;

    let after = node.stats();
    assert_eq!(
        (
            after.warm_reconnects - before.warm_reconnects,
            after.warm_reconnect_fallbacks - before.warm_reconnect_fallbacks
        ),
        (1, 0),
        "one warm reconnect, no purge"
    );
    assert_eq!(
        after.replayed_keys - before.replayed_keys,
        (SET + DELETED + TAGGED) as u64,
        "exactly the changed keys were dropped"
    );
    // None of the changed keys serves an old value.
    for i in 0..SET {
        assert_eq!(
            node.get::<u64>(&key(i)).await.unwrap().as_deref(),
            Some(&1_000_000)
        );
    }
    for i in SET..SET + DELETED {
        assert_eq!(node.get::<u64>(&key(i)).await.unwrap(), None, "{}", key(i));
    }
    for i in 0..TAGGED {
        assert_eq!(node.get::<u64>(&grp(i)).await.unwrap(), None, "{}", grp(i));
    }
    // The rest is still in L1.
    let untouched = ENTRIES - SET - DELETED;
    let kept = cached(&node, (SET + DELETED..ENTRIES).map(key));
    assert!(
        kept * 1000 >= untouched * 995,
        "{kept} of {untouched} untouched entries are still L1 hits"
    );
}

#[tokio::test]
async fn a_terminated_listener_backend_drops_only_what_changed() {
    outage("terminated").await;
}

#[tokio::test]
async fn a_blackholed_listener_link_drops_only_what_changed() {
    outage("blackhole").await;
}

/// A PostgreSQL restart: the same cluster, its log intact — L1 stays warm,
/// and what another node wrote while this one was away is not served old.
#[tokio::test]
async fn a_postgres_restart_keeps_l1_warm() {
    let cluster = Cluster::start("warm_restart");
    let url = cluster.url();
    // The node reaches the cluster through a link held shut across the
    // restart, so the write below lands while it is away and only the
    // replay can tell it.
    let link = FaultProxy::start(format!("127.0.0.1:{}", cluster.port())).await;
    let through_link = link.url(&url);
    let builder = |url: &str| {
        C3::builder()
            .postgres(url)
            .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
    };
    let node = builder(&through_link)
        .warm_reconnect(true)
        .l1_max_bytes(64 << 20)
        .build()
        .await
        .unwrap();
    let writer = builder(&url).build().await.unwrap();
    let n = 2_000;
    fill(&node, n).await;
    marked(&node).await;
    let before = node.stats();

    link.drop_all();
    cluster.restart();
    // The writer's pool reconnects on its own; its first calls may fail.
    wait_until("the writer writes again", DELIVERY, || async {
        writer.set(&key(0), &7_777_u64).await.is_ok()
    })
    .await;
    assert!(
        node.listener_state() != ListenerState::Listening,
        "the node was away when the write landed"
    );
    link.forward();
    reconnected(&node, &before).await;
    let after = node.stats();
    assert_eq!(
        after.warm_reconnect_fallbacks - before.warm_reconnect_fallbacks,
        0,
        "a restart of the same cluster needs no purge"
    );
    assert!(
        after.replayed_keys > before.replayed_keys,
        "the replay found the write made while the node was away"
    );
    // At once: the replay dropped the key before L1 was used again.
    assert_eq!(
        node.get::<u64>(&key(0)).await.unwrap().as_deref(),
        Some(&7_777),
        "the write made while the node was away"
    );
    let kept = cached(&node, (1..n).map(key));
    assert!(
        kept * 1000 >= (n - 1) * 995,
        "{kept} of {} kept: {:?}",
        n - 1,
        node.stats()
    );
}

/// Reconnecting to another cluster at the same address (a failover to a
/// server that may lack transactions this node heard of): L1 is purged.
#[tokio::test]
async fn another_cluster_behind_the_same_address_purges_l1() {
    let (first, second) = (Cluster::start("warm_first"), Cluster::start("warm_second"));
    let addr = |c: &Cluster| format!("127.0.0.1:{}", c.port());
    // The same schema on both (the second's made by a node of its own).
    drop(C3::builder().postgres(&second.url()).build().await.unwrap());
    let link = FaultProxy::start(addr(&first)).await;
    let node = C3::builder()
        .postgres(&link.url(&first.url()))
        .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .warm_reconnect(true)
        .build()
        .await
        .unwrap();
    fill(&node, 100).await;
    assert_eq!(cached(&node, (0..100).map(key)), 100);
    let before = node.stats();

    link.drop_all();
    wait_until("the node sees the loss", DELIVERY, || async {
        node.listener_state() != ListenerState::Listening
    })
    .await;
    link.set_upstream(addr(&second));
    link.forward();
    reconnected(&node, &before).await;

    let after = node.stats();
    assert_eq!(
        after.warm_reconnect_fallbacks - before.warm_reconnect_fallbacks,
        1,
        "another cluster: purged"
    );
    assert_eq!(cached(&node, (0..100).map(key)), 0);
    assert_eq!(node.get::<u64>(&key(1)).await.unwrap(), None);
}

/// A real failover: a streaming standby (asynchronous) misses the last
/// commit, the primary stops at once, the standby is promoted and the node
/// reconnects to it behind the same address. The promoted server's history
/// lacks a write this node heard of — and, until its first checkpoint,
/// `pg_control_checkpoint()` still shows the old timeline. The node must
/// see the new timeline and purge, not keep the lost write in L1.
#[tokio::test]
async fn a_promoted_standby_that_lost_commits_purges_l1() {
    let primary = Cluster::start("promote_primary");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    // Replication goes through a link of its own, so the test can cut it.
    let replication = FaultProxy::start(addr(primary.port())).await;
    let link = FaultProxy::start(addr(primary.port())).await;
    let node = C3::builder()
        .postgres(&link.url(&primary.url()))
        .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .warm_reconnect(true)
        .build()
        .await
        .unwrap();
    node.set(&key(1), &1_u64).await.unwrap();
    // pg_basebackup goes through the proxy, which runs on this runtime: it
    // must not be blocked while the tool waits for it.
    let port = replication.port;
    let standby = tokio::task::spawn_blocking(move || Cluster::standby("promote_standby", port))
        .await
        .unwrap();
    let probe = support::connect(&primary.url()).await;
    let standby_sql = support::connect(&standby.url()).await;
    // Dirty pages on the standby: the checkpoint that follows the promotion
    // takes its time writing them (a spread checkpoint), and until it ends
    // `pg_control_checkpoint()` shows the old timeline.
    probe
        .batch_execute(
            "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad \
             FROM generate_series(1, 80000) AS g",
        )
        .await
        .unwrap();
    support::standby_caught_up(&probe, &standby_sql).await;

    // Replication stops; the node writes again and hears its own write.
    replication.drop_all();
    node.set(&key(1), &2_u64).await.unwrap();
    marked(&node).await;
    assert_eq!(node.get::<u64>(&key(1)).await.unwrap().as_deref(), Some(&2));
    let before = node.stats();

    primary.stop_immediately();
    standby.promote();
    link.drop_all();
    wait_until("the node sees the loss", DELIVERY, || async {
        node.listener_state() != ListenerState::Listening
    })
    .await;
    link.set_upstream(addr(standby.port()));
    link.forward();
    reconnected(&node, &before).await;

    assert_eq!(
        node.stats().warm_reconnect_fallbacks - before.warm_reconnect_fallbacks,
        1,
        "a new timeline: purged"
    );
    assert_eq!(
        node.get::<u64>(&key(1)).await.unwrap().as_deref(),
        Some(&1),
        "the node serves what the promoted server holds, not the write it lost"
    );
}

/// `C3::invalidate` — for a row changed behind c3's back — records the keys
/// as deleted in the same transaction as its message, so a node that was
/// away when it was sent finds them in its warm replay (it used to send
/// only the message, and such a node kept its copy).
#[tokio::test]
async fn an_invalidation_sent_while_a_node_was_away_is_replayed() {
    let db = TestDb::new("warm_invalidate").await;
    let link = FaultProxy::start(support::database_addr()).await;
    let node = db
        .split_builder(&db.url, &link.url(&db.url))
        .warm_reconnect(true)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let writer = db.node().await;
    writer.set("k", &1u64).await.unwrap();
    writer.set("other", &1u64).await.unwrap();
    for k in ["k", "other"] {
        assert_eq!(node.get::<u64>(k).await.unwrap().as_deref(), Some(&1));
        assert!(node.is_cached_locally(k));
    }
    marked(&node).await;
    let before = node.stats();
    link.refuse_new();
    assert_eq!(db.kill_listener(&node).await, 1);
    wait_until("the node sees the loss", DELIVERY, || async {
        node.listener_state() != ListenerState::Listening
    })
    .await;
    // Behind c3's back: the row goes, with no deletion record; then the
    // remedy the docs give, an invalidation.
    let sql = support::connect(&db.url).await;
    sql.execute(&format!("DELETE FROM {} WHERE key = 'k'", db.table()), &[])
        .await
        .unwrap();
    writer.invalidate("k").await.unwrap();
    link.forward();
    reconnected(&node, &before).await;
    let after = node.stats();
    assert_eq!(
        after.warm_reconnect_fallbacks - before.warm_reconnect_fallbacks,
        0,
        "a warm reconnect, not a purge"
    );
    assert!(!node.is_cached_locally("k"), "the replay dropped k");
    assert_eq!(node.get::<u64>("k").await.unwrap(), None);
    assert!(node.is_cached_locally("other"), "the rest of L1 was kept");
}
