//! Relay mode (PROTOCOL.md §6): invalidations from logical decoding,
//! fanned out through NATS. Each test starts its own PostgreSQL cluster
//! with `wal_level = logical` and its own `nats-server`, so it can drop the
//! slot, kill the relay or restart NATS under the nodes.

mod support;

use std::time::Duration;

use c3::C3;
use c3::core::ListenerState;
use c3::core::relay::{Nats, Relay, RelayHandle};
use support::cluster::Cluster;
use support::nats::NatsServer;
use support::proxy::FaultProxy;
use support::{DELIVERY, connect, wait_until};

const SLOT: &str = "c3_relay";

/// A relay-mode node on `cluster`, hearing through `nats`.
async fn node(cluster: &Cluster, nats: &NatsServer, heartbeat: (Duration, Duration)) -> C3 {
    node_at(&cluster.url(), nats, heartbeat).await
}

/// A relay-mode node on the server at `url`.
async fn node_at(url: &str, nats: &NatsServer, heartbeat: (Duration, Duration)) -> C3 {
    C3::builder()
        .postgres(url)
        .relay(Nats::new(nats.url()))
        .heartbeat(heartbeat.0, heartbeat.1)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .await
        .expect("build a relay-mode node")
}

fn relay(cluster: &Cluster, nats: &NatsServer, name: &str) -> RelayHandle {
    relay_at(&cluster.url(), nats, name)
}

fn relay_at(url: &str, nats: &NatsServer, name: &str) -> RelayHandle {
    Relay::builder()
        .postgres(url)
        .nats(Nats::new(nats.url()))
        .name(name)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .expect("relay settings")
        .spawn()
}

const QUICK: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(2));

