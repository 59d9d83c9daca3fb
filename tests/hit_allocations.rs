//! An HTTP L1 hit allocates nothing but the response it returns.
//!
//! A counting global allocator (this test binary's own, hence one test in
//! it: libtest's other threads would be counted too) watches the layer
//! answer hits: every allocation must be one the response's header map
//! needs (its clone of the stored map), nothing for the key, the lookup,
//! the decision, `Age` or `Cache-Status` — for a response that varies
//! (a second lookup, under the request's variant) as for one that does not. The cache's clock stands still,
//! so `Cache-Status: ttl=` does not change between the hits measured.

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use c3::core::ManualClock;
use c3::tower::C3CacheLayer;
use c3::{C3, MemoryServer};
use http::Request;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

async fn handler() -> ([(&'static str, &'static str); 2], &'static str) {
    (
        [
            ("cache-control", "public, max-age=3600"),
            ("content-type", "application/json"),
        ],
        r#"{"id":42,"name":"Ada Lovelace"}"#,
    )
}

fn request(path: &str) -> Request<Body> {
    Request::get(format!(
        "http://api.test{path}?fields=all&expand=team&b=%7e"
    ))
    .header("accept", "application/json")
    .header("user-agent", "bench/1.0")
    .header("accept-encoding", "gzip, br")
    .body(Body::empty())
    .unwrap()
}

/// Calls the service and polls its future once: a hit is ready at once.
fn hit<S>(svc: &mut S, req: Request<Body>) -> S::Response
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("an L1 hit is answered without waiting"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_http_l1_hit_allocates_only_its_response() {
    let c3 = C3::builder()
        .memory(&MemoryServer::new())
        .clock(ManualClock::new())
        .build()
        .await
        .unwrap();
    let router = Router::new()
        .route("/users/{id}", get(handler))
        .route("/varies/{id}", get(varies));
    let mut svc = C3CacheLayer::new(c3.clone()).layer(router);
    for path in ["/users/42", "/varies/42"] {
        stored(&mut svc, path).await;
        only_the_response_allocates(&mut svc, &c3, path);
    }
}

/// A response that varies on `Accept-Encoding`: stored as a marker under
/// the URI and the response under the request's variant.
async fn varies() -> ([(&'static str, &'static str); 3], &'static str) {
    (
        [
            ("cache-control", "public, max-age=3600"),
            ("content-type", "application/json"),
            ("vary", "accept-encoding"),
        ],
        r#"{"id":42}"#,
    )
}

/// Sends `path` until the layer answers it from the cache (a miss stores
/// the response after it went out).
async fn stored<S>(svc: &mut S, path: &str)
where
    S: Service<Request<Body>, Response = http::Response<c3::tower::C3Body<Body>>>,
    S::Error: std::fmt::Debug,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let res = tower::ServiceExt::<Request<Body>>::ready(&mut *svc)
            .await
            .unwrap()
            .call(request(path))
            .await
            .unwrap();
        let hit = res.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit");
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap();
        if hit {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} was never stored"
        );
        tokio::task::yield_now().await;
    }
}

fn only_the_response_allocates<S>(svc: &mut S, c3: &C3, path: &str)
where
    S: Service<Request<Body>, Response = http::Response<c3::tower::C3Body<Body>>>,
    S::Error: std::fmt::Debug,
{
    // Warm this thread's key buffer and status values.
    for _ in 0..3 {
        drop(hit(svc, request(path)));
    }
    const HITS: usize = 200;
    // The count is of the whole process: the cache's own upkeep (moka's
    // maintenance, run on the caller's thread every few dozen reads or when
    // enough time has passed — more often on a loaded machine) may
    // allocate inside a round. It only adds, and a hit that allocated would
    // add to every round: so rounds are repeated (up to five) until one
    // holds nothing but the responses.
    let mut rounds = Vec::new();
    let mut per_response = 0;
    for _ in 0..5 {
        let requests: Vec<_> = (0..HITS).map(|_| request(path)).collect();
        let hits_before = c3.stats().l1_hits;
        let mut responses = Vec::with_capacity(HITS);
        let region = Region::new(GLOBAL);
        for req in requests {
            responses.push(hit(svc, req));
        }
        let during = region.change();
        assert!(
            c3.stats().l1_hits - hits_before >= HITS as u64,
            "{path}: every call hit L1"
        );

        // What the response itself needs: its header map, cloned from the
        // stored one (a map of the same shape as the one it holds).
        let first = &responses[0];
        let status = first.headers()["cache-status"].to_str().unwrap();
        assert!(
            status.starts_with("c3; hit;") && status.ends_with("detail=l1"),
            "{path}: {status}"
        );
        let region = Region::new(GLOBAL);
        let copy = first.headers().clone();
        per_response = region.change().allocations;
        drop(copy);
        assert!(per_response >= 1);
        rounds.push((during.allocations, during.reallocations));
        if during.allocations == HITS * per_response && during.reallocations == 0 {
            return;
        }
    }
    panic!(
        "{path}: no round of {HITS} hits allocated only the responses' header maps \
         ({per_response} each, {} a round); (allocations, reallocations) per round: {rounds:?}",
        HITS * per_response
    );
}
