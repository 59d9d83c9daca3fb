//! c3 behind a real PgBouncer in transaction mode: the pool through the
//! pooler with unnamed statements, LISTEN direct — and a LISTEN URL that
//! points at the pooler refused with an error that says so.

mod support;

use std::time::Duration;

use c3::core::LoadOptions;
use support::pgbouncer::PgBouncer;
use support::{TestDb, received};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_stay_coherent_with_their_pools_behind_pgbouncer() {
    let db = TestDb::new("pooler").await;
    // Two server connections for eight client ones: consecutive statements
    // of one client land on different server sessions.
    let bouncer = PgBouncer::start(&support::database_addr(), 2);
    let pooled = bouncer.url(&db.url);
    let node = || {
        db.builder()
            .postgres(&pooled)
            .listen_postgres(&db.url)
            .prepared_statements(false)
            .pool_size(8)
            .build()
    };
    let (a, b) = (node().await.unwrap(), node().await.unwrap());

    // Every kind of statement, many at once.
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let k = format!("k{}", i % 16);
            match i % 4 {
                0 => a.set(&k, &i).await.unwrap(),
                1 => drop(b.get::<u32>(&k).await.unwrap()),
                2 => {
                    let fill = b.begin_fill(&[&k]).await.unwrap();
                    fill.store(&k, &i, None, &["t"]).await.unwrap();
                }
                _ => drop(
                    a.get_or_load(&k, &LoadOptions::new(), move || async move {
                        Ok::<_, std::io::Error>(Some(i))
                    })
                    .await
                    .unwrap(),
                ),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Coherent: a write through A's pooled connection reaches B's direct
    // listener, and B reads it through its pooled one.
    for v in 0..5u32 {
        let r = b.stats().invalidations_received;
        a.set("shared", &v).await.unwrap();
        received(&b, r).await;
        assert_eq!(*b.get::<u32>("shared").await.unwrap().unwrap(), v);
    }
    a.set_tagged("tagged", &1u32, None, &["g"]).await.unwrap();
    let r = a.stats().invalidations_received;
    assert_eq!(b.invalidate_tag("g").await.unwrap(), 1);
    received(&a, r).await;
    assert!(a.get::<u32>("tagged").await.unwrap().is_none());
    let r = b.stats().invalidations_received;
    a.delete("shared").await.unwrap();
    received(&b, r).await;
    assert!(b.get::<u32>("shared").await.unwrap().is_none());

    // All of that went through the pooler: without it, the pools reach
    // nothing (their LISTEN connections, direct, stay up).
    drop(bouncer);
    let err = a.set("after", &1u32).await.unwrap_err();
    assert!(err.is_l2_unavailable(), "{err}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_listener_through_a_transaction_pooler_is_refused_with_a_clear_error() {
    let db = TestDb::new("pooler_listen").await;
    let bouncer = PgBouncer::start(&support::database_addr(), 2);
    let err = db
        .builder()
        .postgres(&bouncer.url(&db.url))
        .prepared_statements(false)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), c3::ErrorKind::Config, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("transaction pooler") && msg.contains("C3_LISTEN_DATABASE_URL"),
        "{msg}"
    );
}
