//! Writers `set`, fillers `fill`: every path that caches what it *read* is
//! fenced against writes that committed after the read began — on another
//! replica, before this one heard of them.
//!
//! Each race is held at its racing moment: an origin that holds a GET after
//! it read the version, a fault proxy that holds a SELECT's result, a
//! listener link that holds the notification.

mod support;

use std::str::FromStr;
use std::time::Duration;

use c3::core::C3;
use c3_sqlx::{Cached, Repository};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::proxy::FaultProxy;
use support::web::{VersionedOrigin, cache_status, fetch, send};
use support::{DELIVERY, TestDb, wait_until};

const URL: &str = "http://app.test/item";

/// Waits until `node` has either stored or refused a fill since `before`
/// (`(writes, fills_dropped)`): a store runs in the background once the body
/// has been read.
async fn fill_settled(node: &C3, before: (u64, u64)) {
    wait_until("the fill is stored or refused", DELIVERY, || async {
        let s = node.stats();
        s.writes > before.0 || s.fills_dropped > before.1
    })
    .await;
}

/// A PUT through `svc`: the origin's version moves on, and the layer
/// invalidates the URI on every node before it answers.
async fn put<S, B>(svc: &S)
where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: axum::body::HttpBody,
    B::Error: std::fmt::Debug,
{
    let req = http::Request::put(URL)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(svc, req).await.0.status, 200);
}

fn counts(node: &C3) -> (u64, u64) {
    let s = node.stats();
    (s.writes, s.fills_dropped)
}

/// Asserts that `node`'s fill since `before` was refused by L2 itself: the
/// node heard nothing meanwhile (its LISTEN link held), so its own fill
/// token could not have refused it.
fn refused_by_l2(node: &C3, before: (u64, u64), heard: u64) {
    let s = node.stats();
    assert_eq!(s.invalidations_received, heard, "the node heard nothing");
    assert!(s.fills_dropped > before.1, "L2 refused the fill");
}

#[tokio::test]
async fn a_get_that_read_before_a_put_on_another_replica_is_not_stored() {
    let db = TestDb::new("fence_http_put").await;
    // A's LISTEN link is held during the race: only L2 can refuse its fill.
    let listen_link = FaultProxy::start(support::database_addr()).await;
    let a = db.listening_through(&listen_link).build().await.unwrap();
    let b = db.node().await;
    let origin = VersionedOrigin::new("max-age=300");
    let (svc_a, svc_b) = (origin.cached(&a), origin.cached(&b));

    origin.hold();
    let before = counts(&a);
    let heard = a.stats().invalidations_received;
    let ((_, body), ()) = tokio::join!(fetch(&svc_a, URL, &[]), async {
        origin.wait_held(1).await; // A's GET has read v0
        listen_link.blackhole();
        // B's PUT commits and invalidates the URI everywhere, returning first.
        put(&svc_b).await;
        origin.release();
    });
    assert_eq!(body, "/item@v0", "the GET began before the PUT");
    fill_settled(&a, before).await;
    refused_by_l2(&a, before, heard);

    for (name, svc) in [("A", &svc_a), ("B", &svc_b)] {
        let (p, body) = fetch(svc, URL, &[]).await;
        assert_eq!(
            body,
            "/item@v1",
            "{name} after the PUT: {}",
            cache_status(&p)
        );
    }
    listen_link.forward();
}

#[tokio::test]
async fn a_tag_invalidated_before_anything_was_stored_fences_the_fill() {
    let db = TestDb::new("fence_http_tag").await;
    let (a, b) = (db.node().await, db.node().await);
    let origin = VersionedOrigin::with("max-age=300", &[], Some("product:7"));
    let svc_a = origin.cached(&a);

    origin.hold();
    let before = counts(&a);
    let ((_, body), ()) = tokio::join!(fetch(&svc_a, URL, &[]), async {
        origin.wait_held(1).await;
        // A write elsewhere: the source changes, and its tag is invalidated
        // while nothing carries it yet.
        origin.bump("/item");
        assert_eq!(c3::tower::invalidate_tag(&b, "product:7").await.unwrap(), 0);
        origin.release();
    });
    assert_eq!(body, "/item@v0");
    fill_settled(&a, before).await;

    let (p, body) = fetch(&svc_a, URL, &[]).await;
    assert_eq!(body, "/item@v1", "{}", cache_status(&p));
    assert_eq!(origin.gets(), 2, "the old response was not stored");
}

