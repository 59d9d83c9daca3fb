//! `get_or_load`'s rules on one node (or two sharing an in-process L2):
//! singleflight, the loader breaker and fail-safe answers, soft timeouts,
//! eager refresh, negative caching. The source is a scripted in-process one
//! and the cache's clock a manual one: PostgreSQL adds nothing here. The
//! workspace's `tests/cache_aside.rs` keeps what needs it — the cluster lock,
//! L2 failing, races with writes on other nodes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use c3_core::{BreakerConfig, BreakerState, C3, ErrorKind, LoadOptions, ManualClock, MemoryServer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user(name: &str) -> User {
    User {
        id: 1,
        name: name.into(),
    }
}

/// What the source answers to one call, after an optional delay.
#[derive(Clone)]
enum Answer {
    Found(&'static str),
    NotFound,
    Fails(u16),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type LoadFuture = Pin<Box<dyn Future<Output = Result<Option<User>, BoxError>> + Send>>;

/// A source of truth that answers from a script: the first entries once
/// each, in order; the last one for every call after them. Counts its calls.
#[derive(Clone)]
struct Source {
    script: Arc<Mutex<Vec<(Answer, Duration)>>>,
    calls: Arc<AtomicUsize>,
}

impl Source {
    fn new(script: &[(Answer, Duration)]) -> Source {
        Source {
            script: Arc::new(Mutex::new(script.to_vec())),
            calls: Arc::default(),
        }
    }

    /// From now on, every call answers `answer`.
    fn answer_from_now(&self, answer: Answer) {
        *self.script.lock().unwrap() = vec![(answer, Duration::ZERO)];
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// One call's loader, for `get_or_load`.
    fn loader(&self) -> impl FnOnce() -> LoadFuture + Send + 'static {
        let s = self.clone();
        move || {
            Box::pin(async move {
                s.calls.fetch_add(1, Ordering::SeqCst);
                let (answer, delay) = {
                    let mut script = s.script.lock().unwrap();
                    if script.len() > 1 {
                        script.remove(0)
                    } else {
                        script[0].clone()
                    }
                };
                tokio::time::sleep(delay).await;
                match answer {
                    Answer::Found(name) => Ok(Some(user(name))),
                    Answer::NotFound => Ok(None),
                    Answer::Fails(status) => Err(format!("upstream answered {status}").into()),
                }
            })
        }
    }
}

const NOW: Duration = Duration::ZERO;

async fn node(server: &MemoryServer, clock: &ManualClock) -> C3 {
    C3::builder()
        .memory(server)
        .clock(clock.clone())
        .build()
        .await
        .unwrap()
}

/// Polls `cond` until it holds, failing after ten seconds.
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_source_call() {
    let a = node(&MemoryServer::new(), &ManualClock::new()).await;
    let source = Source::new(&[(Answer::Found("Ada"), Duration::from_millis(200))]);
    let opts = LoadOptions::new();
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let (a, loader, opts) = (a.clone(), source.loader(), opts.clone());
            tokio::spawn(async move { a.get_or_load("user:1", &opts, loader).await })
        })
        .collect();
    for c in calls {
        assert_eq!(*c.await.unwrap().unwrap().unwrap(), user("Ada"));
    }
    assert_eq!(a.stats().loads, 1);
    // Cached now: more calls stay local.
    for _ in 0..10 {
        a.get_or_load("user:1", &opts, source.loader())
            .await
            .unwrap();
    }
    assert_eq!(source.calls(), 1);
}

#[tokio::test]
async fn a_failing_source_opens_the_breaker_and_stale_values_are_served() {
    let clock = ManualClock::new();
    let a = C3::builder()
        .memory(&MemoryServer::new())
        .clock(clock.clone())
        .loader_breaker(BreakerConfig::new(3, Duration::from_millis(500)))
        .build()
        .await
        .unwrap();
    let source = Source::new(&[(Answer::Found("v1"), NOW), (Answer::Fails(500), NOW)]);
    let opts = LoadOptions::new()
        .ttl(Some(Duration::from_secs(10)))
        .fail_safe(Duration::from_secs(3600))
        .source("users-api");
    let load = || a.get_or_load("user:1", &opts, source.loader());
    assert_eq!(*load().await.unwrap().unwrap(), user("v1"));
    assert_eq!(source.calls(), 1);

    clock.advance(Duration::from_secs(11)); // v1 is now stale, within the window
    for i in 0..3 {
        assert_eq!(
            *load().await.unwrap().unwrap(),
            user("v1"),
            "stale answer {i}"
        );
    }
    assert_eq!(
        source.calls(),
        4,
        "three failed attempts reached the source"
    );
    assert_eq!(a.loader_breaker_state("users-api"), BreakerState::Open);
    assert_eq!(a.stats().loader_breaker_opened, 1);

    // While open: answers keep coming, the source sees nothing.
    for _ in 0..20 {
        assert_eq!(*load().await.unwrap().unwrap(), user("v1"));
    }
    assert_eq!(source.calls(), 4, "no calls while the breaker is open");
    assert!(a.stats().stale_hits >= 23);

    // Without a fail-safe window the failure is a typed error.
    let strict = LoadOptions::new().source("users-api");
    let err = a
        .get_or_load("user:2", &strict, source.loader())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);

    // The source recovers; after the cool-down exactly one probe goes through.
    source.answer_from_now(Answer::Found("v2"));
    let before = source.calls();
    wait_until(
        "the probe after the cool-down refreshes the value",
        || async { *load().await.unwrap().unwrap() == user("v2") },
    )
    .await;
    assert_eq!(source.calls(), before + 1, "one probe");
    assert_eq!(a.loader_breaker_state("users-api"), BreakerState::Closed);
    assert_eq!(*load().await.unwrap().unwrap(), user("v2"));
    assert_eq!(source.calls(), before + 1, "fresh again: served from cache");
}

