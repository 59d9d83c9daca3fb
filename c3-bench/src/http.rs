//! HTTP: one axum endpoint that reads a row, served four ways — without a
//! cache (a query per request), behind `C3CacheLayer` (L1 hits), behind the
//! layer on a node without L1 (L2 hits), and a static body (the ceiling).
//! Load comes from a client on its own runtime thread over loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use c3::tower::C3CacheLayer;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::stats::{Samples, Summary};
use crate::{Env, Profile, SCHEMA};

/// Concurrent requests the client keeps in flight.
const CONCURRENCY: usize = 16;

async fn row(
    State(pg): State<Arc<tokio_postgres::Client>>,
    Path(id): Path<i64>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let row = pg
        .query_one(
            &format!("SELECT id, name, email, bio FROM {SCHEMA}.users WHERE id = $1"),
            &[&id],
        )
        .await
        .expect("select");
    let p = Profile {
        id: row.get::<_, i64>(0) as u64,
        name: row.get(1),
        email: row.get(2),
        bio: row.get(3),
    };
    (
        [
            ("cache-control", "public, max-age=3600"),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&p).expect("json"),
    )
        .into_response()
}

pub(crate) async fn run(env: &Env) -> Vec<Summary> {
    let pg = Arc::new(env.pg().await);
    let static_body = serde_json::to_vec(&Profile::sample(42)).expect("json");
    let l1 = env
        .node("c3_bench_http", 64 << 20)
        .build()
        .await
        .expect("node");
    let l2 = env.node("c3_bench_http", 0).build().await.expect("node");
    let app = Router::new()
        .route("/uncached/{id}", get(row))
        .merge(
            Router::new()
                .route("/cached/{id}", get(row))
                .layer(C3CacheLayer::new(l1.clone())),
        )
        .merge(
            Router::new()
                .route("/l2/{id}", get(row))
                .layer(C3CacheLayer::new(l2.clone())),
        )
        .route(
            "/static",
            get(move || {
                let b = static_body.clone();
                async move { ([("content-type", "application/json")], b) }
            }),
        )
        .with_state(pg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    // The client runs on its own thread and runtime: an independent peer.
    let series = env.series;
    let out = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
            let base = format!("http://{addr}");
            // Warm the caches: store once, then wait until it is served as a hit.
            for path in ["/cached/42", "/l2/42"] {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let res = client
                        .get(format!("{base}{path}").parse().expect("uri"))
                        .await
                        .expect("warm-up request");
                    let hit = res
                        .headers()
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("hit"));
                    res.into_body().collect().await.expect("body");
                    if hit {
                        break;
                    }
                    assert!(Instant::now() < deadline, "{path} never became a hit");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let mut out = Vec::new();
            for (name, path) in [
                ("static body (ceiling)", "/static"),
                ("C3CacheLayer, L1 hit", "/cached/42"),
                ("C3CacheLayer, L2 hit", "/l2/42"),
                ("no cache (query per request)", "/uncached/42"),
            ] {
                out.push(load(&client, &format!("{base}{path}"), name, series).await);
            }
            out
        })
    })
    .await
    .expect("client thread");
    server.abort();
    for (s, want) in [(l1.stats(), "l1"), (l2.stats(), "l2")] {
        let hits = if want == "l1" { s.l1_hits } else { s.l2_hits };
        assert!(hits > 0, "the {want} endpoint was served from {want}");
    }
    l1.shutdown().await;
    l2.shutdown().await;
    out
}

async fn load(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    url: &str,
    name: &str,
    series: Duration,
) -> Summary {
    let start = Instant::now();
    let deadline = start + series;
    let uri: http::Uri = url.parse().expect("uri");
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, uri) = (client.clone(), uri.clone());
            tokio::spawn(async move {
                let mut s = Samples::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let res = client.get(uri.clone()).await.expect("request");
                    assert!(res.status().is_success());
                    res.into_body().collect().await.expect("body");
                    s.push(t.elapsed());
                }
                s
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all.summary(name, CONCURRENCY, start.elapsed())
}
