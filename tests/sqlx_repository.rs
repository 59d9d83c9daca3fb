//! c3-sqlx on a real PostgreSQL: repositories on two nodes, transactional
//! invalidation, the table trigger, singleflight, breakers and fail-safe.
//!
//! Each test's entity tables live in its own schema (the sqlx pool's
//! `search_path`), beside its own c3 table and channel.

mod support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use c3::core::{C3, ManualClock};
use c3_sqlx::{Cached, Repository};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{DELIVERY, TestDb, received, wait_until};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cached)]
#[c3(table = "users", key = "id", ttl = "10m")]
struct User {
    id: i64,
    email: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cached)]
#[c3(
    table = "members",
    key = "org_id, user_id",
    namespace = "member",
    save = "role"
)]
struct Member {
    org_id: i64,
    user_id: String,
    role: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cached)]
#[c3(
    table = "prices",
    key = "sku",
    ttl = "1m",
    fail_safe = "1h",
    negative_ttl = "30s"
)]
struct Price {
    sku: String,
    cents: i64,
}

/// Has `b` cache a fresh marker key and `a` invalidate it, and waits until
/// `b` dropped it: notifications arrive in commit order, so nothing sent
/// before is still on its way. Returns `b`'s received count then. Each call
/// adds the same fixed number of messages (see `quiet_cost`).
async fn quiet(a: &C3, b: &C3) -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = format!(
        "marker{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    a.set(&key, &1u32).await.unwrap();
    wait_until("B caches the marker", DELIVERY, || async {
        b.get::<u32>(&key).await.unwrap();
        b.is_cached_locally(&key)
    })
    .await;
    a.invalidate(&key).await.unwrap();
    wait_until("the marker's invalidation reaches B", DELIVERY, || async {
        !b.is_cached_locally(&key)
    })
    .await;
    b.stats().invalidations_received
}

/// How many messages one `quiet` adds by itself.
async fn quiet_cost(a: &C3, b: &C3) -> u64 {
    let r = quiet(a, b).await;
    quiet(a, b).await - r
}

fn user(id: i64, name: &str) -> User {
    User {
        id,
        email: format!("{}@example.com", name.to_lowercase()),
        name: name.into(),
    }
}

