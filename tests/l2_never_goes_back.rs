//! L2 never goes back in time (PROTOCOL.md §2, "Bounded transactions" and
//! "Every path out of L2").
//!
//! Each test holds one side of a race at its racing moment — a fill's
//! connection frozen mid-transaction, a fill held between its store and its
//! commit, a deletion held between its records and its DELETE, a row swept
//! while a node was away — and judges the outcome from outside: the rows in
//! PostgreSQL and what every node serves.

mod support;

use std::time::Duration;

use c3::core::C3;
use support::proxy::FaultProxy;
use support::{DELIVERY, TestDb, wait_until};

/// How long a test waits for a write that must be acknowledged while a
/// node's link is frozen (the frozen transaction is ended by the server
/// within a third of its caller's 3 s).
const ACK_WITHIN: Duration = Duration::from_secs(15);

/// The frozen filler's operation timeout.
const FILLER_TIMEOUT: Duration = Duration::from_secs(3);

/// The L2 value of `key` (a JSON integer), if a row exists.
async fn l2_value(db: &TestDb, key: &str) -> Option<i64> {
    db.client
        .query_opt(
            &format!(
                "SELECT convert_from(value, 'UTF8')::bigint FROM {} WHERE key = $1",
                db.table()
            ),
            &[&key],
        )
        .await
        .expect("read L2")
        .map(|r| r.get(0))
}

/// Waits until a session runs a statement containing `text` and waits for
/// a lock (the racing side is held at its moment).
async fn waits_for_lock(db: &TestDb, text: &str) {
    let pattern = format!("%{text}%");
    wait_until("the statement waits for a lock", DELIVERY, || async {
        let n: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE $1 AND pid <> pg_backend_pid()",
                &[&pattern],
            )
            .await
            .expect("read pg_stat_activity")
            .get(0);
        n > 0
    })
    .await;
}

/// Sets `key` to `value` on `node` until it is acknowledged.
async fn set_until_acknowledged(node: &C3, key: &str, value: i64) {
    let deadline = tokio::time::Instant::now() + ACK_WITHIN;
    loop {
        match node.set(key, &value).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!(
                "a later set of {key} was never acknowledged while the filler's link was frozen \
                 ({ACK_WITHIN:?}): the frozen transaction still holds the row ({e})"
            ),
        }
    }
}

/// Every node, and a node that starts now, serves `value` for `key`.
async fn everyone_serves(db: &TestDb, nodes: &[&C3], key: &str, value: i64) {
    let fresh = db.node().await;
    for (i, node) in nodes.iter().copied().chain([&fresh]).enumerate() {
        let got = node.get::<i64>(key).await.expect("get");
        assert_eq!(got.as_deref(), Some(&value), "node {i} serves {key}");
    }
}

/// A test's database; node A, the filler, whose pool goes through the
/// returned link (its operations time out after 3 s); node B, a writer with
/// a 1 s operation timeout.
async fn filler_and_writer(name: &str) -> (TestDb, FaultProxy, C3, C3) {
    let db = TestDb::new(name).await;
    let (link, a) = node_through_a_link(&db, FILLER_TIMEOUT).await;
    let b = db
        .builder()
        .op_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    (db, link, a, b)
}

/// A node whose pool goes through a fault link of its own, its operations
/// bounded by `op_timeout`.
async fn node_through_a_link(db: &TestDb, op_timeout: Duration) -> (FaultProxy, C3) {
    let link = FaultProxy::start(support::database_addr()).await;
    let node = db
        .pool_through(&link)
        .op_timeout(op_timeout)
        .build()
        .await
        .unwrap();
    (link, node)
}