#[tokio::test]
async fn a_304_that_raced_a_put_does_not_refresh_the_old_response() {
    let db = TestDb::new("fence_http_304").await;
    let clock = c3::core::ManualClock::new();
    // A's LISTEN link is held during the race: only L2 can refuse its fill.
    let listen_link = FaultProxy::start(support::database_addr()).await;
    let a = db
        .listening_through(&listen_link)
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    let b = db.node().await;
    let origin = VersionedOrigin::new("max-age=10");
    let (svc_a, svc_b) = (origin.cached(&a), origin.cached(&b));

    let w = a.stats().writes;
    assert_eq!(fetch(&svc_a, URL, &[]).await.1, "/item@v0");
    support::web::stored(&a, w, 1).await;
    clock.advance(Duration::from_secs(11)); // stale on A: revalidated next

    origin.hold();
    let before = counts(&a);
    let heard = a.stats().invalidations_received;
    let ((p, body), ()) = tokio::join!(fetch(&svc_a, URL, &[]), async {
        origin.wait_held(1).await; // the conditional GET read v0: a 304 is coming
        listen_link.blackhole();
        put(&svc_b).await;
        origin.release();
    });
    assert_eq!(body, "/item@v0");
    assert!(
        cache_status(&p).contains("fwd-status=304"),
        "{}",
        cache_status(&p)
    );
    fill_settled(&a, before).await;
    refused_by_l2(&a, before, heard);

    for (name, svc) in [("A", &svc_a), ("B", &svc_b)] {
        let (p, body) = fetch(svc, URL, &[]).await;
        assert_eq!(body, "/item@v1", "{name}: {}", cache_status(&p));
    }
    listen_link.forward();
}

#[derive(
    Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cached,
)]
#[c3(table = "users", key = "id")]
struct User {
    id: i64,
    name: String,
}