/// A pool whose unqualified names resolve in the test's schema, with the
/// entity tables created there.
async fn pool(db: &TestDb) -> PgPool {
    let opts = PgConnectOptions::from_str(&db.url)
        .expect("DATABASE_URL")
        .options([("search_path", db.schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {}: {e}; run scripts/test.sh",
                db.url
            )
        });
    sqlx::raw_sql(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, name text NOT NULL);
         CREATE TABLE members (org_id bigint, user_id text, role text NOT NULL, PRIMARY KEY (org_id, user_id));
         CREATE TABLE prices (sku text PRIMARY KEY, cents bigint NOT NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool
}

#[tokio::test]
async fn find_save_delete_across_two_nodes() {
    let db = TestDb::new("sqlx_crud").await;
    let pool = pool(&db).await;
    let (a, b) = (db.node().await, db.node().await);
    let (ra, rb) = (
        Repository::<User>::new(a.clone(), pool.clone()),
        Repository::<User>::new(b.clone(), pool.clone()),
    );
    assert_eq!(Repository::<User>::cache_key(&42), "users:42");

    assert_eq!(ra.find(&42).await.unwrap(), None);
    ra.save(&user(42, "Ada")).await.unwrap();
    assert_eq!(
        ra.find(&42).await.unwrap(),
        Some(user(42, "Ada")),
        "A reads its own write"
    );
    assert_eq!(rb.find(&42).await.unwrap(), Some(user(42, "Ada")));
    assert!(b.is_cached_locally("users:42"));

    let r = b.stats().invalidations_received;
    ra.save(&user(42, "Ada Lovelace")).await.unwrap();
    received(&b, r).await;
    assert_eq!(rb.find(&42).await.unwrap().unwrap().name, "Ada Lovelace");

    // find_many: cached rows from the cache, the rest from one SELECT.
    ra.save(&user(1, "Grace")).await.unwrap();
    // A fill is refused if the key's invalidation is still on its way (it
    // may be newer than the read); let it land first.
    quiet(&a, &b).await;
    let loads = b.stats().loads;
    let got = rb.find_many(&[42, 1, 7]).await.unwrap();
    assert_eq!(
        got,
        vec![Some(user(42, "Ada Lovelace")), Some(user(1, "Grace")), None]
    );
    assert_eq!(b.stats().loads, loads, "find_many does not go row by row");
    assert!(b.is_cached_locally("users:1"), "loaded rows are cached");

    let r = a.stats().invalidations_received;
    assert!(rb.delete(&42).await.unwrap());
    assert!(!rb.delete(&42).await.unwrap(), "already gone");
    received(&a, r).await;
    assert_eq!(ra.find(&42).await.unwrap(), None);
    assert_eq!(rb.find(&42).await.unwrap(), None);
}

#[tokio::test]
async fn composite_keys_and_partial_saves() {
    let db = TestDb::new("sqlx_composite").await;
    let pool = pool(&db).await;
    let c3 = db.node().await;
    let repo = Repository::<Member>::new(c3.clone(), pool.clone());
    let m = Member {
        org_id: 7,
        user_id: "ada:1".into(),
        role: "admin".into(),
    };
    assert_eq!(
        Repository::<Member>::cache_key(&m.key()),
        "member:7:ada%3A1"
    );
    repo.save(&m).await.unwrap();
    assert_eq!(
        repo.find(&(7, "ada:1".into())).await.unwrap(),
        Some(m.clone())
    );
    let got = repo
        .find_many(&[(7, "ada:1".into()), (7, "nobody".into())])
        .await
        .unwrap();
    assert_eq!(got, vec![Some(m.clone()), None]);
    let promoted = Member {
        role: "owner".into(),
        ..m.clone()
    };
    repo.save(&promoted).await.unwrap();
    assert_eq!(repo.find(&m.key()).await.unwrap(), Some(promoted));
}

#[tokio::test]
async fn a_rolled_back_invalidation_sends_nothing() {
    let db = TestDb::new("sqlx_rollback").await;
    let pool = pool(&db).await;
    let (a, b) = (db.node().await, db.node().await);
    let (ra, rb) = (
        Repository::<User>::new(a.clone(), pool.clone()),
        Repository::<User>::new(b.clone(), pool.clone()),
    );
    ra.save(&user(5, "Ada")).await.unwrap();
    quiet(&a, &b).await;
    rb.find(&5).await.unwrap().unwrap();
    let sent_rows = || async {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE key = 'users:5'",
            a.sql_names().table
        )))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(sent_rows().await, 1);
    let cost = quiet_cost(&a, &b).await;
    let received_before = quiet(&a, &b).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'Nope' WHERE id = 5")
        .execute(&mut *tx)
        .await
        .unwrap();
    let done = c3_sqlx::invalidate(&mut *tx, &a, &["users:5"], &[])
        .await
        .unwrap();
    assert!(done.version().is_some());
    tx.rollback().await.unwrap();
    assert_eq!(sent_rows().await, 1, "the cache row survives the rollback");
    assert_eq!(
        quiet(&a, &b).await - received_before,
        cost,
        "B heard nothing but the markers"
    );
    assert!(b.is_cached_locally("users:5"), "B kept its copy");
    assert_eq!(rb.find(&5).await.unwrap().unwrap().name, "Ada");

    let err = c3_sqlx::invalidate(&pool, &a, &["bad\nkey"], &[])
        .await
        .unwrap_err();
    assert!(matches!(err, c3_sqlx::Error::Cache(e) if e.is_invalid_key()));
}