/// A filler (node A, its pool through `link`) stores `key` and its link
/// freezes right after the fill's upsert ran: the transaction stays open
/// on the server, holding the row. Returns the fill in flight.
async fn freeze_a_fill(
    a: &C3,
    link: &FaultProxy,
    key: &'static str,
) -> tokio::task::JoinHandle<c3::core::Result<bool>> {
    // A must have heard the write before: else that notification, arriving
    // during the fill, would void it before it reached L2.
    wait_until("A heard the first write", DELIVERY, || async {
        a.stats().invalidations_received > 0
    })
    .await;
    let fill = a.begin_fill(&[key]).await.expect("fence");
    // The upsert returns the key: its reply is where the link freezes.
    link.freeze_on_reply(key.as_bytes());
    let filling = tokio::spawn(async move { fill.store(key, &0i64, None, &[]).await });
    wait_until(
        "the fill's link froze mid-transaction",
        DELIVERY,
        || async { link.frozen() == 1 },
    )
    .await;
    filling
}

#[tokio::test]
async fn a_fill_frozen_mid_transaction_holds_back_no_later_write() {
    const KEY: &str = "frozen:key";
    let (db, link, a, b) = filler_and_writer("frozen_fill").await;
    b.set(KEY, &1i64).await.unwrap();

    let filling = freeze_a_fill(&a, &link, KEY).await;
    // B's write queues behind the frozen transaction's row lock; its caller
    // is told it failed...
    assert!(
        b.set(KEY, &2i64).await.is_err(),
        "the row is locked by the frozen fill"
    );
    // ...and a later write is acknowledged while the link is still frozen.
    set_until_acknowledged(&b, KEY, 3).await;
    assert_eq!(link.frozen(), 1, "the link was frozen throughout");

    link.thaw();
    let _ = filling.await;
    db.quiet().await;
    assert_eq!(
        l2_value(&db, KEY).await,
        Some(3),
        "L2 holds the last acknowledged write"
    );
    everyone_serves(&db, &[&a, &b], KEY, 3).await;
}

#[tokio::test]
async fn a_combined_batch_behind_a_frozen_fill_never_commits_after_its_callers_gave_up() {
    const KEY: &str = "frozen:batch";
    const FREE: &str = "free:batch";
    let (db, link, a, b) = filler_and_writer("frozen_batch").await;
    b.set_many(&[(KEY, 1i64), (FREE, 1i64)]).await.unwrap();

    let filling = freeze_a_fill(&a, &link, KEY).await;
    // One batch of the write combiner: the locked key first, so the
    // statement waits before it touches the free one.
    assert!(
        b.set_many(&[(KEY, 2i64), (FREE, 2i64)]).await.is_err(),
        "the batch waits for the frozen fill's row"
    );
    // The free key is written and acknowledged at once...
    b.set(FREE, &3i64).await.unwrap();
    // ...and the locked one once the server has ended the frozen fill.
    set_until_acknowledged(&b, KEY, 3).await;
    assert_eq!(link.frozen(), 1, "the link was frozen throughout");

    link.thaw();
    let _ = filling.await;
    db.quiet().await;
    for key in [KEY, FREE] {
        assert_eq!(
            l2_value(&db, key).await,
            Some(3),
            "L2 holds the last acknowledged write of {key}, not the batch its caller gave up on"
        );
        everyone_serves(&db, &[&a, &b], key, 3).await;
    }
}