#[tokio::test]
async fn find_many_that_read_before_a_save_on_another_node_is_not_cached() {
    let db = TestDb::new("fence_find_many").await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE \"{s}\".users (id bigint PRIMARY KEY, name text NOT NULL);
             INSERT INTO \"{s}\".users VALUES (1, 'old');",
            s = db.schema
        ))
        .await
        .unwrap();
    let pool_for = |url: String| {
        let schema = db.schema.clone();
        async move {
            // Plaintext: the proxy recognises the SELECT's result by its bytes.
            let opts = PgConnectOptions::from_str(&url)
                .unwrap()
                .ssl_mode(sqlx::postgres::PgSslMode::Disable)
                .options([("search_path", schema.as_str())]);
            // One connection, no pings: the only bytes on it are the SELECT.
            PgPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .test_before_acquire(false)
                .connect_with(opts)
                .await
                .expect("sqlx pool")
        }
    };
    let a = db.node().await;
    let repo_a: Repository<User> = Repository::new(a.clone(), pool_for(db.url.clone()).await);

    // B: its SELECTs and its LISTEN connection each go through a proxy; its
    // L2 pool is direct. Long heartbeats: a held listener is only slow.
    let select_link = FaultProxy::start(support::database_addr()).await;
    let listen_link = FaultProxy::start(support::database_addr()).await;
    let b = db.listening_through(&listen_link).build().await.unwrap();
    let select_pool = pool_for(select_link.url(&db.url)).await;
    let repo_b: Repository<User> = Repository::new(b.clone(), select_pool.clone());

    // Once, so the SELECT is prepared on B's one connection: the find below
    // then sends it in one exchange, and the reply held is its result. The
    // ping waits for every reply still due, so the link is quiet after it.
    assert_eq!(repo_b.find_many(&[2]).await.unwrap(), vec![None]);
    sqlx::Connection::ping(&mut *select_pool.acquire().await.unwrap())
        .await
        .unwrap();
    select_link.hold_replies(b"old");
    let before = counts(&b);
    let repo_b = std::sync::Arc::new(repo_b);
    let find = tokio::spawn({
        let repo_b = std::sync::Arc::clone(&repo_b);
        async move { repo_b.find_many(&[1]).await }
    });
    wait_until("B's SELECT has run", DELIVERY, || async {
        select_link.holds(b"old")
    })
    .await;
    listen_link.blackhole(); // B will not hear of A's save until later
    repo_a
        .save(&User {
            id: 1,
            name: "new".into(),
        })
        .await
        .unwrap();
    select_link.forward();
    let found = find.await.unwrap().unwrap();
    assert_eq!(
        found[0].as_ref().unwrap().name,
        "old",
        "B read before the save"
    );
    fill_settled(&b, before).await;

    let row: Option<Vec<u8>> = db
        .client
        .query_opt(
            &format!("SELECT value FROM {} WHERE key = 'users:1'", db.table()),
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert!(
        row.as_deref()
            .is_none_or(|v| !String::from_utf8_lossy(v).contains("old")),
        "the older row is in L2: {:?}",
        row.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    assert_eq!(repo_a.find(&1).await.unwrap().unwrap().name, "new");
    // B itself, still deaf to the save, must not serve what it read before.
    assert_eq!(
        repo_b.find(&1).await.unwrap().unwrap().name,
        "new",
        "B kept the refused fill"
    );
    listen_link.forward();
}

/// Sends `leader` through `svc` and holds it at the origin, then sends
/// `waiter` and waits until it has missed the cache — on this
/// current-thread runtime it then waits for the leader (or is the next
/// request upstream) — and releases the origin. Returns both answers.
async fn overlapping<S>(
    node: &C3,
    origin: &VersionedOrigin,
    svc: &S,
    leader: &[(&str, &str)],
    waiter: &[(&str, &str)],
) -> (String, String)
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<c3::tower::C3Body<http_body_util::Full<bytes::Bytes>>>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    origin.hold();
    let misses = node.stats().l2_misses;
    let (l, w, ()) = tokio::join!(
        fetch(svc, URL, leader),
        async {
            origin.wait_held(1).await;
            fetch(svc, URL, waiter).await
        },
        async {
            origin.wait_held(1).await;
            // The waiter's L2 miss is counted in the same poll in which it
            // joins the leader: once it shows, the waiter is waiting.
            wait_until("the waiter missed", DELIVERY, || async {
                node.stats().l2_misses > misses + 1
            })
            .await;
            origin.release();
        }
    );
    let text = |b: bytes::Bytes| String::from_utf8(b.to_vec()).unwrap();
    (text(l.1), text(w.1))
}

/// A fresh node and origin for one collapse case.
async fn collapse_case(
    name: &str,
    cache_control: &str,
    vary: &[&str],
) -> (TestDb, C3, VersionedOrigin) {
    let db = TestDb::new(name).await;
    let node = db.node().await;
    (db, node, VersionedOrigin::with(cache_control, vary, None))
}

#[tokio::test]
async fn collapsed_requests_get_only_a_response_that_answers_them() {
    // Vary: the waiter's selection differs, or is absent: its own request.
    for (waiter, expected) in [
        (&[("foo", "b")][..], "/item@v0;foo=b"),
        (&[][..], "/item@v0;foo"),
        (&[("foo", "")][..], "/item@v0;foo="),
    ] {
        let (_db, a, origin) = collapse_case("collapse_vary", "max-age=300", &["foo"]).await;
        let svc = origin.cached(&a);
        let (l, w) = overlapping(&a, &origin, &svc, &[("foo", "a")], waiter).await;
        assert_eq!((l.as_str(), w.as_str()), ("/item@v0;foo=a", expected));
        assert_eq!(origin.gets(), 2, "{expected}");
    }

    // no-cache in any letter case: every use must be validated first.
    let (_db, a, origin) = collapse_case("collapse_nc", "max-age=300, No-CaChE", &[]).await;
    let svc = origin.cached(&a);
    overlapping(&a, &origin, &svc, &[], &[]).await;
    assert_eq!(origin.gets(), 2, "the waiter validated with the origin");

    // The same selection: one request upstream for both.
    let (_db, a, origin) = collapse_case("collapse_ok", "max-age=300", &["foo"]).await;
    let svc = origin.cached(&a);
    let (l, w) = overlapping(&a, &origin, &svc, &[("foo", "a")], &[("foo", "a")]).await;
    assert_eq!(
        (l.as_str(), w.as_str()),
        ("/item@v0;foo=a", "/item@v0;foo=a")
    );
    assert_eq!(origin.gets(), 1, "collapsed");
}

