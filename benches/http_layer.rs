//! The cost of `C3CacheLayer` on an L1 hit, against the same axum handler
//! without the layer, in one run — first with no telemetry installed, then
//! with the OpenTelemetry pipeline installed as the README does it
//! (`c3::core::otlp` + `tracing-opentelemetry`, spans and metrics exported
//! over OTLP/HTTP to a local sink that answers 200), since that is how users
//! run it.
//!
//! ```text
//! cargo bench --bench http_layer
//! ```
//!
//! Requests go through `Router::oneshot` (no sockets), so the figures are the
//! layer's own work: key building, the L1 lookup, and writing the stored
//! response with `Age` and `Cache-Status`. The layer's overhead per hit is
//! `c3_layer_l1_hit` minus `bare_handler` of the same group.

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

mod common;

async fn handler() -> ([(&'static str, &'static str); 1], &'static str) {
    ([("cache-control", "public, max-age=3600")], BODY)
}

/// The bare handler inside one span shaped like the layer's `c3.http`
/// (same fields, recorded the same way): what a single span costs with the
/// telemetry installed, to read the layer's figure against.
async fn handler_in_span() -> ([(&'static str, &'static str); 1], &'static str) {
    let span = tracing::info_span!(
        target: "c3::http",
        "c3.http",
        otel.kind = "server",
        http.request.method = %http::Method::GET,
        url.path = "/users/42",
        http.response.status_code = tracing::field::Empty,
        c3.cache_status = tracing::field::Empty,
    );
    let r = span.in_scope(|| ([("cache-control", "public, max-age=3600")], BODY));
    span.record("http.response.status_code", 200i64);
    span.record("c3.cache_status", "c3; hit; ttl=3600; detail=l1");
    r
}

const BODY: &str = r#"{"id":42,"name":"Ada Lovelace","email":"ada@example.com"}"#;

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
    compare(c, &rt, "http");
    // From here on every span and metric goes through the OTel pipeline.
    let otel = rt.block_on(common::install_otel("http-layer-bench"));
    compare(c, &rt, "http_otel");
    rt.block_on(async { drop(otel.shutdown().await) });
}

/// The bare handler and the cached one (a fresh cache, built after whatever
/// telemetry is installed: a cache takes its meter when it is built).
fn compare(c: &mut Criterion, rt: &tokio::runtime::Runtime, group: &str) {
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

    let spanned = Router::new().route("/users/{id}", get(handler_in_span));
    let mut g = c.benchmark_group(group);
    for (name, app) in [
        ("bare_handler", &bare),
        ("bare_handler_one_span", &spanned),
        ("c3_layer_l1_hit", &cached),
    ] {
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
    // One miss stored the response; nothing timed missed.
    assert!(
        s.l1_misses == 1 && s.writes == 1,
        "every timed call was an L1 hit: {s:?}"
    );
}

criterion_group!(
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = http_layer
);
criterion_main!(benches);