/// The invalidation function, called by a foreign client while a fill that
/// stored a row tagged `T` is held between its store and its commit.
async fn function_against_a_held_fill(name: &str, keys: &[&str]) {
    const KEY: &str = "held:fill";
    let db = TestDb::new(name).await;
    let (link, a) = node_through_a_link(&db, Duration::from_secs(30)).await;
    let fill = a.begin_fill(&[KEY]).await.unwrap();
    // The fill's upsert has run (row and tag stored, uncommitted) when its
    // reply, carrying the key, is held: the COMMIT waits behind it.
    link.hold_replies(KEY.as_bytes());
    let filling = tokio::spawn(async move { fill.store(KEY, &0i64, None, &["T"]).await });
    wait_until("the fill's upsert ran", DELIVERY, || async {
        link.held() > 0
    })
    .await;

    let deleter = support::connect(&db.url).await;
    let function = a.sql_names().invalidate_function.clone();
    let call = format!("SELECT {function}($1, $2::text[], ARRAY['T'])");
    let channel = db.channel.clone();
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    let deleting = tokio::spawn(async move {
        deleter
            .query_one(&call, &[&channel, &keys])
            .await
            .map(|r| r.get::<_, Option<i64>>(0))
    });
    // The deletion waits for the fill's lock on the tag's record.
    waits_for_lock(&db, &format!("{}\".\"cache_data_invalidate", db.schema)).await;
    link.forward();
    assert!(
        filling.await.unwrap().unwrap(),
        "the fill was stored: it read before the deletion began"
    );
    let version = deleting.await.unwrap().expect("the invalidation function");
    assert!(version.is_some(), "the function found the tagged row");
    db.quiet().await;
    assert_eq!(
        l2_value(&db, KEY).await,
        None,
        "the row the fill stored, tagged T, went with the tag's invalidation"
    );
    wait_until("A drops what it filled", DELIVERY, || async {
        a.get::<i64>(KEY).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn the_function_deletes_a_tagged_fill_held_before_its_commit() {
    function_against_a_held_fill("fn_tag_fill", &[]).await;
}

#[tokio::test]
async fn the_function_with_keys_and_tags_deletes_a_tagged_fill_held_before_its_commit() {
    function_against_a_held_fill("fn_keys_tag_fill", &["other:key"]).await;
}

#[tokio::test]
async fn a_key_tagged_between_invalidate_tags_records_and_its_delete_is_recorded() {
    let db = TestDb::new("tag_between").await;
    let n = db
        .builder()
        .op_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    n.set_tagged("x", &1i64, None, &["T"]).await.unwrap();
    // A filler of `x` holds its deletion record (as statement 2 of a fill
    // does): the tag invalidation waits right before its DELETE.
    let holder = support::connect(&db.url).await;
    let deleted = format!("\"{}\".cache_data_deleted", db.schema);
    holder
        .batch_execute(&format!(
            "INSERT INTO {deleted} (key, xid) VALUES ('x', '0') ON CONFLICT DO NOTHING; \
             BEGIN; SELECT 1 FROM {deleted} WHERE key = 'x' FOR SHARE"
        ))
        .await
        .unwrap();
    let inv = {
        let n = n.clone();
        tokio::spawn(async move { n.invalidate_tag("T").await })
    };
    waits_for_lock(
        &db,
        &format!("{}\".\"cache_data_deleted\" (key, xid", db.schema),
    )
    .await;
    // Meanwhile a writer tags another key.
    let w = db.node().await;
    w.set_tagged("y", &1i64, None, &["T"]).await.unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    let removed = inv.await.unwrap().unwrap();
    assert_eq!(removed, 2, "both tagged keys were deleted");
    assert_eq!(l2_value(&db, "y").await, None);
    let recorded: Option<String> = db
        .client
        .query_opt(
            &format!("SELECT xid::text FROM {deleted} WHERE key = 'y'"),
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert!(
        recorded.is_some_and(|x| x != "0"),
        "the deletion of y is recorded (a replaying node and a fill fenced before it need it)"
    );
}

/// Writes `key` with a 1 s TTL on `writer` (whose clock is `clock` and
/// which sweeps), moves its clock past that, and waits for the sweep.
async fn written_then_swept(db: &TestDb, writer: &C3, clock: &c3::core::ManualClock, key: &str) {
    writer
        .set_with_ttl(key, &2i64, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    wait_until("the sweeper removed the expired row", DELIVERY, || async {
        l2_value(db, key).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_newer_row_swept_during_an_outage_is_dropped_by_the_warm_replay() {
    const KEY: &str = "swept:key";
    let db = TestDb::new("swept_replay").await;
    let link = FaultProxy::start(support::database_addr()).await;
    let a = db
        .listening_through(&link)
        .warm_reconnect(true)
        .build()
        .await
        .unwrap();
    let clock = c3::core::ManualClock::new();
    let b = db
        .builder()
        .clock(clock.clone())
        .sweep_interval(Some(Duration::from_millis(50)))
        .build()
        .await
        .unwrap();
    a.set(KEY, &1i64).await.unwrap();
    assert!(a.is_cached_locally(KEY));

    link.drop_all();
    wait_until("A lost its LISTEN link", DELIVERY, || async {
        a.listener_state() != c3::core::ListenerState::Listening
    })
    .await;
    let replays = a.stats().warm_reconnects;
    written_then_swept(&db, &b, &clock, KEY).await;
    link.forward();
    wait_until("A replayed the change log", DELIVERY, || async {
        a.stats().warm_reconnects > replays
    })
    .await;
    assert_eq!(
        a.get::<i64>(KEY).await.unwrap(),
        None,
        "A must not serve its older value of a key written (and expired) while it was away"
    );
}

#[tokio::test]
async fn a_fill_fenced_before_a_write_is_refused_after_that_write_was_swept() {
    const KEY: &str = "swept:fill";
    let db = TestDb::new("swept_fill").await;
    // A does not hear the write (its LISTEN link holds every byte): only L2
    // can refuse its fill.
    let link = FaultProxy::start(support::database_addr()).await;
    let a = db.listening_through(&link).build().await.unwrap();
    let clock = c3::core::ManualClock::new();
    let b = db
        .builder()
        .clock(clock.clone())
        .sweep_interval(Some(Duration::from_millis(50)))
        .build()
        .await
        .unwrap();
    let fill = a.begin_fill(&[KEY]).await.unwrap();
    link.blackhole();
    let heard = a.stats().invalidations_received;
    written_then_swept(&db, &b, &clock, KEY).await;
    let stored = fill.store(KEY, &1i64, None, &[]).await.unwrap();
    assert_eq!(
        a.stats().invalidations_received,
        heard,
        "A heard nothing of the write"
    );
    assert!(!stored, "the fill read before a write it must not undo");
    assert_eq!(l2_value(&db, KEY).await, None);
}

#[tokio::test]
async fn the_function_refuses_a_repeatable_read_caller() {
    let db = TestDb::new("fn_rr").await;
    let n = db.node().await;
    n.set("rr:key", &1i64).await.unwrap();
    let caller = support::connect(&db.url).await;
    caller
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let function = n.sql_names().invalidate_function.clone();
    let err = caller
        .query_one(
            &format!("SELECT {function}($1, ARRAY['rr:key'])"),
            &[&db.channel],
        )
        .await
        .expect_err("refused");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "25000");
    assert!(
        db_err.message().contains("READ COMMITTED"),
        "{}",
        db_err.message()
    );
    caller.batch_execute("ROLLBACK").await.unwrap();
    // Nothing happened: the business transaction could not commit with it.
    assert_eq!(l2_value(&db, "rr:key").await, Some(1));
}

/// Under `C3_TEST_ISOLATION` (scripts/test.sh's second phase), the nodes'
/// sessions really default to that isolation — c3 begins READ COMMITTED
/// explicitly or fails the phase; without it, to the server's default.
#[tokio::test]
async fn the_isolation_phase_is_in_effect() {
    let level = std::env::var("C3_TEST_ISOLATION").unwrap_or_else(|_| "read committed".into());
    let client = support::connect(&support::node_url(&support::database_url())).await;
    let shown: String = client
        .query_one("SHOW default_transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, level);
}

/// A fill whose fence could not be taken keeps values in this node's L1
/// only — and only for keys named in `begin_fill`: a key named later gets
/// its token then, after the read, and could keep a value older than a
/// write this node applied meanwhile.
#[tokio::test]
async fn an_unfenced_fill_keeps_only_the_keys_named_before_the_read() {
    let db = TestDb::new("late_token").await;
    let (link, a) = node_through_a_link(&db, Duration::from_millis(500)).await;
    link.blackhole(); // L2 cannot answer: no fence
    let fill = a.begin_fill(&["named"]).await.unwrap();
    assert!(!fill.is_fenced());
    assert!(!fill.store("named", &1i64, None, &[]).await.unwrap());
    assert!(!fill.store("late", &1i64, None, &[]).await.unwrap());
    assert!(
        a.is_cached_locally("named"),
        "a named key is kept in L1, at version 0"
    );
    assert!(
        !a.is_cached_locally("late"),
        "a key named after the read is not kept unfenced"
    );
    link.forward();
}

/// A node that goes silent while it holds a key's cross-node load lock
/// (`LoadOptions::cluster_lock`) loses the lock to the server within the
/// load's bound — its hard timeout plus two operation timeouts — instead
/// of holding it for the other nodes until TCP gives up. Node A's pool
/// goes through a link that freezes while its loader runs: the lock's
/// transaction sits idle on the server; the advisory lock must be gone
/// before the deadline.
#[tokio::test]
async fn a_frozen_nodes_load_lock_is_released_by_the_server() {
    let db = TestDb::new("frozen_load_lock").await;
    let (link, a) = node_through_a_link(&db, Duration::from_secs(1)).await;
    let hard = Duration::from_secs(2);
    let opts = c3::core::LoadOptions::new()
        .cluster_lock(Duration::from_secs(1))
        .hard_timeout(hard);
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let loading = {
        let (a, started) = (a.clone(), std::sync::Arc::clone(&started));
        tokio::spawn(async move {
            a.get_or_load::<i64, _, _, std::io::Error>("hot", &opts, move || async move {
                started.notify_one();
                std::future::pending().await
            })
            .await
        })
    };
    started.notified().await;
    // The key's advisory lock (`c3:load:<schema>.<table>:<key>`, hashed):
    // its low 32 bits are the lock's `objid`.
    let lock_name = format!("c3:load:{}.cache_data:hot", db.schema);
    let held = || async {
        let row = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 AND objid = (hashtext($1)::bigint & 4294967295)::oid",
                &[&lock_name],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert_eq!(held().await, 1, "A holds the key's load lock while loading");
    link.freeze_all();
    // The bound: the hard timeout and two operation timeouts (the L2 read
    // before the load, the store after it), and the server's own slack.
    wait_until(
        "the server ends the frozen node's lock",
        hard + Duration::from_secs(2) + Duration::from_secs(5),
        || async { held().await == 0 },
    )
    .await;
    link.thaw();
    let _ = loading.await;
}

/// A fill whose fence is older than the deletion records can vouch for is
/// refused (PROTOCOL.md, "Fills": a deletion after the fence may have been
/// recorded and swept since). The 30-minute bound is shortened to 500 ms
/// (`fence_max_age`, feature `test-util`); a fill stored right after its
/// fence goes in, one stored after the bound does not.
#[tokio::test]
async fn a_fill_through_a_fence_older_than_the_records_vouch_for_is_refused() {
    let db = TestDb::new("old_fence").await;
    let max_age = Duration::from_millis(500);
    let a = db.builder().fence_max_age(max_age).build().await.unwrap();
    let fresh = a.begin_fill(&["k:fresh"]).await.unwrap();
    assert!(
        fresh.store("k:fresh", &1i64, None, &[]).await.unwrap(),
        "a fill right after its fence is stored"
    );
    let old = a.begin_fill(&["k:old"]).await.unwrap();
    let taken = std::time::Instant::now();
    // The fence's age is measured on the server's clock, the same clock as
    // this host's here: past the bound by a margin, it is old there too.
    tokio::time::sleep_until((taken + max_age * 2).into()).await;
    assert!(
        !old.store("k:old", &1i64, None, &[]).await.unwrap(),
        "a fill through a fence older than the bound was stored"
    );
    assert!(db.row_version("k:old").await.is_none(), "nothing in L2");
}