#[tokio::test]
async fn plain_sql_writes_invalidate_every_node_through_the_trigger() {
    let db = TestDb::new("sqlx_trigger").await;
    let pool = pool(&db).await;
    let (a, b) = (db.node().await, db.node().await);
    let (ra, rb) = (
        Repository::<User>::new(a.clone(), pool.clone()),
        Repository::<User>::new(b.clone(), pool.clone()),
    );
    ra.install_trigger().await.unwrap();
    ra.install_trigger().await.unwrap(); // idempotent
    assert!(
        ra.trigger_sql()
            .contains("AFTER INSERT OR UPDATE OR DELETE")
    );

    ra.save(&user(9, "Ada")).await.unwrap();
    for (r, c3) in [(&ra, &a), (&rb, &b)] {
        assert_eq!(r.find(&9).await.unwrap().unwrap().name, "Ada");
        assert!(c3.is_cached_locally("users:9"));
    }
    // Another client, plain SQL, no c3 involved.
    let foreign = support::connect(&db.url).await;
    foreign
        .execute(
            &format!(
                "UPDATE \"{}\".users SET name = 'Grace' WHERE id = 9",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap();
    for (r, c3) in [(&ra, &a), (&rb, &b)] {
        wait_until("the trigger's invalidation lands", DELIVERY, || async {
            !c3.is_cached_locally("users:9")
        })
        .await;
        assert_eq!(r.find(&9).await.unwrap().unwrap().name, "Grace");
    }
    // A cached "no such row" goes when the row is inserted.
    let rp = Repository::<Price>::new(a.clone(), pool.clone());
    rp.install_trigger().await.unwrap();
    assert_eq!(rp.find(&"sku-1".to_owned()).await.unwrap(), None);
    assert!(a.is_cached_locally("prices:sku-1"), "negative entry cached");
    foreign
        .execute(
            &format!("INSERT INTO \"{}\".prices VALUES ('sku-1', 250)", db.schema),
            &[],
        )
        .await
        .unwrap();
    wait_until(
        "the insert invalidates the negative entry",
        DELIVERY,
        || async { !a.is_cached_locally("prices:sku-1") },
    )
    .await;
    assert_eq!(
        rp.find(&"sku-1".to_owned()).await.unwrap().unwrap().cents,
        250
    );

    ra.drop_trigger().await.unwrap();
    ra.drop_trigger().await.unwrap();
    let cost = quiet_cost(&a, &b).await;
    let r = quiet(&a, &b).await;
    foreign
        .execute(
            &format!(
                "UPDATE \"{}\".users SET name = 'Hopper' WHERE id = 9",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(quiet(&a, &b).await - r, cost, "no trigger, no message");
}

#[tokio::test]
async fn a_hundred_concurrent_finds_make_one_select() {
    let db = TestDb::new("sqlx_singleflight").await;
    let pool = pool(&db).await;
    let c3 = db.node().await;
    let repo = Repository::<User>::new(c3.clone(), pool.clone());
    repo.save(&user(3, "Ada")).await.unwrap();
    let before = c3.stats().loads;
    let finds: Vec<_> = (0..100)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.find(&3).await })
        })
        .collect();
    for f in finds {
        assert_eq!(f.await.unwrap().unwrap().unwrap().name, "Ada");
    }
    // Every SELECT runs inside a load; one load means one SELECT.
    assert_eq!(c3.stats().loads - before, 1);
}

#[tokio::test]
async fn an_unavailable_cache_table_falls_back_to_the_database() {
    let db = TestDb::new("sqlx_l2_down").await;
    let pool = pool(&db).await;
    // No L1, so every find has to try L2.
    let c3 = db.builder().l1_max_bytes(0).build().await.unwrap();
    let repo = Repository::<User>::new(c3.clone(), pool.clone());
    repo.save(&user(4, "Ada")).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {} RENAME TO gone",
        c3.sql_names().table
    )))
    .execute(&pool)
    .await
    .unwrap();
    for _ in 0..10 {
        assert_eq!(repo.find(&4).await.unwrap().unwrap().name, "Ada");
    }
    assert!(c3.stats().l2_errors > 0, "L2 was tried and failed");
    assert!(c3.stats().l2_breaker_opened >= 1, "the L2 breaker opened");
}

#[tokio::test]
async fn a_failing_entity_query_is_answered_from_the_fail_safe_window() {
    let db = TestDb::new("sqlx_fail_safe").await;
    let pool = pool(&db).await;
    let clock = ManualClock::new();
    let c3: C3 = db.builder().clock(clock.clone()).build().await.unwrap();
    let repo = Repository::<Price>::new(c3.clone(), pool.clone());
    repo.save(&Price {
        sku: "a".into(),
        cents: 100,
    })
    .await
    .unwrap();
    assert_eq!(
        repo.find(&"a".to_owned()).await.unwrap().unwrap().cents,
        100
    );
    sqlx::raw_sql("ALTER TABLE prices RENAME TO prices_gone")
        .execute(&pool)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(120)); // past the 1 m TTL, within the 1 h window
    let stale = repo.find(&"a".to_owned()).await.unwrap().unwrap();
    assert_eq!(stale.cents, 100, "the last known value");
    assert!(c3.stats().stale_hits >= 1);
    // Without a value in the window, the failure surfaces as a typed error.
    let err = repo.find(&"never-seen".to_owned()).await.unwrap_err();
    assert!(matches!(&err, c3_sqlx::Error::Cache(_)), "{err}");
}