/// Waits until every node hears its heartbeats through the relay; on a
/// timeout, says what the nodes and the relays were doing.
async fn listening(nodes: &[&C3], relays: &[&RelayHandle]) {
    let deadline = std::time::Instant::now() + DELIVERY;
    while nodes
        .iter()
        .any(|n| n.listener_state() != ListenerState::Listening)
    {
        if std::time::Instant::now() > deadline {
            let states: Vec<_> = nodes.iter().map(|n| n.listener_state()).collect();
            let relays: Vec<_> = relays.iter().map(|r| r.status()).collect();
            panic!(
                "timed out after {DELIVERY:?} waiting for the nodes to hear their heartbeats \
                 through the relay; nodes: {states:?}; relays: {relays:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `relay` streams (it leads, the slot exists): a heartbeat
/// committed before its slot existed is never decoded.
async fn streaming(relay: &RelayHandle) {
    wait_until("the relay streams", DELIVERY, || async {
        relay.status().epoch.is_some()
    })
    .await;
}

#[tokio::test]
async fn writes_reach_every_node_through_the_relay_and_no_node_listens() {
    let cluster = Cluster::start_logical("relay_basic");
    let nats = NatsServer::start();
    let relay = relay(&cluster, &nats, "relay-a");
    streaming(&relay).await;
    let (a, b) = (
        node(&cluster, &nats, QUICK).await,
        node(&cluster, &nats, QUICK).await,
    );
    listening(&[&a, &b], &[&relay]).await;

    a.set("user:1", &"v1".to_owned()).await.unwrap();
    assert_eq!(*b.get::<String>("user:1").await.unwrap().unwrap(), "v1");
    assert!(b.is_cached_locally("user:1"), "B filled its L1");
    a.set("user:1", &"v2".to_owned()).await.unwrap();
    wait_until("B drops v1", DELIVERY, || async {
        !b.is_cached_locally("user:1")
    })
    .await;
    assert_eq!(*b.get::<String>("user:1").await.unwrap().unwrap(), "v2");

    // A foreign writer, through the SQL function, reaches both nodes too.
    assert!(a.get::<String>("user:1").await.unwrap().is_some());
    assert!(a.is_cached_locally("user:1") && b.is_cached_locally("user:1"));
    let sql = connect(&cluster.url()).await;
    sql.execute(
        "SELECT public.cache_data_invalidate('cache_invalidate', ARRAY['user:1'])",
        &[],
    )
    .await
    .unwrap();
    wait_until("both nodes drop user:1", DELIVERY, || async {
        !a.is_cached_locally("user:1") && !b.is_cached_locally("user:1")
    })
    .await;

    // No LISTEN session anywhere: every server session of the nodes is a
    // pool connection.
    let listeners: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'c3-listener%' \
             OR query ILIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listeners, 0);
    // And the writes announced without NOTIFY.
    let notify_queue: f64 = sql
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notify_queue, 0.0);
    let status = relay.status();
    assert!(status.leader && status.published >= 3, "{status:?}");
    wait_until(
        "the slot is acknowledged past the writes",
        DELIVERY,
        || async { relay.status().acked_lsn >= status.published_lsn },
    )
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_slot_dropped_under_the_relay_is_recreated_in_a_new_epoch_and_every_node_purges() {
    let cluster = Cluster::start_logical("relay_slot");
    let nats = NatsServer::start();
    let relay = relay(&cluster, &nats, "relay-a");
    streaming(&relay).await;
    // Heartbeats so slow that only the new epoch can make the nodes purge.
    let slow = (Duration::from_secs(60), Duration::from_secs(60));
    let (a, b) = (
        node(&cluster, &nats, slow).await,
        node(&cluster, &nats, slow).await,
    );
    listening(&[&a, &b], &[&relay]).await;
    a.set("k", &"old".to_owned()).await.unwrap();
    for n in [&a, &b] {
        assert_eq!(*n.get::<String>("k").await.unwrap().unwrap(), "old");
        assert!(n.is_cached_locally("k"));
    }
    let first = relay.status();
    assert_eq!((first.epochs, first.slots_created), (1, 1), "{first:?}");

    // Drop the slot from under the relay (its walsender first), and write
    // while no slot exists: that write's message is never decoded.
    let sql = connect(&cluster.url()).await;
    wait_until("the slot is dropped", DELIVERY, || async {
        // Waits (up to 1 s) for the walsender to exit, so the drop below
        // does not find the slot still active.
        let _ = sql
            .execute(
                "SELECT pg_terminate_backend(active_pid, 1000) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&SLOT],
            )
            .await;
        sql.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .is_ok_and(|n| n == 1)
    })
    .await;
    sql.execute(
        "UPDATE public.cache_data SET value = convert_to('\"new\"', 'UTF8') WHERE key = 'k'",
        &[],
    )
    .await
    .unwrap();
    sql.execute(
        "SELECT public.cache_data_announce('cache_invalidate', 'k')",
        &[],
    )
    .await
    .unwrap();

    wait_until(
        "the relay recreated the slot in a new epoch",
        DELIVERY * 3,
        || async {
            let s = relay.status();
            s.slots_created == 2 && s.epochs >= 2 && s.epoch.is_some() && s.epoch != first.epoch
        },
    )
    .await;
    // The next message of the new epoch (here a write elsewhere) tells every
    // node; each purges, and neither serves "old" again.
    a.set("other", &1u32).await.unwrap();
    for n in [&a, &b] {
        wait_until("the node dropped its copy of k", DELIVERY, || async {
            !n.is_cached_locally("k")
        })
        .await;
        assert_eq!(*n.get::<String>("k").await.unwrap().unwrap(), "new");
        assert!(n.stats().relay_gaps >= 1, "{:?}", n.stats());
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_standby_relay_takes_over_when_the_leader_dies() {
    let cluster = Cluster::start_logical("relay_takeover");
    let nats = NatsServer::start();
    let first = relay(&cluster, &nats, "relay-a");
    streaming(&first).await;
    let second = relay(&cluster, &nats, "relay-b");
    let (a, b) = (
        node(&cluster, &nats, QUICK).await,
        node(&cluster, &nats, QUICK).await,
    );
    listening(&[&a, &b], &[&first, &second]).await;
    assert!(!second.status().leader, "only one leader per slot");

    // Killed, as a process would be: no goodbye to PostgreSQL or NATS.
    first.abort();
    wait_until("relay-b leads and streams", DELIVERY * 10, || async {
        second.status().epoch.is_some()
    })
    .await;
    listening(&[&a, &b], &[&second]).await;
    a.set("k", &"v1".to_owned()).await.unwrap();
    assert_eq!(*b.get::<String>("k").await.unwrap().unwrap(), "v1");
    a.set("k", &"v2".to_owned()).await.unwrap();
    wait_until("B drops v1 through the new leader", DELIVERY, || async {
        !b.is_cached_locally("k")
    })
    .await;
    assert_eq!(*b.get::<String>("k").await.unwrap().unwrap(), "v2");
    second.shutdown().await;
}

#[tokio::test]
async fn nodes_stop_trusting_l1_while_nats_is_down_and_resume_after() {
    let cluster = Cluster::start_logical("relay_nats");
    let mut nats = NatsServer::start();
    let relay = relay(&cluster, &nats, "relay-a");
    streaming(&relay).await;
    let b = node(&cluster, &nats, QUICK).await;
    listening(&[&b], &[&relay]).await;
    b.set("k", &"v1".to_owned()).await.unwrap();
    assert!(b.get::<String>("k").await.unwrap().is_some());
    assert!(b.is_cached_locally("k"));

    nats.kill();
    wait_until("B bypasses L1", DELIVERY * 3, || async {
        b.listener_state() != ListenerState::Listening && !b.is_cached_locally("k")
    })
    .await;
    // A write while NATS is down is never heard; L1 must not come back
    // with the old value.
    let sql = connect(&cluster.url()).await;
    sql.execute(
        "SELECT public.cache_data_invalidate('cache_invalidate', ARRAY['k'])",
        &[],
    )
    .await
    .unwrap();
    nats.start_again();
    listening(&[&b], &[&relay]).await;
    assert!(b.get::<String>("k").await.unwrap().is_none());
    relay.shutdown().await;
}

#[tokio::test]
async fn a_table_keeps_its_transport() {
    let cluster = Cluster::start_logical("relay_mismatch");
    let nats = NatsServer::start();
    let relay_node = node(&cluster, &nats, QUICK).await;
    drop(relay_node);
    let Err(err) = C3::builder().postgres(&cluster.url()).build().await else {
        panic!("a LISTEN node on a relay table is refused");
    };
    assert!(
        err.to_string()
            .contains("announces writes through the relay"),
        "{err}"
    );
}

/// A real failover: the primary stops, an asynchronous standby that missed
/// the last commit is promoted, and the relay and the nodes — behind one
/// address, as clients behind a DNS name or a pooler see it — reach the new
/// primary. PostgreSQL 15 keeps no slot on a standby: the relay creates it
/// there, in a new epoch, and every node purges, so the write the promoted
/// server never had is not served from L1 (no invalidation for it will
/// ever come).
#[tokio::test]
async fn after_a_promotion_the_relay_recreates_its_slot_and_no_node_serves_the_lost_write() {
    let primary = Cluster::start_logical("relay_promote_primary");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let replication = FaultProxy::start(addr(primary.port())).await;
    let db = FaultProxy::start(addr(primary.port())).await;
    let url = db.url(&primary.url());
    let nats = NatsServer::start();
    let relay = relay_at(&url, &nats, "relay-a");
    streaming(&relay).await;
    // Heartbeats so slow that only the new epoch can make the nodes purge.
    let slow = (Duration::from_secs(60), Duration::from_secs(60));
    let (a, b) = (
        node_at(&url, &nats, slow).await,
        node_at(&url, &nats, slow).await,
    );
    listening(&[&a, &b], &[&relay]).await;
    a.set("k", &"kept".to_owned()).await.unwrap();

    // pg_basebackup goes through the proxy, which runs on this runtime.
    let port = replication.port;
    let standby =
        tokio::task::spawn_blocking(move || Cluster::standby("relay_promote_standby", port))
            .await
            .unwrap();
    let probe = connect(&primary.url()).await;
    let standby_sql = connect(&standby.url()).await;
    support::standby_caught_up(&probe, &standby_sql).await;

    // Replication stops; a write the standby never gets, relayed to B,
    // which keeps it.
    replication.drop_all();
    a.set("k", &"lost".to_owned()).await.unwrap();
    wait_until("B hears the write", DELIVERY, || async {
        !b.is_cached_locally("k")
    })
    .await;
    assert_eq!(*b.get::<String>("k").await.unwrap().unwrap(), "lost");
    assert!(b.is_cached_locally("k"));
    let first = relay.status();
    let gaps = b.stats().relay_gaps;

    primary.stop_immediately();
    standby.promote();
    db.drop_all();
    db.set_upstream(addr(standby.port()));
    db.forward();
    wait_until(
        "the relay created its slot on the promoted server, in a new epoch",
        DELIVERY * 3,
        || async {
            let s = relay.status();
            s.slots_created == first.slots_created + 1
                && s.epoch.is_some()
                && s.epoch != first.epoch
        },
    )
    .await;
    // The next message of the new epoch (a write elsewhere, once A's pool
    // reaches the new primary) tells every node.
    wait_until("A writes on the promoted server", DELIVERY, || async {
        a.set("other", &1u32).await.is_ok()
    })
    .await;
    wait_until("B dropped its copy of the lost write", DELIVERY, || async {
        !b.is_cached_locally("k")
    })
    .await;
    assert!(b.stats().relay_gaps > gaps, "{:?}", b.stats());
    assert_eq!(
        *b.get::<String>("k").await.unwrap().unwrap(),
        "kept",
        "B serves what the promoted server holds, not the write it lost"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn the_slot_is_not_acknowledged_past_a_commit_made_while_nats_is_down() {
    let cluster = Cluster::start_logical("relay_ack");
    let mut nats = NatsServer::start();
    let relay = relay(&cluster, &nats, "relay-a");
    streaming(&relay).await;
    // A relay-mode node creates the table and its announce function.
    let a = node(&cluster, &nats, QUICK).await;
    listening(&[&a], &[&relay]).await;
    let sql = connect(&cluster.url()).await;
    let confirmed = || async {
        let row = sql
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let wal = || async {
        let row = sql
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    nats.kill();
    // A write while NATS is down: decoded, never confirmed by NATS.
    sql.execute(
        "SELECT public.cache_data_announce('cache_invalidate', 'k')",
        &[],
    )
    .await
    .unwrap();
    let written = wal().await;
    // Forty acknowledgement intervals: the slot must not move past it.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert!(
            confirmed().await < written,
            "the slot was acknowledged past a commit NATS never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The slot's lag in time keeps growing while nothing is acknowledged,
    // however little was written.
    wait_until(
        "the slot's lag in time passes 2 s while NATS is down",
        Duration::from_secs(10),
        || async { relay.status().slot_lag_millis.is_some_and(|ms| ms >= 2_000) },
    )
    .await;
    nats.start_again();
    wait_until(
        "the slot is acknowledged past the write",
        DELIVERY,
        || async { confirmed().await >= written },
    )
    .await;
    wait_until(
        "the slot's lag in time falls back once acknowledged",
        Duration::from_secs(10),
        || async { relay.status().slot_lag_millis.is_some_and(|ms| ms < 2_000) },
    )
    .await;
    relay.shutdown().await;
}

/// PROTOCOL.md §6.3 rule 4: a commit is relayed only once it is visible.
/// A synchronous standby that never answers holds a commit exactly at the
/// racing moment: its commit record is flushed (so logical decoding
/// delivers it to the relay) but the transaction is not yet visible to
/// other sessions. A node told of it then would read the old row from L2
/// and keep it in L1 with nothing left to evict it.
#[tokio::test]
async fn a_commit_is_relayed_only_once_it_is_visible() {
    relayed_only_once_visible(Cluster::start_logical("relay_visible")).await;
}

/// The same, on a cluster whose transaction ids are past the first 2³²
/// (epoch 1 of the 64-bit ids): decoding reports 32-bit ids, and the relay
/// widens them against the snapshot's `xmax`. The held commit's id is above
/// `xmax` — the probe's held commit, older and also not visible, keeps
/// `xmax` at or below the probe's id — and must not be widened into the
/// previous epoch, where every id reads as visible.
#[tokio::test]
async fn a_commit_is_relayed_only_once_it_is_visible_past_the_first_xid_epoch() {
    let cluster = Cluster::start_logical_at_xid_epoch("relay_visible_epoch", 1);
    let epoch: i64 = connect(&cluster.url())
        .await
        .query_one("SELECT (pg_current_xact_id()::text::bigint >> 32)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(epoch, 1, "transaction ids in epoch 1");
    relayed_only_once_visible(cluster).await;
}

/// A foreign invalidation of `k` whose commit is flushed (so decoded) but
/// held before it becomes visible: the relay must not publish it until it
/// is, or a node that re-reads `k` keeps the old row.
async fn relayed_only_once_visible(cluster: Cluster) {
    let nats = NatsServer::start();
    let relay = relay(&cluster, &nats, "relay-a");
    streaming(&relay).await;
    // A long heartbeat timeout: the node's own heartbeats wait on the
    // standby too, and a purge while they do would hide the stale copy.
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = std::sync::Arc::clone(&heard);
    let b = C3::builder()
        .postgres(&cluster.url())
        .relay(Nats::new(nats.url()))
        .heartbeat(Duration::from_millis(200), Duration::from_secs(30))
        .on_applied(move |n| {
            if n.invalidated
                .iter()
                .chain(n.written.iter().map(|(_, k)| k))
                .any(|k| k == "k")
            {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .build()
        .await
        .expect("build a relay-mode node");
    listening(&[&b], &[&relay]).await;
    // B writes k (and keeps it in L1); a node hears no observer call for
    // its own messages.
    b.set("k", &"v1".to_owned()).await.unwrap();
    assert!(b.is_cached_locally("k"));
    let before = heard.load(std::sync::atomic::Ordering::SeqCst);

    // From now on every commit waits for a standby that does not exist,
    // after its commit record is flushed and before it becomes visible.
    let admin = connect(&cluster.url()).await;
    admin
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'c3_nobody'")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    // The setting reaches the committing backends through the checkpointer;
    // a commit that waits in SyncRep proves it has.
    let probe = connect(&cluster.url()).await;
    let probe_pid: i32 = probe
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let waiting = |pid: i32| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
                    &[&pid],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    };
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::clone(&released);
    let probe_task = tokio::spawn(async move {
        // Each attempt writes (a temporary table) and commits; the first
        // one that waits is held until the standby setting is reset.
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            probe
                .batch_execute(
                    "CREATE TEMP TABLE IF NOT EXISTS c3_probe(i int); INSERT INTO c3_probe VALUES (1)",
                )
                .await
                .unwrap();
        }
    });
    wait_until("a commit waits for the standby", DELIVERY, || {
        waiting(probe_pid)
    })
    .await;

    // The held write: a foreign invalidation of k.
    let writer = connect(&cluster.url()).await;
    let writer_pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let held = tokio::spawn(async move {
        writer
            .execute(
                "SELECT public.cache_data_invalidate('cache_invalidate', ARRAY['k'])",
                &[],
            )
            .await
            .unwrap();
    });
    wait_until(
        "the invalidation's commit is flushed and held",
        DELIVERY,
        || waiting(writer_pid),
    )
    .await;
    // The relay's walsender has sent it: the relay has decoded the commit.
    let flushed: i64 = admin
        .query_one(
            "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_until("the relay receives the held commit", DELIVERY, || async {
        let sent: Option<i64> = admin
            .query_one(
                "SELECT max((sent_lsn - '0/0'::pg_lsn)::bigint) FROM pg_stat_replication",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        sent.is_some_and(|s| s >= flushed)
    })
    .await;
    // Give a relay that does not wait every chance to publish it, and B to
    // act on it as a node would: read k again, from L2 while the delete is
    // invisible.
    let chance = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < chance
        && heard.load(std::sync::atomic::Ordering::SeqCst) == before
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if heard.load(std::sync::atomic::Ordering::SeqCst) > before {
        let _ = b.get::<String>("k").await.unwrap();
    }

    released.store(true, std::sync::atomic::Ordering::SeqCst);
    admin
        .batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::timeout(DELIVERY, held)
        .await
        .expect("the held commit completes once released")
        .unwrap();
    wait_until("B hears the invalidation", DELIVERY, || async {
        heard.load(std::sync::atomic::Ordering::SeqCst) > before
    })
    .await;
    assert_eq!(
        b.get::<String>("k").await.unwrap(),
        None,
        "B keeps the value read while the invalidation was committed but not yet visible"
    );
    tokio::time::timeout(DELIVERY, probe_task)
        .await
        .expect("the probe's commit completes once released")
        .unwrap();
    relay.shutdown().await;
}

/// A committed c3 message the relay cannot publish as it is — one holding a
/// NUL (the `bytea` form of `pg_logical_emit_message`: a node would split
/// it and misread the rest), or one larger than NATS takes (the publish
/// would fail and the relay restart on the same commit, forever) — goes out
/// as "drop all of L1": the invalidation it carried is not lost, and the
/// relay streams on in the same epoch.
#[tokio::test]
async fn a_message_that_cannot_travel_as_it_is_makes_every_node_drop_l1() {
    let cluster = Cluster::start_logical("relay_undeliverable");
    let nats = NatsServer::start();
    let relay = relay(&cluster, &nats, "relay-a");
    streaming(&relay).await;
    let (a, b) = (
        node(&cluster, &nats, QUICK).await,
        node(&cluster, &nats, QUICK).await,
    );
    listening(&[&a, &b], &[&relay]).await;
    let epoch = relay.status().epoch;
    let sql = connect(&cluster.url()).await;
    let cached = |key: &'static str| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            a.set(key, &1u32).await.unwrap();
            for n in [&a, &b] {
                assert_eq!(*n.get::<u32>(key).await.unwrap().unwrap(), 1);
                assert!(n.is_cached_locally(key));
            }
        }
    };
    let far = i64::MAX.to_string();

    // Invalidates "x", then (after the NUL) "y": split at the NUL, a node
    // would read the second half as one bare key named "\n<far> y".
    cached("x").await;
    cached("y").await;
    let mut with_nul = format!("c3|1|foreign|1|k\n{far} x").into_bytes();
    with_nul.push(0);
    with_nul.extend_from_slice(format!("\n{far} y").as_bytes());
    sql.execute(
        "SELECT pg_logical_emit_message(true, 'c3:cache_invalidate', $1::bytea)",
        &[&with_nul],
    )
    .await
    .unwrap();
    wait_until("both nodes drop y", DELIVERY, || async {
        !a.is_cached_locally("y") && !b.is_cached_locally("y")
    })
    .await;

    // 2 MiB of keys, the last one "z": over NATS' default max_payload.
    cached("z").await;
    let mut big = String::from("c3|1|foreign|1|k");
    for i in 0..100_000 {
        big.push_str(&format!("\n{far} pad{i}"));
    }
    big.push_str(&format!("\n{far} z"));
    assert!(big.len() > 2 << 20);
    sql.execute(
        "SELECT pg_logical_emit_message(true, 'c3:cache_invalidate', $1::text)",
        &[&big],
    )
    .await
    .unwrap();
    wait_until("both nodes drop z", DELIVERY, || async {
        !a.is_cached_locally("z") && !b.is_cached_locally("z")
    })
    .await;

    // The relay streams on in its epoch: a later write arrives as usual.
    cached("w").await;
    a.set("w", &2u32).await.unwrap();
    wait_until("B drops w", DELIVERY, || async {
        !b.is_cached_locally("w")
    })
    .await;
    let status = relay.status();
    assert_eq!((&status.epoch, status.epochs), (&epoch, 1), "{status:?}");

    // Writers through the announce function are refused over the limit,
    // as NOTIFY refuses them.
    let refused = sql
        .execute(
            "SELECT public.cache_data_announce('cache_invalidate', repeat('k', 8000))",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE),
        "{refused}"
    );
    relay.shutdown().await;
}

/// Slot names are cluster-wide, advisory locks per database: a relay of
/// another database on the same server that finds the slot name taken
/// refuses it with a clear error — it used to drop the slot (when no
/// walsender held it) and create its own, and the two relays would take
/// the name from each other forever, every time in a new epoch.
#[tokio::test]
async fn a_relay_of_another_database_never_drops_the_slot() {
    let cluster = Cluster::start_logical("relay_two_databases");
    let nats = NatsServer::start();
    let first = relay(&cluster, &nats, "relay-a");
    streaming(&first).await;
    first.shutdown().await;
    let admin = connect(&cluster.url()).await;
    admin.batch_execute("CREATE DATABASE other").await.unwrap();
    wait_until("the slot is free", DELIVERY, || async {
        admin
            .query_one(
                "SELECT active_pid IS NULL FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .is_ok_and(|r| r.get::<_, bool>(0))
    })
    .await;

    let other_url = format!("postgres://postgres@127.0.0.1:{}/other", cluster.port());
    let second = relay_at(&other_url, &nats, "relay-b");
    wait_until(
        "the other database's relay refuses the slot",
        DELIVERY,
        || async {
            second
                .status()
                .last_error
                .is_some_and(|e| e.contains("taken"))
        },
    )
    .await;
    let owner: String = admin
        .query_one(
            "SELECT database FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "postgres", "{:?}", second.status());
    assert_eq!(second.status().slots_created, 0, "{:?}", second.status());
    second.shutdown().await;
}

/// A confirmation that never comes back — here the relay's NATS user may
/// subscribe to its inbox but not publish to it: the server answers the
/// token with an error and keeps the connection — would hold every
/// acknowledgement back while the slot's WAL grows unseen. The stream gives
/// up after `connect_timeout`, says why, and starts over.
#[tokio::test]
async fn a_confirmation_that_never_returns_ends_the_stream_with_a_reason() {
    let cluster = Cluster::start_logical("relay_unconfirmed");
    let nats = NatsServer::start_with_config(
        "authorization {\n  users = [\n    { user: relay, password: secret, permissions: \
         { publish: { allow: [\"c3.>\"] }, subscribe: { allow: [\"_INBOX.>\"] } } }\n  ]\n}\n",
    );
    let relay = Relay::builder()
        .postgres(cluster.url())
        .nats(Nats::new(nats.url_as("relay", "secret")))
        .name("relay-a")
        .connect_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .expect("relay settings")
        .spawn();
    streaming(&relay).await;
    // Something to publish, so something to confirm (no node has migrated
    // a table here: emitted directly).
    let sql = connect(&cluster.url()).await;
    sql.execute(
        "SELECT pg_logical_emit_message(true, 'c3:cache_invalidate', 'k')",
        &[],
    )
    .await
    .unwrap();
    wait_until(
        "the stream gives up on the confirmation",
        DELIVERY,
        || async {
            relay
                .status()
                .last_error
                .is_some_and(|e| e.contains("did not confirm"))
        },
    )
    .await;
    // And the unconfirmed commit was never acknowledged.
    let status = relay.status();
    assert!(status.acked_lsn < status.published_lsn, "{status:?}");
    relay.shutdown().await;
}

/// A NATS server whose `max_payload` is smaller than the relay's own bound
/// for a message: the relay sizes its messages from what the server
/// announced (headers included) — a commit's payloads that would not fit
/// one message go out in several — instead of having every publish of that
/// commit refused and restarting on it forever.
#[tokio::test]
async fn messages_fit_a_servers_smaller_max_payload() {
    let cluster = Cluster::start_logical("relay_max_payload");
    let nats = NatsServer::start_with_config("max_payload: 16384\n");
    let relay = relay(&cluster, &nats, "relay-a");
    streaming(&relay).await;
    let a = node(&cluster, &nats, QUICK).await;
    listening(&[&a], &[&relay]).await;
    let epoch = relay.status().epoch;
    for key in ["x", "y", "z"] {
        a.set(key, &1u32).await.unwrap();
        assert!(a.is_cached_locally(key));
    }
    // One transaction, three payloads over 6 KiB: more than 16 KiB together.
    let far = i64::MAX.to_string();
    let payload = |key: &str| {
        let mut p = format!("c3|1|foreign|1|k\n{far} {key}");
        for i in 0..270 {
            p.push_str(&format!("\n{far} pad{i}"));
        }
        p
    };
    let (x, y, z) = (payload("x"), payload("y"), payload("z"));
    assert!(x.len() > 6000 && x.len() < 8000, "{}", x.len());
    let sql = connect(&cluster.url()).await;
    sql.execute(
        "SELECT pg_logical_emit_message(true, 'c3:cache_invalidate', $1::text), \
                pg_logical_emit_message(true, 'c3:cache_invalidate', $2::text), \
                pg_logical_emit_message(true, 'c3:cache_invalidate', $3::text)",
        &[&x, &y, &z],
    )
    .await
    .unwrap();
    wait_until("the node drops x, y and z", DELIVERY, || async {
        ["x", "y", "z"].iter().all(|k| !a.is_cached_locally(k))
    })
    .await;
    let status = relay.status();
    assert_eq!((&status.epoch, status.epochs), (&epoch, 1), "{status:?}");
    relay.shutdown().await;
}
