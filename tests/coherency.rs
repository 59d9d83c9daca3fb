//! Multi-node coherency on a real PostgreSQL: several `C3` nodes in one
//! process, each with its own pool and LISTEN connection.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use c3::ListenerState;
use c3::core::{ErrorKind, ManualClock};
use support::{DELIVERY, TestDb, wait_until};
use tokio::sync::Notify;

#[tokio::test]
async fn set_on_a_is_read_on_b_and_a_newer_write_replaces_b_copy() {
    let db = TestDb::new("set_get").await;
    let nodes = db.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    a.set("user:1", &"v1".to_string()).await.unwrap();
    assert_eq!(*b.get::<String>("user:1").await.unwrap().unwrap(), "v1");
    assert!(b.is_cached_locally("user:1"), "B filled its L1 from L2");

    a.set("user:1", &"v2".to_string()).await.unwrap();
    // The writer reads its own write from L1, even after its own notification.
    let before = a.stats().l1_hits;
    assert_eq!(*a.get::<String>("user:1").await.unwrap().unwrap(), "v2");
    assert_eq!(
        a.stats().l1_hits,
        before + 1,
        "A's read after its write is an L1 hit"
    );

    wait_until("B drops v1 after A's notification", DELIVERY, || async {
        !b.is_cached_locally("user:1")
    })
    .await;
    assert_eq!(*b.get::<String>("user:1").await.unwrap().unwrap(), "v2");

    // Notifications arrive in commit order: once a later marker reached A, so
    // had A's own notification for v2, and A must still hold v2.
    let received = a.stats().invalidations_received;
    db.client
        .execute("SELECT pg_notify($1, 'marker')", &[&db.channel])
        .await
        .unwrap();
    wait_until("A receives the marker", DELIVERY, || async {
        a.stats().invalidations_received > received
    })
    .await;
    assert!(
        a.is_cached_locally("user:1"),
        "own notification did not evict own value"
    );
}