#[tokio::test]
async fn find_by_a_secondary_column_never_answers_from_an_old_mapping() {
    let db = TestDb::new("sqlx_find_by").await;
    let pool = pool(&db).await;
    let c3 = db.node().await;
    let repo = Repository::<User>::new(c3.clone(), pool.clone());
    repo.save(&user(8, "Ada")).await.unwrap();
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let by_email = |email: &'static str| {
        let (repo, queries) = (repo.clone(), queries.clone());
        async move {
            repo.find_by("email", email, move |pool| async move {
                queries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                sqlx::query_as::<_, User>("SELECT id, email, name FROM users WHERE email = $1")
                    .bind(email)
                    .fetch_optional(&pool)
                    .await
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(by_email("ada@example.com").await.unwrap().id, 8);
    assert_eq!(by_email("ada@example.com").await.unwrap().id, 8);
    assert_eq!(
        queries.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "second lookup cached"
    );

    // The email moves: the old address must not find the row any more.
    repo.save(&User {
        id: 8,
        email: "lovelace@example.com".into(),
        name: "Ada".into(),
    })
    .await
    .unwrap();
    assert_eq!(by_email("ada@example.com").await, None);
    assert_eq!(by_email("lovelace@example.com").await.unwrap().id, 8);
}

/// `#[derive(Cached)]` through the facade alone: `crate = "c3::sqlx"` makes
/// the generated code name `::c3::sqlx` instead of `::c3_sqlx`.
mod through_the_facade {
    use c3::sqlx::Cached;

    #[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cached)]
    #[c3(crate = "c3::sqlx", table = "gadgets", key = "id")]
    pub(super) struct Gadget {
        id: i64,
        name: String,
    }

    #[test]
    fn the_derive_works_through_the_facade() {
        assert_eq!(<Gadget as Cached>::cache_key(&7), "gadgets:7");
        assert_eq!(Gadget::ENTITY.table, "\"gadgets\"");
    }
}

/// An HTTP response tagged with an entity's cache key (`Surrogate-Key:
/// users:5`) is purged on every replica by any write to that row: a plain
/// SQL `UPDATE` through the installed trigger, and `save`.
#[tokio::test]
async fn entity_writes_purge_the_http_responses_tagged_with_them() {
    use support::web::{Origin, cache_status, cached, fetch, resp, stored};

    let db = TestDb::new("sqlx_http_tags").await;
    let pool = pool(&db).await;
    let (a, b) = (db.node().await, db.node().await);
    let repo = Repository::<User>::new(a.clone(), pool.clone());
    repo.install_trigger().await.unwrap();
    repo.save(&user(5, "Ada")).await.unwrap();
    let key = Repository::<User>::cache_key(&5);
    let origin = Origin::new(move |_, n| {
        resp(
            &[
                ("cache-control", "max-age=600"),
                ("surrogate-key", "users:5"),
            ],
            format!("page {n}"),
        )
    });
    let (svc_a, svc_b) = (cached(&a, &origin), cached(&b, &origin));
    let url = "http://app.test/users/5/page";
    let cache_both = || async {
        let w = a.stats().writes;
        fetch(&svc_a, url, &[]).await;
        stored(&a, w, 1).await;
        for svc in [&svc_a, &svc_b] {
            let (p, _) = fetch(svc, url, &[]).await;
            assert!(cache_status(&p).contains("hit"), "{}", cache_status(&p));
        }
    };
    let purged_on_both = || async {
        for svc in [&svc_a, &svc_b] {
            wait_until("the tagged response is gone", DELIVERY, || async {
                // only-if-cached: a hit while it is there, a 504 once gone.
                let (p, _) = fetch(svc, url, &[("cache-control", "only-if-cached")]).await;
                !cache_status(&p).contains("hit")
            })
            .await;
        }
    };
    assert_eq!(key, "users:5");

    cache_both().await;
    let foreign = support::connect(&db.url).await;
    foreign
        .execute(
            &format!(
                "UPDATE \"{}\".users SET name = 'Grace' WHERE id = 5",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap();
    purged_on_both().await;

    cache_both().await;
    repo.save(&user(5, "Lovelace")).await.unwrap();
    purged_on_both().await;
}