#[tokio::test]
async fn a_failing_source_without_stale_value_is_a_loader_error() {
    let a = node(&MemoryServer::new(), &ManualClock::new()).await;
    let source = Source::new(&[(Answer::Fails(503), NOW)]);
    for _ in 0..2 {
        let err = a
            .get_or_load("user:1", &LoadOptions::new(), source.loader())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Loader);
        assert!(err.to_string().contains("503"), "{err}");
    }
    // Errors are not cached: the second call reached the source again.
    assert_eq!(source.calls(), 2);
}

#[tokio::test]
async fn a_slow_source_past_the_soft_timeout_gets_stale_now_and_fresh_later() {
    let clock = ManualClock::new();
    let a = node(&MemoryServer::new(), &clock).await;
    let source = Source::new(&[
        (Answer::Found("v1"), NOW),
        (Answer::Found("v2"), Duration::from_millis(1500)),
    ]);
    let opts = LoadOptions::new()
        .ttl(Some(Duration::from_secs(10)))
        .fail_safe(Duration::from_secs(600))
        .soft_timeout(Duration::from_millis(100));
    let got = a.get_or_load("u", &opts, source.loader()).await.unwrap();
    assert_eq!(*got.unwrap(), user("v1"));
    clock.advance(Duration::from_secs(11));

    let started = Instant::now();
    let got = a
        .get_or_load("u", &opts, source.loader())
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(*got, user("v1"), "stale answer at the soft timeout");
    assert!(
        took < Duration::from_millis(1400),
        "did not wait for the slow source: {took:?}"
    );

    wait_until("the slow answer lands in the cache", || async {
        a.get::<User>("u").await.unwrap().as_deref() == Some(&user("v2"))
    })
    .await;
    assert_eq!(source.calls(), 2);
}

#[tokio::test]
async fn eager_refresh_reloads_a_hot_key_before_it_expires_once_per_refresh() {
    let clock = ManualClock::new();
    let a = node(&MemoryServer::new(), &clock).await;
    let source = Source::new(&[
        (Answer::Found("v1"), NOW),
        (Answer::Found("v2"), Duration::from_millis(100)),
    ]);
    let opts = LoadOptions::new()
        .ttl(Some(Duration::from_secs(10)))
        .eager_refresh(0.5);
    let load = || a.get_or_load("hot", &opts, source.loader());
    assert_eq!(*load().await.unwrap().unwrap(), user("v1"));
    clock.advance(Duration::from_secs(4));
    load().await.unwrap();
    assert_eq!(source.calls(), 1, "before the refresh point: no reload");

    clock.advance(Duration::from_secs(2)); // 60% of the TTL
    for _ in 0..20 {
        // Hits keep answering (v1) while one refresh runs in the background.
        assert!(load().await.unwrap().is_some());
    }
    wait_until("the refreshed value is cached", || async {
        a.get::<User>("hot").await.unwrap().as_deref() == Some(&user("v2"))
    })
    .await;
    for _ in 0..20 {
        assert_eq!(*load().await.unwrap().unwrap(), user("v2"));
    }
    assert_eq!(source.calls(), 2, "exactly one source call for the refresh");
}

#[tokio::test]
async fn not_found_is_cached_when_negative_caching_is_on() {
    let (server, clock) = (MemoryServer::new(), ManualClock::new());
    let nodes = [node(&server, &clock).await, node(&server, &clock).await];
    let source = Source::new(&[(Answer::NotFound, NOW)]);
    let opts = LoadOptions::new().negative_ttl(Duration::from_secs(30));
    for n in nodes.iter().chain(nodes.iter()) {
        let got = n.get_or_load("user:404", &opts, source.loader()).await;
        assert!(got.unwrap().is_none());
    }
    assert!(nodes[1].get::<User>("user:404").await.unwrap().is_none());
    assert_eq!(source.calls(), 1, "the second node read the negative entry");
    // Past its TTL the negative entry is gone and the source is asked again.
    clock.advance(Duration::from_secs(31));
    let got = nodes[0]
        .get_or_load("user:404", &opts, source.loader())
        .await;
    assert!(got.unwrap().is_none());
    assert_eq!(source.calls(), 2);
}
