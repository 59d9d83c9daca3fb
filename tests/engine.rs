//! The engine's contract, held by both stores through the same interfaces:
//! every scenario here runs twice — on PostgreSQL (`postgres/`'s store and
//! its LISTEN feed) and on the in-process `MemoryServer` (its store and its
//! broadcast feed) — with the same two nodes' code. A scenario that holds on
//! one store and not the other means a store or a feed breaks what the
//! engine relies on (PROTOCOL.md §2–§3), whatever the engine does above it.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use c3::C3;
use c3::core::{ListenerState, LoadOptions, MemoryServer};
use support::{DELIVERY, TestDb, wait_until};

/// Runs `scenario` on two PostgreSQL nodes, then on two nodes sharing a
/// `MemoryServer`.
async fn on_both_stores<F, Fut>(name: &str, scenario: F)
where
    F: Fn(&'static str, Vec<C3>) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TestDb::new(name).await;
    scenario("postgresql", db.nodes(2).await).await;
    let server = MemoryServer::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(C3::builder().memory(&server).build().await.unwrap());
    }
    scenario("memory", nodes).await;
}

#[tokio::test]
async fn a_write_on_one_node_replaces_the_other_nodes_copy() {
    on_both_stores("engine_write", |store, nodes| async move {
        let (a, b) = (&nodes[0], &nodes[1]);
        assert_eq!(a.listener_state(), ListenerState::Listening, "{store}");
        a.set("user:1", &"v1".to_owned()).await.unwrap();
        assert_eq!(*b.get::<String>("user:1").await.unwrap().unwrap(), "v1");
        assert!(b.is_cached_locally("user:1"), "{store}: B filled its L1");
        a.set("user:1", &"v2".to_owned()).await.unwrap();
        wait_until("B drops v1", DELIVERY, || async {
            !b.is_cached_locally("user:1")
        })
        .await;
        assert_eq!(
            *b.get::<String>("user:1").await.unwrap().unwrap(),
            "v2",
            "{store}"
        );
        a.delete("user:1").await.unwrap();
        wait_until("B drops v2", DELIVERY, || async {
            !b.is_cached_locally("user:1")
        })
        .await;
        assert!(
            b.get::<String>("user:1").await.unwrap().is_none(),
            "{store}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_tag_invalidation_removes_every_tagged_entry_everywhere() {
    on_both_stores("engine_tags", |store, nodes| async move {
        let (a, b) = (&nodes[0], &nodes[1]);
        for k in ["p:1", "p:2"] {
            a.set_tagged(k, &k.to_owned(), None, &["products"])
                .await
                .unwrap();
            assert!(b.get::<String>(k).await.unwrap().is_some(), "{store}");
        }
        a.set("other", &"stays".to_owned()).await.unwrap();
        assert_eq!(a.invalidate_tag("products").await.unwrap(), 2, "{store}");
        wait_until("B drops the tagged keys", DELIVERY, || async {
            !b.is_cached_locally("p:1") && !b.is_cached_locally("p:2")
        })
        .await;
        for k in ["p:1", "p:2"] {
            assert!(b.get::<String>(k).await.unwrap().is_none(), "{store}: {k}");
        }
        assert!(b.get::<String>("other").await.unwrap().is_some(), "{store}");
    })
    .await;
}

#[tokio::test]
async fn a_fill_fenced_before_a_write_on_another_node_is_refused() {
    on_both_stores("engine_fence", |store, nodes| async move {
        let (a, b) = (&nodes[0], &nodes[1]);
        // B reads its source (fence first), then A writes, then B stores
        // what it read: older than A's write, so L2 refuses it.
        let fill = b.begin_fill(&["acct:1"]).await.unwrap();
        a.set("acct:1", &100_u32).await.unwrap();
        let stored = fill.store("acct:1", &50_u32, None, &[]).await.unwrap();
        assert!(!stored, "{store}: a fill older than a write was stored");
        wait_until("B hears A's write", DELIVERY, || async {
            b.get::<u32>("acct:1").await.unwrap().as_deref() == Some(&100)
        })
        .await;
        // A fill fenced after the write goes in.
        let fill = b.begin_fill(&["acct:2"]).await.unwrap();
        assert!(
            fill.store("acct:2", &7_u32, None, &[]).await.unwrap(),
            "{store}"
        );
        assert_eq!(
            *a.get::<u32>("acct:2").await.unwrap().unwrap(),
            7,
            "{store}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_load_runs_once_per_node_and_its_value_is_shared_through_l2() {
    on_both_stores("engine_load", |store, nodes| async move {
        let (a, b) = (&nodes[0], &nodes[1]);
        let calls = Arc::new(AtomicUsize::new(0));
        let opts = LoadOptions::new();
        let load = |node: &C3| {
            let calls = Arc::clone(&calls);
            let (node, opts) = (node.clone(), opts.clone());
            async move {
                node.get_or_load::<String, _, _, std::io::Error>("cfg", &opts, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(Some("loaded".to_owned()))
                })
                .await
                .unwrap()
            }
        };
        let (x, y) = tokio::join!(load(a), load(a));
        assert_eq!(
            (x.unwrap().as_str(), y.unwrap().as_str()),
            ("loaded", "loaded")
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{store}: one load per node"
        );
        // B finds A's load in L2 and does not call its source.
        assert_eq!(load(b).await.unwrap().as_str(), "loaded", "{store}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{store}: B read L2");
    })
    .await;
}

#[tokio::test]
async fn get_many_and_set_many_read_what_another_node_wrote() {
    on_both_stores("engine_many", |store, nodes| async move {
        let (a, b) = (&nodes[0], &nodes[1]);
        a.set_many(&[("m:1", 1_u32), ("m:2", 2)]).await.unwrap();
        let got = b.get_many::<u32>(&["m:1", "m:2", "m:3"]).await.unwrap();
        let got: Vec<Option<u32>> = got.into_iter().map(|v| v.map(|v| *v)).collect();
        assert_eq!(got, [Some(1), Some(2), None], "{store}");
        a.set_many(&[("m:1", 10_u32)]).await.unwrap();
        wait_until("B drops m:1", DELIVERY, || async {
            !b.is_cached_locally("m:1")
        })
        .await;
        assert_eq!(*b.get::<u32>("m:1").await.unwrap().unwrap(), 10, "{store}");
        assert!(b.is_cached_locally("m:2"), "{store}: m:2 was not touched");
    })
    .await;
}
