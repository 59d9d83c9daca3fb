//! Every kind of bad input gets a typed error (or, for notifications, a
//! counted, logged purge) — never a panic, never a hang.

mod support;

use std::time::{Duration, Instant};

use c3::core::{C3, ErrorKind, MemoryServer};
use support::{DELIVERY, TestDb, wait_until};

#[tokio::test]
async fn invalid_keys_and_values_are_rejected_before_io() {
    let db = TestDb::new("bad_keys").await;
    let a = db.builder().max_value_bytes(1024).build().await.unwrap();
    let long = "k".repeat(1025);
    for key in ["", long.as_str(), "a\0b", "line\nbreak", "c3|1|x|1|c"] {
        let err = a.set(key, &1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{key:?}: {err}");
        assert!(a.get::<i32>(key).await.unwrap_err().is_invalid_key());
        assert!(a.delete(key).await.unwrap_err().is_invalid_key());
        assert!(a.invalidate(key).await.unwrap_err().is_invalid_key());
    }
    let err = a.set("big", &"x".repeat(2000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert!(err.to_string().contains("1024"), "{err}");
    // One bad key fails the whole batch, and nothing is written.
    let err = a.set_many(&[("ok", 1), ("", 2)]).await.unwrap_err();
    assert!(err.is_invalid_key());
    assert!(a.get::<i32>("ok").await.unwrap().is_none());

    // SQL metacharacters are just bytes of a key.
    let evil = "'; DROP TABLE cache_data; --";
    a.set(evil, &7).await.unwrap();
    assert_eq!(a.get::<i32>(evil).await.unwrap().as_deref(), Some(&7));
    // Keys up to the configured maximum work, including in notifications.
    let max_key = "m".repeat(1024);
    a.set(&max_key, &1).await.unwrap();
    a.delete(&max_key).await.unwrap();
    // Non-ASCII keys are fine.
    a.set("ключ:🔑", &1).await.unwrap();
    assert!(a.get::<i32>("ключ:🔑").await.unwrap().is_some());
}

#[tokio::test]
async fn invalid_configuration_is_a_config_error() {
    let db = TestDb::new("bad_config").await;
    for b in [
        db.builder().table("x; DROP TABLE y"),
        db.builder().table("Upper"),
        db.builder().schema("a\"b"),
        db.builder().channel("has space"),
        db.builder().channel("c".repeat(41)),
        db.builder().max_key_bytes(8000),
        db.builder().max_key_bytes(0),
        db.builder().node_id("bad node id"),
        db.builder().pool_size(0),
        C3::builder().postgres("not a url at all ::"),
        C3::builder(),
    ] {
        let err = b.build().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    }
}

#[tokio::test]
async fn unreachable_postgres_fails_fast_with_a_clear_error() {
    let started = Instant::now();
    let err = C3::builder()
        .postgres("postgres://postgres@127.0.0.1:1/postgres")
        .connect_timeout(Duration::from_secs(1))
        .op_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_backend() || err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
}

/// Every operation that talks to L2 is bounded by the operation timeout:
/// with PostgreSQL silent (a blackholed link, so nothing ever answers and no
/// connection error arrives either), each one returns — a timeout error, or
/// for the degrading operations (fills, `get_or_load`) their documented
/// fallback — within a few timeouts. The calls run one after another, so a
/// single unbounded call shows as the one that overran its own deadline.
#[tokio::test]
async fn every_l2_call_times_out_instead_of_hanging_when_postgres_goes_silent() {
    let db = TestDb::new("silent_pg").await;
    let proxy = support::proxy::FaultProxy::start(support::database_addr()).await;
    let url = proxy.url(&support::database_url());
    let timeout = Duration::from_millis(400);
    let a = db
        .builder()
        .postgres(&url)
        .op_timeout(timeout)
        // The breaker would turn later calls into CircuitOpen without any
        // I/O; this test is about the calls that do reach the silent server.
        .l2_breaker(c3::core::BreakerConfig::new(1_000, Duration::from_secs(60)))
        .build()
        .await
        .unwrap();
    a.set("k", &1).await.unwrap();
    let fenced = a.begin_fill(&["f"]).await.unwrap();
    assert!(fenced.is_fenced());
    proxy.blackhole();

    // Each call gets a deadline of its own: an unbounded one fails here
    // rather than hanging the suite.
    let bound = timeout * 5;
    async fn within<T>(op: &str, bound: Duration, fut: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let r = tokio::time::timeout(bound * 4, fut)
            .await
            .unwrap_or_else(|_| panic!("{op} hung with PostgreSQL silent"));
        assert!(
            started.elapsed() < bound,
            "{op} took {:?}",
            started.elapsed()
        );
        r
    }
    fn timed_out<T: std::fmt::Debug>(op: &str, r: c3::core::Result<T>) {
        let err = r.expect_err(op);
        assert!(err.is_timeout(), "{op}: {err:?}");
    }
    timed_out(
        "get",
        within("get", bound, a.get::<i32>("never-cached")).await,
    );
    timed_out(
        "get_many",
        within("get_many", bound, a.get_many::<i32>(&["m1", "m2"])).await,
    );
    timed_out("set", within("set", bound, a.set("k", &2)).await);
    timed_out(
        "set_tagged",
        within("set_tagged", bound, a.set_tagged("t", &2, None, &["tag"])).await,
    );
    timed_out(
        "set_many",
        within("set_many", bound, a.set_many(&[("s1", 1), ("s2", 2)])).await,
    );
    timed_out("delete", within("delete", bound, a.delete("other")).await);
    timed_out(
        "delete_many",
        within("delete_many", bound, a.delete_many(&["d1", "d2"])).await,
    );
    timed_out(
        "invalidate",
        within("invalidate", bound, a.invalidate("i")).await,
    );
    timed_out(
        "invalidate_many",
        within("invalidate_many", bound, a.invalidate_many(&["i1", "i2"])).await,
    );
    timed_out(
        "invalidate_tag",
        within("invalidate_tag", bound, a.invalidate_tag("tag")).await,
    );
    timed_out("clear", within("clear", bound, a.clear()).await);

    // Fills degrade instead of failing: the fence cannot be taken (the fill
    // keeps values in L1 only), and a store under an earlier fence is not
    // cached in L2.
    let unfenced = within("begin_fill", bound, a.begin_fill(&["g"]))
        .await
        .unwrap();
    assert!(!unfenced.is_fenced());
    let stored = within("fill.store", bound, fenced.store("f", &1, None, &[]))
        .await
        .unwrap();
    assert!(!stored, "nothing reaches a silent L2");
    // get_or_load: the L2 read and the write-back are bounded; the loader answers.
    let opts = c3::core::LoadOptions::new();
    let loaded = within(
        "get_or_load",
        bound * 2,
        a.get_or_load("loaded", &opts, || async {
            Ok::<_, std::io::Error>(Some(7))
        }),
    )
    .await
    .unwrap();
    assert_eq!(loaded.as_deref(), Some(&7));
    assert!(a.stats().l2_errors >= 11, "{:?}", a.stats());
}

#[tokio::test]
async fn malformed_notifications_are_counted_and_purge_l1() {
    let db = TestDb::new("malformed").await;
    let a = db.node().await;
    a.set("k", &1).await.unwrap();
    assert!(a.is_cached_locally("k"));
    for payload in [
        "c3|1|x",
        "c3|9|n|1|k\n1 k",
        "c3|1|n|1|zz",
        "c3|1|n|1|k\nnot-a-version k",
    ] {
        db.client
            .execute("SELECT pg_notify($1, $2)", &[&db.channel, &payload])
            .await
            .unwrap();
    }
    wait_until("four malformed payloads counted", DELIVERY, || async {
        a.stats().malformed_notifications == 4
    })
    .await;
    assert!(
        !a.is_cached_locally("k"),
        "an unreadable message fails safe"
    );
    assert_eq!(
        a.listener_state(),
        c3::ListenerState::Listening,
        "listener survives"
    );
    a.set("k", &2).await.unwrap();
    assert!(a.is_cached_locally("k"));
}

#[tokio::test]
async fn memory_backend_has_the_same_semantics() {
    let server = MemoryServer::new();
    let a = C3::builder().memory(&server).build().await.unwrap();
    let b = C3::builder().memory(&server).build().await.unwrap();
    a.set("k", &1).await.unwrap();
    assert_eq!(b.get::<i32>("k").await.unwrap().as_deref(), Some(&1));
    a.set("k", &2).await.unwrap();
    wait_until("B drops k", DELIVERY, || async {
        !b.is_cached_locally("k")
    })
    .await;
    assert_eq!(b.get::<i32>("k").await.unwrap().as_deref(), Some(&2));
    assert!(a.is_cached_locally("k"));
    server.notify("k");
    wait_until("bare notify drops k on A", DELIVERY, || async {
        !a.is_cached_locally("k")
    })
    .await;
    server.notify("c3|garbage");
    wait_until("malformed counted", DELIVERY, || async {
        a.stats().malformed_notifications == 1 && b.stats().malformed_notifications == 1
    })
    .await;
    a.shutdown().await;
    assert_eq!(a.listener_state(), c3::ListenerState::Stopped);
    assert_eq!(
        a.get::<i32>("k").await.unwrap_err().kind(),
        ErrorKind::Shutdown
    );
}

#[tokio::test]
async fn memory_backend_supports_tags() {
    let server = MemoryServer::new();
    let a = C3::builder().memory(&server).build().await.unwrap();
    let b = C3::builder().memory(&server).build().await.unwrap();
    a.set_tagged("x", &1, None, &["t"]).await.unwrap();
    a.set_tagged("y", &2, None, &["t", "u"]).await.unwrap();
    assert!(b.get::<i32>("x").await.unwrap().is_some());
    assert_eq!(b.invalidate_tag("t").await.unwrap(), 2);
    wait_until("A drops x", DELIVERY, || async {
        !a.is_cached_locally("x")
    })
    .await;
    assert!(a.get::<i32>("y").await.unwrap().is_none());
    assert_eq!(b.invalidate_tag("u").await.unwrap(), 0, "y already deleted");
}

/// 100,000 notifications in one burst: the node applies every one, keeps
/// the entries nobody invalidated, drops the ones that were, and its L1
/// stays within its byte budget.
#[tokio::test]
async fn a_flood_of_notifications_is_applied_and_leaves_l1_correct() {
    let db = TestDb::new("flood").await;
    let budget = 256 * 1024;
    let b = db.builder().l1_max_bytes(budget).build().await.unwrap();
    b.set("keep", &1u32).await.unwrap();
    b.set("flood:77", &1u32).await.unwrap();
    let before = b.stats().invalidations_received;
    db.client
        .execute(
            "SELECT pg_notify($1, 'flood:' || g) FROM generate_series(1, 100000) AS g",
            &[&db.channel],
        )
        .await
        .unwrap();
    wait_until(
        "all 100,000 notifications applied",
        Duration::from_secs(60),
        || async { b.stats().invalidations_received >= before + 100_000 },
    )
    .await;
    assert!(b.is_cached_locally("keep"), "an untouched key stays cached");
    assert!(
        !b.is_cached_locally("flood:77"),
        "a flooded key is invalidated"
    );
    assert_eq!(b.stats().malformed_notifications, 0);
    assert!(b.stats().l1_bytes <= budget, "{:?}", b.stats());
    // Still coherent afterwards.
    let a = db.node().await;
    let r = b.stats().invalidations_received;
    a.set("keep", &2u32).await.unwrap();
    support::received(&b, r).await;
    assert_eq!(*b.get::<u32>("keep").await.unwrap().unwrap(), 2);
}

/// Identifiers that try to inject SQL are refused before any SQL is built.
#[tokio::test]
async fn identifiers_that_try_to_inject_sql_are_refused() {
    for (what, builder) in [
        ("schema", C3::builder().schema("public; DROP TABLE x")),
        ("table", C3::builder().table("cache\"; --")),
        ("channel", C3::builder().channel("chan' || pg_sleep(10) --")),
        ("table", C3::builder().table("Cache_Data")),
    ] {
        let err = builder
            .memory(&MemoryServer::new())
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{what}");
        assert!(err.to_string().contains(what), "{err}");
    }
}
