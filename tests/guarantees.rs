//! README "What c3 guarantees", for the promises no other test file holds:
//! an L1 hit decodes nothing, a pushed value is decoded once, a pushed
//! value's expiry is judged by the receiving cache's clock, and bad input is
//! rejected before any I/O.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use c3::core::{C3, ManualClock, MemoryServer};
use serde::{Deserialize, Deserializer, Serialize};
use support::{DELIVERY, wait_until};

/// Values that count their own decodings (one counter per test: tests run
/// in parallel).
macro_rules! counted {
    ($name:ident, $counter:ident) => {
        static $counter: AtomicUsize = AtomicUsize::new(0);

        #[derive(Debug, Serialize, PartialEq)]
        struct $name(u64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $counter.fetch_add(1, Ordering::SeqCst);
                u64::deserialize(d).map($name)
            }
        }
    };
}

counted!(Plain, PLAIN_DECODES);
counted!(Pushed, PUSHED_DECODES);

#[tokio::test]
async fn an_l1_hit_decodes_nothing() {
    let db = MemoryServer::new();
    let (a, b) = (
        C3::builder().memory(&db).build().await.unwrap(),
        C3::builder().memory(&db).build().await.unwrap(),
    );
    a.set("k", &Plain(7)).await.unwrap();
    let before = PLAIN_DECODES.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(
            b.get::<Plain>("k").await.unwrap().as_deref(),
            Some(&Plain(7))
        );
    }
    assert_eq!(
        PLAIN_DECODES.load(Ordering::SeqCst) - before,
        1,
        "one decode for the L2 read, none for the 99 L1 hits"
    );
    assert_eq!(b.stats().l1_hits, 99);
}

async fn pushed_kept(node: &C3, before: u64) {
    wait_until("the pushed value is kept", DELIVERY, || async {
        node.stats().pushed_values_kept > before
    })
    .await;
}

#[tokio::test]
async fn a_pushed_value_is_decoded_once_on_its_first_read() {
    let db = MemoryServer::new();
    let a = C3::builder()
        .memory(&db)
        .push_values("flag:")
        .build()
        .await
        .unwrap();
    let b = C3::builder().memory(&db).build().await.unwrap();
    let kept = b.stats().pushed_values_kept;
    a.set("flag:x", &Pushed(3)).await.unwrap();
    pushed_kept(&b, kept).await;
    let before = PUSHED_DECODES.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(
            b.get::<Pushed>("flag:x").await.unwrap().as_deref(),
            Some(&Pushed(3))
        );
    }
    assert_eq!(PUSHED_DECODES.load(Ordering::SeqCst) - before, 1);
    assert_eq!(b.stats().l2_hits, 0, "the pushed value spared the L2 read");
}

#[tokio::test]
async fn a_pushed_values_expiry_is_judged_by_the_receivers_clock() {
    let db = MemoryServer::new();
    let (clock_a, clock_b) = (ManualClock::new(), ManualClock::new());
    let a = C3::builder()
        .memory(&db)
        .clock(clock_a)
        .push_values("flag:")
        .build()
        .await
        .unwrap();
    let b = C3::builder()
        .memory(&db)
        .clock(clock_b.clone())
        .build()
        .await
        .unwrap();
    // Fresh for A (and the wall clock), in the past for B.
    clock_b.advance(Duration::from_secs(61));
    let kept = b.stats().pushed_values_kept;
    a.set_with_ttl("flag:y", &1u8, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    // A second push, long-lived, as a barrier: messages arrive in order.
    a.set_with_ttl("flag:z", &2u8, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    pushed_kept(&b, kept).await;
    assert!(b.is_cached_locally("flag:z"));
    assert_eq!(
        b.stats().pushed_values_kept - kept,
        1,
        "B did not keep a value its own clock says has expired"
    );
    assert!(!b.is_cached_locally("flag:y"));
    assert_eq!(b.get::<u8>("flag:y").await.unwrap(), None);
}

#[tokio::test]
async fn bad_input_is_rejected_before_any_io() {
    use support::proxy::FaultProxy;

    let db = support::TestDb::new("before_io").await;
    let link = FaultProxy::start(support::database_addr()).await;
    let node = db
        .pool_through(&link)
        .op_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    // Any I/O would now hang until the 5 s timeout.
    link.blackhole();
    let started = Instant::now();
    for key in ["", "c3|x", "a\u{1}b", &"k".repeat(2_000)] {
        let e = node.get::<u8>(key).await.unwrap_err();
        assert!(e.is_invalid_key(), "{key:?}: {e}");
        let e = node.set(key, &1u8).await.unwrap_err();
        assert!(e.is_invalid_key(), "{key:?}: {e}");
        let e = node.begin_fill(&[key]).await.unwrap_err();
        assert!(e.is_invalid_key(), "{key:?}: {e}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered without waiting on L2: {:?}",
        started.elapsed()
    );
    assert_eq!(node.stats().l2_errors, 0);
    link.forward();
}
