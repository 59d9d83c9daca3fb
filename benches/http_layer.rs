//! The cost of `C3CacheLayer` on an L1 hit, against the same axum handler
//! without the layer, in one run.
//!
//! ```text
//! cargo bench --bench http_layer
//! ```
//!
//! Requests go through `Router::oneshot` (no sockets), so the figures are the
//! layer's own work: key building, the L1 lookup, and writing the stored
//! response with `Age` and `Cache-Status`.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use c3::tower::C3CacheLayer;
use c3::{C3, MemoryServer};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn handler() -> ([(&'static str, &'static str); 1], &'static str) {
    (
        [("cache-control", "public, max-age=3600")],
        r#"{"id":42,"name":"Ada Lovelace","email":"ada@example.com"}"#,
    )
}

async fn call(app: &Router) {
    let req = Request::get("http://api.test/users/42?fields=all")
        .header("accept", "application/json")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    std::hint::black_box(res.into_body().collect().await.unwrap().to_bytes());
}

fn http_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare = Router::new().route("/users/{id}", get(handler));
    let c3 = rt.block_on(async {
        C3::builder()
            .memory(&MemoryServer::new())
            .build()
            .await
            .unwrap()
    });
    let cached = Router::new()
        .route("/users/{id}", get(handler))
        .layer(C3CacheLayer::new(c3.clone()));
    // Store the response, then make sure the next call is an L1 hit.
    rt.block_on(async {
        for _ in 0..1000 {
            call(&cached).await;
            tokio::task::yield_now().await;
            if c3.stats().l1_hits > 0 {
                return;
            }
        }
        panic!("the response never became an L1 hit");
    });

    let mut g = c.benchmark_group("http");
    for (name, app) in [("bare_handler", &bare), ("c3_layer_l1_hit", &cached)] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..n {
                        call(app).await;
                    }
                    t.elapsed()
                })
            });
        });
    }
    g.finish();
    let s = c3.stats();
    assert!(
        s.l1_hits > 1000 && s.writes == 1,
        "every timed call was an L1 hit: {s:?}"
    );
}

criterion_group!(
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = http_layer
);
criterion_main!(benches);