/// Whether a backend working in this test's schema is waiting for a lock.
async fn lock_wait_in(db: &TestDb) -> bool {
    let row = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
            &[&db.schema],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

/// Two fills of one tag's first entries (two replicas' first GETs of a URI):
/// the second fill's record insert waits for the first fill's, which then
/// commits. The second fill must still hold its deletion record locked, so
/// that a tag invalidation starting before it commits waits for it — and
/// then deletes what it stored. (Found by the differential HTTP test: with
/// the record lock in the inserting statement, it locked nothing, the
/// invalidation's DELETE ran before the fill committed and missed its row,
/// and the older response stayed in L2 after the write.)
#[tokio::test]
async fn a_fill_that_waited_for_another_fills_record_still_holds_off_a_deletion() {
    let db = TestDb::new("fence_record_race").await;
    let a = db.node().await;
    // B's L2 pool goes through a proxy that can hold its fill's result: the
    // fill has run on the server, and not committed.
    let link = FaultProxy::start(support::database_addr()).await;
    let b = db.pool_through(&link).build().await.unwrap();
    let records = format!("\"{}\".cache_data_deleted_tags", db.schema);
    // The other fill is a bare transaction holding its record insert. The
    // fill under test gives up after 100 ms of waiting for it (its lock
    // timeout): if this test is too slow to release it in time, the moment
    // is missed and the round is tried again.
    for round in 0..10 {
        let key = format!("raced-key-{round}");
        let tag = format!("raced-tag-{round}");
        let fill = b.begin_fill(&[&key]).await.unwrap();
        let other = support::connect(&db.url).await;
        other.batch_execute("BEGIN").await.unwrap();
        other
            .execute(
                &format!("INSERT INTO {records} (tag, xid) VALUES ($1, '0')"),
                &[&tag],
            )
            .await
            .unwrap();
        link.hold_replies(key.as_bytes());
        let store = tokio::spawn({
            let (key, tag) = (key.clone(), tag.clone());
            async move { fill.store(&key, &"old".to_owned(), None, &[&tag]).await }
        });
        wait_until("the fill waits for the other's record", DELIVERY, || {
            lock_wait_in(&db)
        })
        .await;
        other.batch_execute("COMMIT").await.unwrap();
        wait_until("the fill has run, or given up", DELIVERY, || async {
            link.holds(key.as_bytes()) || store.is_finished()
        })
        .await;
        if store.is_finished() {
            link.forward();
            assert!(!store.await.unwrap().unwrap(), "a fill that gave up");
            continue;
        }
        // The fill has run and holds its row uncommitted. A write elsewhere
        // invalidates the tag now: it must wait for the fill, then delete.
        let invalidate = tokio::spawn({
            let (a, tag) = (a.clone(), tag.clone());
            async move { a.invalidate_tag(&tag).await }
        });
        wait_until(
            "the invalidation waits for the fill, or is done",
            DELIVERY,
            || async { invalidate.is_finished() || lock_wait_in(&db).await },
        )
        .await;
        link.forward();
        assert!(store.await.unwrap().unwrap(), "the fill was stored");
        invalidate.await.unwrap().unwrap();
        assert_eq!(
            db.row_version(&key).await,
            None,
            "the filled row outlived an invalidation that committed after it"
        );
        return;
    }
    panic!("in ten rounds, the fill never ran while the other record was held");
}