#[tokio::test]
async fn delete_and_get_many_set_many_across_nodes() {
    let db = TestDb::new("delete_many").await;
    let nodes = db.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.set_many(&[("k1", 1u32), ("k2", 2), ("k3", 3), ("k2", 22)])
        .await
        .unwrap();
    let got = b
        .get_many::<u32>(&["k1", "k2", "nope", "k3"])
        .await
        .unwrap();
    let got: Vec<Option<u32>> = got.into_iter().map(|v| v.map(|v| *v)).collect();
    assert_eq!(got, vec![Some(1), Some(22), None, Some(3)]);
    assert!(b.is_cached_locally("k2"));

    a.delete("k2").await.unwrap();
    assert!(
        a.get::<u32>("k2").await.unwrap().is_none(),
        "read-your-delete on A"
    );
    wait_until("B drops deleted k2", DELIVERY, || async {
        !b.is_cached_locally("k2")
    })
    .await;
    assert!(b.get::<u32>("k2").await.unwrap().is_none());

    // Re-inserting after a delete gets a higher version than before.
    a.set("k2", &5u32).await.unwrap();
    wait_until("B sees re-inserted k2", DELIVERY, || async {
        b.get::<u32>("k2").await.unwrap().as_deref() == Some(&5)
    })
    .await;

    a.invalidate("k1").await.unwrap();
    assert!(!a.is_cached_locally("k1"));
    wait_until("B drops invalidated k1", DELIVERY, || async {
        !b.is_cached_locally("k1")
    })
    .await;
    assert_eq!(
        b.get::<u32>("k1").await.unwrap().as_deref(),
        Some(&1),
        "L2 untouched"
    );

    b.clear().await.unwrap();
    wait_until("A cleared", DELIVERY, || async {
        a.get::<u32>("k3").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn bare_pg_notify_from_a_plain_client_invalidates_every_node() {
    let db = TestDb::new("bare_notify").await;
    let nodes = db.nodes(3).await;
    for n in &nodes {
        n.set("user:42", &"old".to_string()).await.unwrap();
        assert!(n.get::<String>("user:42").await.unwrap().is_some());
    }
    // A non-Rust writer: plain SQL update of the row, then a bare notify.
    db.client
        .execute(
            &format!(
                "UPDATE {} SET value = convert_to($1, 'UTF8') WHERE key = 'user:42'",
                db.table()
            ),
            &[&"\"new\""],
        )
        .await
        .unwrap();
    db.client
        .execute("SELECT pg_notify($1, 'user:42')", &[&db.channel])
        .await
        .unwrap();
    for n in &nodes {
        wait_until("node drops user:42 after bare notify", DELIVERY, || async {
            !n.is_cached_locally("user:42")
        })
        .await;
        assert_eq!(*n.get::<String>("user:42").await.unwrap().unwrap(), "new");
    }
}

#[tokio::test]
async fn a_row_inserted_by_a_foreign_client_is_read_correctly() {
    let db = TestDb::new("foreign_row").await;
    let a = db.node().await;
    db.client
        .execute(
            &format!(
                "INSERT INTO {} (key, value, expires_at) \
                 VALUES ('profile:7', convert_to('{{\"name\":\"Grace\",\"langs\":[\"COBOL\"]}}', 'UTF8'), now() + interval '1 hour')",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap();
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Profile {
        name: String,
        langs: Vec<String>,
    }
    let p = a.get::<Profile>("profile:7").await.unwrap().unwrap();
    assert_eq!(p.name, "Grace");
    assert_eq!(p.langs, vec!["COBOL"]);
    // A row expired by the foreign writer is not served.
    db.client
        .execute(
            &format!(
                "INSERT INTO {} (key, value, expires_at) VALUES ('gone', convert_to('1', 'UTF8'), now() - interval '1 second')",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(a.get::<u32>("gone").await.unwrap().is_none());
    // A row whose bytes are not a `T` is a typed error, not a panic.
    let err = a.get::<Vec<u32>>("profile:7").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
}

#[tokio::test]
async fn versions_never_go_backwards_for_a_key() {
    let db = TestDb::new("versions").await;
    let a = db.node().await;
    let version = |key: &'static str| db.row_version(key);
    a.set("v", &1).await.unwrap();
    let v1 = version("v").await.unwrap();
    a.set("v", &2).await.unwrap();
    let v2 = version("v").await.unwrap();
    a.delete("v").await.unwrap();
    assert!(version("v").await.is_none());
    a.set("v", &3).await.unwrap();
    let v3 = version("v").await.unwrap();
    // Even a foreign writer that sets version by hand cannot move it back.
    db.client
        .execute(
            &format!("UPDATE {} SET version = 1 WHERE key = 'v'", db.table()),
            &[],
        )
        .await
        .unwrap();
    let v4 = version("v").await.unwrap();
    assert!(v1 < v2 && v2 < v3 && v3 < v4, "{v1} {v2} {v3} {v4}");
}

#[tokio::test]
async fn listener_loss_purges_and_bypasses_l1_then_coherency_resumes() {
    let db = TestDb::new("fail_safe").await;
    // A slow first reconnect keeps the outage long enough to look at it.
    let a = db
        .builder()
        .node_id("fail-safe-a")
        .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let b = db.node().await;
    a.set("x", &"v1".to_string()).await.unwrap();
    assert!(a.is_cached_locally("x"));
    let purges_before = a.stats().purges;

    let mut state = a.watch_listener();
    assert_eq!(db.kill_listener(&a).await, 1, "found A's listener backend");
    tokio::time::timeout(
        DELIVERY,
        state.wait_for(|s| matches!(s, ListenerState::Reconnecting { .. })),
    )
    .await
    .expect("A notices the lost connection")
    .unwrap();
    assert!(a.stats().purges > purges_before, "L1 purged on loss");
    assert!(!a.is_cached_locally("x"), "L1 empty while disconnected");

    // A write during the outage: A cannot hear its notification.
    b.set("x", &"v2".to_string()).await.unwrap();
    let l2_before = a.stats().l2_hits;
    assert_eq!(
        *a.get::<String>("x").await.unwrap().unwrap(),
        "v2",
        "bypass reads L2"
    );
    assert_eq!(a.stats().l2_hits, l2_before + 1);
    assert!(
        !a.is_cached_locally("x"),
        "fills are not kept while disconnected"
    );

    tokio::time::timeout(DELIVERY, state.wait_for(|s| *s == ListenerState::Listening))
        .await
        .expect("A reconnects")
        .unwrap();
    assert_eq!(a.stats().reconnects, 1);
    assert_eq!(*a.get::<String>("x").await.unwrap().unwrap(), "v2");
    assert!(a.is_cached_locally("x"), "L1 back in use after re-LISTEN");

    // Coherency resumed: B's next write reaches A.
    b.set("x", &"v3".to_string()).await.unwrap();
    wait_until("A hears B again", DELIVERY, || async {
        !a.is_cached_locally("x")
    })
    .await;
    assert_eq!(*a.get::<String>("x").await.unwrap().unwrap(), "v3");
}

/// The stale-fill race, made deterministic: A reads v1 from L2, and before it
/// can fill L1 an invalidation for the key is applied. The fill must be dropped.
#[tokio::test]
async fn an_invalidation_during_an_l2_read_prevents_the_fill() {
    for bare in [false, true] {
        let db = TestDb::new("stale_fill").await;
        let armed = Arc::new(AtomicBool::new(false));
        let reached = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let hook: c3::core::FillHook = {
            let (armed, reached, release) = (armed.clone(), reached.clone(), release.clone());
            Arc::new(move |key: &str| {
                let hold = key == "race" && armed.swap(false, Ordering::SeqCst);
                let (reached, release) = (reached.clone(), release.clone());
                Box::pin(async move {
                    if hold {
                        reached.notify_one();
                        release.notified().await;
                    }
                })
            })
        };
        let a = db.builder().fill_hook(hook).build().await.unwrap();
        let b = db.node().await;
        b.set("race", &1u32).await.unwrap();

        armed.store(true, Ordering::SeqCst);
        let reader = {
            let a = a.clone();
            tokio::spawn(async move { a.get::<u32>("race").await })
        };
        reached.notified().await; // A has read v1 from L2 and not filled yet
        let received = a.stats().invalidations_received;
        if bare {
            db.client
                .execute("SELECT pg_notify($1, 'race')", &[&db.channel])
                .await
                .unwrap();
        } else {
            b.set("race", &2u32).await.unwrap();
        }
        wait_until("A applies the invalidation", DELIVERY, || async {
            a.stats().invalidations_received > received
        })
        .await;
        release.notify_one();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&1),
            "the read itself began before the write"
        );
        assert!(
            !a.is_cached_locally("race"),
            "stale fill must be dropped (bare={bare})"
        );
        assert!(a.stats().fills_dropped >= 1);
        let expect = if bare { 1 } else { 2 };
        assert_eq!(
            a.get::<u32>("race").await.unwrap().as_deref(),
            Some(&expect)
        );
    }
}

#[tokio::test]
async fn ttl_expires_in_l1_and_l2() {
    let db = TestDb::new("ttl").await;
    let clock = ManualClock::new();
    let a = db.builder().clock(clock.clone()).build().await.unwrap();
    let b = db.builder().clock(clock.clone()).build().await.unwrap();
    a.set_with_ttl("t", &"short".to_string(), Some(Duration::from_secs(10)))
        .await
        .unwrap();
    a.set_with_ttl("forever", &"long".to_string(), None)
        .await
        .unwrap();
    assert!(b.get::<String>("t").await.unwrap().is_some());
    assert!(a.is_cached_locally("t") && b.is_cached_locally("t"));

    clock.advance(Duration::from_secs(9));
    assert!(a.is_cached_locally("t"), "still fresh at 9 s");
    clock.advance(Duration::from_secs(2));
    assert!(!a.is_cached_locally("t"), "L1 entry expired at 11 s");
    let l2_misses = a.stats().l2_misses;
    assert!(
        a.get::<String>("t").await.unwrap().is_none(),
        "L2 row expired too"
    );
    assert_eq!(a.stats().l2_misses, l2_misses + 1);
    assert!(b.get::<String>("t").await.unwrap().is_none());
    assert!(a.get::<String>("forever").await.unwrap().is_some());
}

#[tokio::test]
async fn a_rolled_back_transaction_sends_nothing_and_changes_no_l1() {
    let db = TestDb::new("rollback").await;
    let nodes = db.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.set("r", &"kept".to_string()).await.unwrap();
    b.get::<String>("r").await.unwrap();
    assert!(b.is_cached_locally("r"));

    // 1. A foreign transaction that notifies and then rolls back.
    db.client.batch_execute("BEGIN").await.unwrap();
    db.client
        .execute("SELECT pg_notify($1, 'r')", &[&db.channel])
        .await
        .unwrap();
    db.client.batch_execute("ROLLBACK").await.unwrap();

    // 2. c3's own write failing inside its transaction (a trigger rejects it).
    db.client
        .batch_execute(&format!(
            "CREATE FUNCTION \"{s}\".reject() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.key = 'r' THEN RAISE EXCEPTION 'rejected'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER reject AFTER UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION \"{s}\".reject();",
            s = db.schema,
            t = db.table()
        ))
        .await
        .unwrap();
    let err = a.set("r", &"lost".to_string()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend);
    assert_eq!(err.sqlstate(), Some("P0001"));

    // Notifications arrive in commit order, so once a later marker arrives,
    // anything the rolled-back transactions had sent would have arrived too.
    let received = b.stats().invalidations_received;
    db.client
        .execute("SELECT pg_notify($1, 'marker')", &[&db.channel])
        .await
        .unwrap();
    wait_until("B receives the marker", DELIVERY, || async {
        b.stats().invalidations_received > received
    })
    .await;
    assert_eq!(
        b.stats().invalidations_received,
        received + 1,
        "only the marker"
    );
    assert!(b.is_cached_locally("r"), "B's L1 unchanged");
    assert_eq!(*a.get::<String>("r").await.unwrap().unwrap(), "kept");
}

#[tokio::test]
async fn four_nodes_creating_the_schema_at_once() {
    let db = TestDb::new("concurrent_ddl").await;
    let fresh = format!("{}_x", db.schema.chars().take(50).collect::<String>());
    let build = || {
        db.builder()
            .schema(fresh.clone())
            .table("shared_cache")
            .build()
    };
    let (a, b, c, d) = tokio::join!(build(), build(), build(), build());
    let nodes = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    nodes[0].set("k", &1).await.unwrap();
    for n in &nodes {
        assert_eq!(n.get::<i32>("k").await.unwrap().as_deref(), Some(&1));
    }
    // And once more on an existing schema (idempotent migration).
    db.builder()
        .schema(fresh.clone())
        .table("shared_cache")
        .build()
        .await
        .unwrap();
    db.client
        .batch_execute(&format!("DROP SCHEMA \"{fresh}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn invalidating_a_tag_removes_every_tagged_entry_on_every_node() {
    let db = TestDb::new("tags").await;
    let nodes = db.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let ttl = Some(Duration::from_secs(60));
    a.set_tagged("post:1", &1, ttl, &["user:42", "feed"])
        .await
        .unwrap();
    a.set_tagged("post:2", &2, ttl, &["user:42"]).await.unwrap();
    a.set_tagged("post:3", &3, ttl, &["user:7"]).await.unwrap();
    a.set("plain", &4).await.unwrap();
    for k in ["post:1", "post:2", "post:3", "plain"] {
        assert!(b.get::<i32>(k).await.unwrap().is_some());
    }
    // Re-tagging replaces: post:1 no longer carries "feed".
    a.set_tagged("post:1", &11, ttl, &["user:42"])
        .await
        .unwrap();
    assert_eq!(b.invalidate_tag("feed").await.unwrap(), 0);

    assert_eq!(b.invalidate_tag("user:42").await.unwrap(), 2);
    assert!(
        !b.is_cached_locally("post:1"),
        "invalidating node drops at once"
    );
    for k in ["post:1", "post:2"] {
        wait_until("A drops tagged entries", DELIVERY, || async {
            !a.is_cached_locally(k)
        })
        .await;
        assert!(a.get::<i32>(k).await.unwrap().is_none(), "gone from L2");
    }
    assert!(a.is_cached_locally("post:3") && a.is_cached_locally("plain"));
    assert_eq!(a.invalidate_tag("user:42").await.unwrap(), 0, "idempotent");
    let err = a.invalidate_tag("").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
}

/// `SqlNames::invalidate_function` is how SQL outside c3 (an adapter's
/// transaction, a trigger, another language) invalidates: atomically with
/// the caller's own transaction.
#[tokio::test]
async fn the_sql_invalidate_function_commits_or_rolls_back_with_the_caller() {
    let db = TestDb::new("sql_invalidate").await;
    let (a, b) = (db.node().await, db.node().await);
    a.set_tagged("k1", &1u32, None, &["team"]).await.unwrap();
    a.set("k2", &2u32).await.unwrap();
    a.set("k3", &3u32).await.unwrap();
    for k in ["k1", "k2", "k3"] {
        b.get::<u32>(k).await.unwrap().unwrap();
        assert!(b.is_cached_locally(k));
    }
    let names = a.sql_names().clone();
    let sql = format!("SELECT {}($1, $2, $3)", names.invalidate_function);
    let count = format!("SELECT count(*) FROM {} WHERE key = ANY($1)", names.table);
    let keys = vec!["k1", "k2", "k3"];
    let rows = || async {
        db.client
            .query_one(&count, &[&keys])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut client = support::connect(&db.url).await;

    let tx = client.transaction().await.unwrap();
    tx.query_one(&sql, &[&names.channel, &vec!["k2"], &vec!["team"]])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(rows().await, 3, "a rollback deletes nothing");

    let received = b.stats().invalidations_received;
    let tx = client.transaction().await.unwrap();
    let v: Option<i64> = tx
        .query_one(&sql, &[&names.channel, &vec!["k2"], &vec!["team"]])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    assert!(v.is_some_and(|v| v > 0));
    assert_eq!(rows().await, 1, "k1 (by tag) and k2 (by key) deleted");
    support::received(&b, received).await;
    assert!(!b.is_cached_locally("k1") && !b.is_cached_locally("k2"));
    assert!(b.is_cached_locally("k3"), "other keys stay");
    assert!(b.get::<u32>("k2").await.unwrap().is_none());

    let none: Option<i64> = client
        .query_one(&sql, &[&names.channel, &vec!["nope"], &Vec::<&str>::new()])
        .await
        .unwrap()
        .get(0);
    assert!(none.is_some(), "a key without a row is still announced");
    let nothing: Option<i64> = client
        .query_one(
            &sql,
            &[&names.channel, &Vec::<&str>::new(), &vec!["no-tag"]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nothing, None, "nothing matched, nothing sent");

    // A key no node could parse purges every L1 instead of being lost.
    let purges = b.stats().purges;
    client
        .query_one(
            &sql,
            &[&names.channel, &vec!["bad\u{1}key"], &Vec::<&str>::new()],
        )
        .await
        .unwrap();
    wait_until("B purges its L1", DELIVERY, || async {
        b.stats().purges > purges
    })
    .await;
    assert!(!b.is_cached_locally("k3"));
}

#[tokio::test]
async fn the_applied_observer_sees_each_foreign_notification_with_its_lag() {
    use std::sync::Mutex;
    let db = TestDb::new("observer").await;
    type Seen = (Option<String>, Option<Duration>, Vec<String>);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let a = db.node().await;
    let b = db
        .builder()
        .on_applied(move |n| {
            let keys = n
                .written
                .iter()
                .map(|(_, k)| k.clone())
                .chain(n.invalidated.iter().cloned())
                .collect();
            sink.lock()
                .unwrap()
                .push((n.from.map(str::to_owned), n.lag, keys));
        })
        .build()
        .await
        .unwrap();
    a.set("k", &1u32).await.unwrap();
    b.set("own", &1u32).await.unwrap(); // B's own echo is not reported
    db.client
        .execute("SELECT pg_notify($1, 'bare')", &[&db.channel])
        .await
        .unwrap();
    wait_until("B applied both foreign messages", DELIVERY, || async {
        seen.lock().unwrap().len() >= 2
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0.as_deref(), Some(a.node_id()));
    assert!(seen[0].1.is_some_and(|lag| lag < DELIVERY), "{seen:?}");
    assert_eq!(seen[0].2, vec!["k".to_owned()]);
    assert_eq!(
        (seen[1].0.clone(), seen[1].1),
        (None, None),
        "a bare key has no sender"
    );
    assert_eq!(seen[1].2, vec!["bare".to_owned()]);
}

/// Concurrent writes on one node share transactions (one NOTIFY round per
/// batch), and every write still lands with its own value and version.
#[tokio::test]
async fn concurrent_writes_are_combined_and_each_lands() {
    let db = TestDb::new("combined").await;
    let (a, b) = (db.node().await, db.node().await);
    let before = b.stats().invalidations_received;
    let writes: Vec<_> = (0..64u32)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                a.set(&format!("c{i}"), &i).await.unwrap();
                a.set("same", &i).await.unwrap();
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    assert_eq!(a.stats().writes, 128);
    for i in 0..64u32 {
        assert_eq!(*b.get::<u32>(&format!("c{i}")).await.unwrap().unwrap(), i);
    }
    // Whichever write of "same" committed last is what both nodes read.
    let last = *a.get::<u32>("same").await.unwrap().unwrap();
    wait_until("B agrees on the last write", DELIVERY, || async {
        b.get::<u32>("same").await.unwrap().as_deref() == Some(&last)
    })
    .await;
    let stored: i64 = db
        .client
        .query_one(
            &format!(
                "SELECT convert_from(value, 'UTF8')::bigint FROM {} WHERE key = 'same'",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, i64::from(last));
    // Notifications arrive in commit order: once B has dropped a marker
    // invalidated last, every write's message has arrived too.
    a.set("marker", &0u32).await.unwrap();
    wait_until("B caches the marker", DELIVERY, || async {
        b.get::<u32>("marker").await.unwrap();
        b.is_cached_locally("marker")
    })
    .await;
    a.invalidate("marker").await.unwrap();
    wait_until("B drops the marker", DELIVERY, || async {
        !b.is_cached_locally("marker")
    })
    .await;
    let messages = b.stats().invalidations_received - before - 2;
    assert!(
        messages < 128,
        "writes shared notifications: {messages} messages for 128 writes"
    );
}

/// A batch whose notifications fill many payloads (1000 keys of 100 bytes)
/// still reaches every key on every node.
#[tokio::test]
async fn a_large_batch_invalidates_every_key_on_other_nodes() {
    let db = TestDb::new("large_batch").await;
    let (a, b) = (db.node().await, db.node().await);
    let keys: Vec<String> = (0..1000).map(|i| format!("{i:0>100}")).collect();
    let batch = |v: u32| keys.iter().map(|k| (k.as_str(), v)).collect::<Vec<_>>();
    a.set_many(&batch(1)).await.unwrap();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    wait_until("B caches the whole batch", DELIVERY, || async {
        b.get_many::<u32>(&refs).await.unwrap();
        refs.iter().all(|k| b.is_cached_locally(k))
    })
    .await;
    a.set_many(&batch(2)).await.unwrap();
    wait_until("B drops every key", DELIVERY, || async {
        refs.iter().all(|k| !b.is_cached_locally(k))
    })
    .await;
    let got = b.get_many::<u32>(&refs).await.unwrap();
    assert!(got.iter().all(|v| v.as_deref() == Some(&2)));
    assert_eq!(b.stats().malformed_notifications, 0);
}

/// L1 policies: a short L1 TTL bounds how long a copy lives even without
/// notifications; L2 keeps serving the entry. Settings also come from `C3_*`
/// variables.
#[tokio::test]
async fn l1_ttl_and_idle_limits_bound_local_copies() {
    let db = TestDb::new("l1_policies").await;
    let vars = |name: &str| match name {
        "C3_L1_TTL" => Some("300ms".to_owned()),
        "C3_L1_POLICY" => Some("lru".to_owned()),
        "C3_L1_TIME_TO_IDLE" => Some("1h".to_owned()),
        _ => None,
    };
    let a = db.builder().from_vars(vars).build().await.unwrap();
    a.set("k", &1u32).await.unwrap();
    assert!(a.is_cached_locally("k"));
    wait_until("the L1 copy expires on its own", DELIVERY, || async {
        !a.is_cached_locally("k")
    })
    .await;
    assert_eq!(
        *a.get::<u32>("k").await.unwrap().unwrap(),
        1,
        "L2 still has it"
    );

    let idle = db
        .builder()
        .l1_time_to_idle(Some(Duration::from_millis(300)))
        .build()
        .await
        .unwrap();
    idle.set("i", &1u32).await.unwrap();
    assert!(idle.is_cached_locally("i"));
    // Polling would count as reads and keep it alive; at least the idle
    // period passes untouched, and expiry is checked on the next read.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!idle.is_cached_locally("i"), "an unread L1 copy is dropped");

    let err = db
        .builder()
        .from_vars(|n| (n == "C3_DEFAULT_TTL").then(|| "ten minutes".to_owned()))
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("C3_DEFAULT_TTL"), "{err}");
}

/// Large values are stored LZ4-compressed when a node asks for it; every
/// node reads them; a row in an encoding this build cannot read is a typed
/// error, never a misread.
#[tokio::test]
async fn compressed_values_are_read_by_every_node_and_unknown_encodings_are_errors() {
    let db = TestDb::new("compression").await;
    let a = db
        .builder()
        .compress_above(Some(1024))
        .build()
        .await
        .unwrap();
    let b = db.node().await;
    let doc: Vec<String> = (0..4000)
        .map(|i| format!("line {i} of a large document"))
        .collect();
    let json_len = serde_json::to_vec(&doc).unwrap().len();
    assert!(json_len > 64 * 1024);
    a.set("doc", &doc).await.unwrap();
    let row = db
        .client
        .query_one(
            &format!(
                "SELECT encoding, octet_length(value) FROM {} WHERE key = 'doc'",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "json+lz4");
    let stored: i32 = row.get(1);
    assert!((stored as usize) < json_len / 3, "{stored} of {json_len}");
    assert_eq!(*b.get::<Vec<String>>("doc").await.unwrap().unwrap(), doc);
    a.set("small", &"tiny".to_owned()).await.unwrap();
    let enc: String = db
        .client
        .query_one(
            &format!("SELECT encoding FROM {} WHERE key = 'small'", db.table()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enc, "json", "small values stay plain");

    db.client
        .execute(
            &format!(
                "INSERT INTO {} (key, value, encoding) VALUES ('future', '\\x00', 'json+zstd')",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap();
    let err = b.get::<String>("future").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("json+zstd"), "{err}");
}

/// Codecs per namespace: each row records its codec, so a node writing
/// MessagePack or postcard and a node on JSON read each other's values.
#[tokio::test]
async fn codecs_chosen_per_namespace_are_read_by_every_node() {
    use c3::core::Codec;
    let db = TestDb::new("codecs").await;
    let a = db
        .builder()
        .codec(Codec::MessagePack)
        .codec_for_prefix("pc:", Codec::Postcard)
        .codec_for_prefix("js:", Codec::Json)
        .build()
        .await
        .unwrap();
    let b = db.node().await;
    let value: (u32, String, Vec<bool>) = (7, "Ada".into(), vec![true, false]);
    for (key, encoding) in [("mp:1", "msgpack"), ("pc:1", "postcard"), ("js:1", "json")] {
        a.set(key, &value).await.unwrap();
        let enc: String = db
            .client
            .query_one(
                &format!("SELECT encoding FROM {} WHERE key = $1", db.table()),
                &[&key],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(enc, encoding, "{key}");
        assert_eq!(
            *b.get::<(u32, String, Vec<bool>)>(key)
                .await
                .unwrap()
                .unwrap(),
            value
        );
    }
    // B writes JSON; A reads it whatever A writes with.
    b.set("mp:2", &value).await.unwrap();
    assert_eq!(
        *a.get::<(u32, String, Vec<bool>)>("mp:2")
            .await
            .unwrap()
            .unwrap(),
        value
    );
}

/// Value push: a write to a pushed namespace carries the value, and the
/// other nodes answer from L1 without going to L2; other namespaces, values
/// too big for NOTIFY and late (older) pushes only invalidate.
#[tokio::test]
async fn pushed_values_land_in_peers_l1_in_order_and_big_ones_only_invalidate() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Flag {
        on: bool,
        note: String,
    }
    let db = TestDb::new("push").await;
    let a = db.builder().push_values("flag:").build().await.unwrap();
    let b = db.builder().push_values("flag:").build().await.unwrap();
    let flag = |on, note: &str| Flag {
        on,
        note: note.to_owned(),
    };

    let heard = b.stats().invalidations_received;
    a.set("flag:x", &flag(true, "v1")).await.unwrap();
    support::received(&b, heard).await;
    assert!(
        b.is_cached_locally("flag:x"),
        "the value came with the message"
    );
    let l2_reads = b.stats().l2_hits + b.stats().l2_misses;
    assert_eq!(
        *b.get::<Flag>("flag:x").await.unwrap().unwrap(),
        flag(true, "v1")
    );
    assert_eq!(
        *b.get::<Flag>("flag:x").await.unwrap().unwrap(),
        flag(true, "v1")
    );
    assert_eq!(
        b.stats().l2_hits + b.stats().l2_misses,
        l2_reads,
        "no L2 round trip"
    );
    assert_eq!(b.stats().pushed_values_kept, 1);

    // Outside the namespace: an invalidation only.
    let heard = b.stats().invalidations_received;
    a.set("user:1", &flag(false, "not pushed")).await.unwrap();
    support::received(&b, heard).await;
    assert!(!b.is_cached_locally("user:1"));

    // Too big for one NOTIFY: peers invalidate, then read L2.
    b.get::<Flag>("flag:x").await.unwrap();
    let big = flag(true, &"x".repeat(9000));
    let heard = b.stats().invalidations_received;
    a.set("flag:x", &big).await.unwrap();
    support::received(&b, heard).await;
    assert!(!b.is_cached_locally("flag:x"));
    assert_eq!(*b.get::<Flag>("flag:x").await.unwrap().unwrap(), big);

    // A late push (an older version, as a delayed message would be) never
    // replaces what B already holds.
    a.set("flag:x", &flag(false, "v3")).await.unwrap();
    wait_until("B holds v3", DELIVERY, || async {
        b.get::<Flag>("flag:x")
            .await
            .ok()
            .flatten()
            .is_some_and(|f| f.note == "v3")
            && b.is_cached_locally("flag:x")
    })
    .await;
    let heard = b.stats().invalidations_received;
    db.client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[
                &db.channel,
                &"c3|1|-|-|v\n1 - - flag:x\n{\"on\":true,\"note\":\"old\"}",
            ],
        )
        .await
        .unwrap();
    support::received(&b, heard).await;
    assert_eq!(b.get::<Flag>("flag:x").await.unwrap().unwrap().note, "v3");

    // A push from another client (any language can send one) with a new
    // version is taken as it is.
    let next: i64 = db
        .client
        .query_one(
            &format!(
                "SELECT version + 1000 FROM {} WHERE key = 'flag:x'",
                db.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let heard = b.stats().invalidations_received;
    db.client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[
                &db.channel,
                &format!("c3|1|-|-|v\n{next} - - flag:x\n{{\"on\":true,\"note\":\"from sql\"}}"),
            ],
        )
        .await
        .unwrap();
    support::received(&b, heard).await;
    assert_eq!(
        b.get::<Flag>("flag:x").await.unwrap().unwrap().note,
        "from sql"
    );
}

/// `shutdown` lets the writes already under way commit (none is lost), then
/// refuses new calls and leaves no task or connection of the node behind.
#[tokio::test]
async fn shutdown_waits_for_queued_writes_and_leaves_nothing_running() {
    let db = TestDb::new("shutdown").await;
    let a = db.node().await;
    let b = db.node().await;
    let node = a.node_id().to_owned();
    let writes: Vec<_> = (0..64)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.set(&format!("k:{i}"), &i).await })
        })
        .collect();
    // This test's runtime has one thread: yielding lets every spawned write
    // start (and queue in the write combiner) before shutdown begins.
    tokio::task::yield_now().await;
    a.shutdown().await;
    for (i, w) in writes.into_iter().enumerate() {
        w.await
            .unwrap()
            .unwrap_or_else(|e| panic!("write {i} was lost: {e}"));
        assert_eq!(
            b.get::<i32>(&format!("k:{i}")).await.unwrap().as_deref(),
            Some(&(i as i32)),
            "write {i} committed"
        );
    }
    assert_eq!(a.listener_state(), ListenerState::Stopped);
    assert_eq!(
        a.set("late", &1).await.unwrap_err().kind(),
        ErrorKind::Shutdown
    );
    // The listener's and the pool's connections are gone from the server.
    wait_until("the node's connections are closed", DELIVERY, || async {
        let n: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%' || $1",
                &[&node],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
}

/// A panic in the listener's task (here the user's `on_applied` observer)
/// ends it; nobody delivers invalidations any more, so L1 must not be
/// trusted: it is purged and off, and reads go to L2.
#[tokio::test]
async fn a_panicking_listener_turns_l1_off() {
    let db = TestDb::new("listener_panic").await;
    let a = db
        .builder()
        .on_applied(|n| {
            if n.written.iter().any(|(_, k)| k == "boom") {
                panic!("an observer that panics");
            }
        })
        .build()
        .await
        .unwrap();
    let b = db.node().await;
    b.set("x", &1u32).await.unwrap();
    assert_eq!(*a.get::<u32>("x").await.unwrap().unwrap(), 1);
    assert!(a.is_cached_locally("x"));
    b.set("boom", &1u32).await.unwrap();
    wait_until("A's listener is stopped", DELIVERY, || async {
        a.listener_state() == ListenerState::Stopped
    })
    .await;
    // B's next write is never heard by A; A must read it from L2.
    b.set("x", &2u32).await.unwrap();
    assert!(!a.is_cached_locally("x"));
    assert_eq!(*a.get::<u32>("x").await.unwrap().unwrap(), 2);
}

/// `get_many` with a key named twice answers it twice, from L2 as from L1.
#[tokio::test]
async fn get_many_answers_a_repeated_key_each_time() {
    let db = TestDb::new("get_many_repeat").await;
    let nodes = db.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    b.set("a", &1u32).await.unwrap();
    b.set("c", &3u32).await.unwrap();
    // Not in A's L1: read from L2.
    let got = a
        .get_many::<u32>(&["a", "c", "a", "none", "a"])
        .await
        .unwrap();
    let got: Vec<Option<u32>> = got.into_iter().map(|v| v.map(|v| *v)).collect();
    assert_eq!(got, [Some(1), Some(3), Some(1), None, Some(1)]);
    // Now from L1.
    let got = a.get_many::<u32>(&["a", "a"]).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|v| v.as_deref().copied())
            .collect::<Vec<_>>(),
        [Some(1), Some(1)]
    );
}
