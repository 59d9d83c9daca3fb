//! `Durability::Unlogged`: the L2 tables are `UNLOGGED`. A crash empties
//! them; every node must then purge its L1 and serve only what is written or
//! loaded after the restart. Switching an existing table between modes
//! converts it in place.

mod support;

use std::sync::Arc;
use std::time::Duration;

use c3::core::{C3, Durability, ListenerState, LoadOptions};
use support::cluster::Cluster;
use support::{DELIVERY, TestDb, wait_until};

const KEYS: usize = 50;

fn key(i: usize) -> String {
    format!("item:{i}")
}

async fn source_value(db: &tokio_postgres::Client, i: usize) -> Option<i64> {
    db.query_opt("SELECT v FROM items WHERE id = $1", &[&(i as i64)])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn load(node: &C3, db: &Arc<tokio_postgres::Client>, i: usize) -> Option<i64> {
    let db = Arc::clone(db);
    node.get_or_load(&key(i), &LoadOptions::default(), move || async move {
        Ok::<_, std::io::Error>(source_value(&db, i).await)
    })
    .await
    .unwrap()
    .map(|v| *v)
}

/// Writes the source of truth (a logged table) and invalidates the key.
async fn write(node: &C3, db: &tokio_postgres::Client, i: usize, v: i64) {
    db.execute("UPDATE items SET v = $2 WHERE id = $1", &[&(i as i64), &v])
        .await
        .unwrap();
    node.delete(&key(i)).await.unwrap();
}

#[tokio::test]
async fn a_crash_empties_an_unlogged_cache_and_every_node_purges() {
    let cluster = Cluster::start("unlogged_crash");
    let url = cluster.url();
    let db = Arc::new(support::connect(&url).await);
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, v bigint NOT NULL); \
         INSERT INTO items SELECT g, 1 FROM generate_series(0, 49) AS g",
    )
    .await
    .unwrap();
    let builder = |warm: bool| {
        C3::builder()
            .postgres(&url)
            .durability(Durability::Unlogged)
            .warm_reconnect(warm)
            .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
    };
    // One node with warm reconnect (it must see the restart of an unlogged
    // table and purge), one without.
    let (a, b) = (
        builder(true).build().await.unwrap(),
        builder(false).build().await.unwrap(),
    );
    let persistence: String = db
        .query_one(
            "SELECT relpersistence::text FROM pg_class WHERE oid = 'cache_data'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(persistence, "u", "the table is unlogged");

    // Version 2 of every item, loaded on both nodes, and checkpointed so
    // the source's rows are on disk (they are logged: they survive anyway).
    for i in 0..KEYS {
        write(&a, &db, i, 2).await;
    }
    for node in [&a, &b] {
        for i in 0..KEYS {
            assert_eq!(load(node, &db, i).await, Some(2));
        }
        assert!((0..KEYS).all(|i| node.is_cached_locally(&key(i))));
    }
    let before = [a.stats(), b.stats()];
    // A fill fenced before the crash, which "read" an older value: the
    // records that would refuse it are gone with the crash. It names no key
    // when fenced (as an HTTP response, whose variant key comes later), so
    // only L2 can refuse it.
    let early = b.begin_fill(&[]).await.unwrap();
    drop(db);

    cluster.crash();

    let db = Arc::new(support::connect(&url).await);
    for (node, before) in [&a, &b].into_iter().zip(&before) {
        wait_until("the node listens again", DELIVERY, || async {
            node.stats().reconnects > before.reconnects
                && node.listener_state() == ListenerState::Listening
        })
        .await;
    }
    let rows: i64 = db
        .query_one("SELECT count(*) FROM cache_data", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the crash emptied the unlogged table");
    let warm = a.stats();
    assert_eq!(
        (
            warm.warm_reconnects - before[0].warm_reconnects,
            warm.warm_reconnect_fallbacks - before[0].warm_reconnect_fallbacks
        ),
        (0, 1),
        "warm reconnect saw the unlogged table's restart and purged"
    );
    for node in [&a, &b] {
        assert!(
            (0..KEYS).all(|i| !node.is_cached_locally(&key(i))),
            "nothing from before the crash is in L1"
        );
    }
    assert!(
        !early.store(&key(7), &1i64, None, &[]).await.unwrap(),
        "a fill fenced before the crash is refused"
    );
    // A write after the restart, then reads: the source's values, never
    // older than what was served before the crash.
    write(&b, &db, 0, 3).await;
    for node in [&a, &b] {
        assert_eq!(load(node, &db, 0).await, Some(3));
        for i in 1..KEYS {
            assert_eq!(load(node, &db, i).await, Some(2));
        }
    }
}

async fn persistence(db: &TestDb) -> Vec<String> {
    db.client
        .query(
            "SELECT relname || '=' || relpersistence::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY relname",
            &[&db.schema],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn switching_durability_converts_the_tables_in_place() {
    let db = TestDb::new("durability_switch").await;
    let logged = db.node().await;
    logged.set("kept", &1u32).await.unwrap();
    logged.shutdown().await;
    let tables = [
        "cache_data",
        "cache_data_deleted",
        "cache_data_deleted_tags",
        "cache_data_tags",
    ];
    let all = |p: &str| -> Vec<String> { tables.iter().map(|t| format!("{t}={p}")).collect() };
    assert_eq!(persistence(&db).await, all("p"));

    // A node that may not run DDL, asking for the other mode: refused, and
    // told what to run.
    let err = db
        .builder()
        .durability(Durability::Unlogged)
        .migrate(false)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SET UNLOGGED"), "{err}");

    let unlogged = db
        .builder()
        .durability(Durability::Unlogged)
        .build()
        .await
        .unwrap();
    assert_eq!(persistence(&db).await, all("u"));
    assert_eq!(
        unlogged.get::<u32>("kept").await.unwrap().as_deref(),
        Some(&1)
    );
    unlogged.shutdown().await;

    let back = db.node().await;
    assert_eq!(persistence(&db).await, all("p"));
    assert_eq!(back.get::<u32>("kept").await.unwrap().as_deref(), Some(&1));
}
