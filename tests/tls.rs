//! TLS to PostgreSQL, libpq's way: `sslmode=require` against the local
//! server (`ssl = on`), and `verify-full` / `verify-ca` / `disable` against a
//! cluster of the test's own that accepts TLS only, with a certificate from a
//! CA made for the test.

mod support;

use std::time::Duration;

use c3::core::C3;
use support::cluster::Cluster;
use support::{DELIVERY, TestDb, wait_until};

/// How many of `node`'s connections (pool and listener, found by the node
/// id in their application names) use TLS, and how many do not.
async fn tls_connections(client: &tokio_postgres::Client, node: &C3) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE '%' || $1",
            &[&node.node_id()],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn sslmode_require_encrypts_the_pool_and_the_listener() {
    let db = TestDb::new("tls_require").await;
    let url = format!("{}?sslmode=require", db.url);
    let node = || db.builder().postgres(&url).build();
    let (a, b) = (node().await.unwrap(), node().await.unwrap());
    a.set("k", &1u32).await.unwrap();
    assert_eq!(*b.get::<u32>("k").await.unwrap().unwrap(), 1);
    a.set("k", &2u32).await.unwrap();
    // Coherent through a listener over TLS: B's copy of 1 goes when A's
    // notification arrives. (Counting notifications received would race:
    // the one for A's first write may still be on its way.)
    wait_until("B hears A's second write", DELIVERY, || async {
        b.get::<u32>("k").await.unwrap().as_deref() == Some(&2)
    })
    .await;
    for n in [&a, &b] {
        let (tls, plain) = tls_connections(&db.client, n).await;
        assert!(
            tls >= 2 && plain == 0,
            "pool and listener over TLS: {tls} TLS, {plain} plaintext"
        );
    }
}

#[tokio::test]
async fn verify_full_and_verify_ca_check_what_they_say() {
    let (cluster, ca) = Cluster::start_tls("tls_verify");
    let port = cluster.port();
    let ca = ca.display().to_string();
    let url =
        |host: &str, params: &str| format!("postgres://postgres@{host}:{port}/postgres?{params}");
    let build = |url: String| async move {
        C3::builder()
            .postgres(&url)
            .table("c3_tls")
            .connect_timeout(Duration::from_secs(5))
            .heartbeat(Duration::from_millis(200), Duration::from_millis(800))
            .build()
            .await
    };

    // verify-full: the chain and the name (DNS or IP) check out.
    for host in ["localhost", "127.0.0.1"] {
        let a = build(url(host, &format!("sslmode=verify-full&sslrootcert={ca}")))
            .await
            .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        let b = build(url(host, &format!("sslmode=verify-full&sslrootcert={ca}")))
            .await
            .unwrap();
        a.set("k", &host.to_owned()).await.unwrap();
        assert_eq!(*b.get::<String>("k").await.unwrap().unwrap(), host);
        a.delete("k").await.unwrap();
        wait_until("B hears the delete", DELIVERY, || async {
            b.get::<String>("k").await.unwrap().is_none()
        })
        .await;
        wait_until("B listening over TLS", DELIVERY, || async {
            b.listener_state() == c3::ListenerState::Listening
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    }

    // A name the certificate does not carry: verify-full refuses, naming the
    // check; verify-ca (the chain only) accepts.
    let wrong = |mode: &str| {
        url(
            "wrong-name.test",
            &format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}"),
        )
    };
    let err = build(wrong("verify-full")).await.unwrap_err();
    assert!(err.is_tls(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("host name check failed")
            && msg.contains("sslmode=verify-full")
            && msg.contains("pool"),
        "{msg}"
    );
    let n = build(wrong("verify-ca"))
        .await
        .expect("verify-ca ignores the name");
    n.set("ca", &1u8).await.unwrap();
    n.shutdown().await;

    // Without the test's CA (the platform's roots only): the chain fails.
    let err = build(url("localhost", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(
        err.is_tls() && err.to_string().contains("chain check failed"),
        "{err}"
    );

    // require encrypts without verifying; disable is refused by a TLS-only
    // server, with its reason.
    build(url("127.0.0.1", "sslmode=require"))
        .await
        .expect("require");
    let err = build(url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        err.is_backend() && err.to_string().contains("no encryption"),
        "{err}"
    );

    // An sslrootcert that does not exist: a configuration error, before any I/O.
    let err = build(url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), c3::ErrorKind::Config, "{err}");
    drop(cluster);
}
