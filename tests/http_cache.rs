//! The HTTP cache layer where PostgreSQL matters: writes and tags
//! invalidating on every node, wiremock behind a hyper client (client side),
//! and two axum replicas over TCP sharing one PostgreSQL. The RFC 9111 rules
//! one node can show are c3-tower's own tests (`c3-tower/tests/rules.rs`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use c3::tower::C3CacheLayer;
use support::web::{Origin, cache_status, cached, fetch, get, resp, send, stored};
use support::{DELIVERY, TestDb, received, wait_until};

const URL: &str = "http://app.test/item";

#[tokio::test]
async fn a_write_on_one_node_invalidates_the_uri_and_locations_on_every_node() {
    let db = TestDb::new("http_unsafe").await;
    let (a, b) = (db.node().await, db.node().await);
    let origin = Origin::new(|parts, n| {
        if parts.method == http::Method::PUT {
            return resp(&[("content-location", "/other")], "ok");
        }
        resp(
            &[("cache-control", "max-age=600")],
            format!("{}-{n}", parts.uri.path()),
        )
    });
    let (svc_a, svc_b) = (cached(&a, &origin), cached(&b, &origin));
    for url in [URL, "http://app.test/other", "http://app.test/unrelated"] {
        let w = a.stats().writes;
        fetch(&svc_a, url, &[]).await;
        stored(&a, w, 1).await;
        let (p, _) = fetch(&svc_b, url, &[]).await;
        assert!(
            cache_status(&p).contains("hit; ttl"),
            "B serves A's entry from L2: {}",
            cache_status(&p)
        );
    }
    let r = a.stats().invalidations_received;
    let (p, _) = send(
        &svc_b,
        http::Request::put(URL).body(Body::from("new")).unwrap(),
    )
    .await;
    assert_eq!(cache_status(&p), "c3; fwd=method");
    // One message for the target URI, one for its Content-Location.
    wait_until("both invalidations reach A", DELIVERY, || async {
        a.stats().invalidations_received >= r + 2
    })
    .await;
    for url in [URL, "http://app.test/other"] {
        let (p, _) = fetch(&svc_a, url, &[]).await;
        assert!(
            !cache_status(&p).contains("hit"),
            "{url} invalidated on A: {}",
            cache_status(&p)
        );
    }
    let (p, _) = fetch(&svc_a, "http://app.test/unrelated", &[]).await;
    assert!(cache_status(&p).contains("hit"));
    // A failed write invalidates nothing.
    let sent = b.stats().invalidations_sent;
    let failing = Origin::new(|_, _| {
        let mut r = resp(&[], "no");
        *r.status_mut() = http::StatusCode::CONFLICT;
        r
    });
    send(
        &cached(&b, &failing),
        http::Request::delete("http://app.test/unrelated")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(b.stats().invalidations_sent, sent);
    let (p, _) = fetch(&svc_a, "http://app.test/unrelated", &[]).await;
    assert!(cache_status(&p).contains("hit"));
}

#[tokio::test]
async fn tags_invalidate_responses_on_every_node() {
    let db = TestDb::new("http_tags").await;
    let (a, b) = (db.node().await, db.node().await);
    let origin = Origin::new(|parts, n| match parts.method {
        // Two header lines: every one counts (the tag that matters here is
        // on the second).
        http::Method::POST => resp(
            &[
                ("c3-invalidate-tag", "other:1"),
                ("c3-invalidate-tag", "team:9"),
            ],
            "posted",
        ),
        _ => resp(
            &[
                ("cache-control", "max-age=600"),
                ("surrogate-key", "user:42 team:9"),
            ],
            format!("{}-{n}", parts.uri.path()),
        ),
    });
    let (svc_a, svc_b) = (cached(&a, &origin), cached(&b, &origin));
    let w = a.stats().writes;
    send(
        &svc_a,
        get("http://app.test/u/42").body(Body::empty()).unwrap(),
    )
    .await;
    fetch(&svc_a, "http://app.test/u/42/posts", &[]).await;
    stored(&a, w, 2).await;
    let r = a.stats().invalidations_received;
    assert_eq!(c3::tower::invalidate_tag(&b, "user:42").await.unwrap(), 2);
    received(&a, r).await;
    let w = a.stats().writes;
    for path in ["/u/42", "/u/42/posts"] {
        let (p, _) = fetch(&svc_a, &format!("http://app.test{path}"), &[]).await;
        assert!(
            !cache_status(&p).contains("hit"),
            "{path}: {}",
            cache_status(&p)
        );
    }
    // The misses above are stored again in the background; let them finish
    // so the count below is about /t alone.
    stored(&a, w, 2).await;
    // A handler can ask for tag invalidation in its write response.
    let w = a.stats().writes;
    send(
        &svc_a,
        get("http://app.test/t").body(Body::empty()).unwrap(),
    )
    .await;
    stored(&a, w, 1).await;
    let r = a.stats().invalidations_received;
    let (p, _) = send(
        &svc_b,
        http::Request::post("http://app.test/cmd")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(!p.headers.contains_key("c3-invalidate-tag"), "stripped");
    received(&a, r).await;
    let (p, _) = send(
        &svc_a,
        get("http://app.test/t").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(!cache_status(&p).contains("hit"));
    let err = c3::tower::invalidate_uri(&a, &"/relative".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_invalid_key());
}

/// Client side: the layer around a hyper client, wiremock as the origin.
#[tokio::test]
async fn concurrent_misses_collapse_into_one_upstream_request() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let db = TestDb::new("http_collapse").await;
    let c3 = db.node().await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .set_body_string("shared")
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&upstream)
        .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let svc = tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()))
        .service(client);
    let url = format!("{}/collapsed", upstream.uri());
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (svc, url) = (svc.clone(), url.clone());
            tokio::spawn(async move { fetch(&svc, &url, &[]).await })
        })
        .collect();
    let mut collapsed = 0;
    for c in calls {
        let (p, body) = c.await.unwrap();
        assert_eq!(body, "shared");
        collapsed += usize::from(cache_status(&p).contains("collapsed"));
    }
    assert!(
        collapsed >= 1,
        "waiters answered from the leader's response"
    );
    upstream.verify().await;
}

#[tokio::test]
async fn two_axum_replicas_over_tcp_a_put_on_b_invalidates_a() {
    use axum::extract::{Path, State};
    use axum::routing::get as route_get;
    use std::sync::Mutex;

    let db = TestDb::new("http_replicas").await;
    // The "database" both replicas serve from.
    let names: Arc<Mutex<std::collections::HashMap<u32, String>>> = Arc::default();
    names.lock().unwrap().insert(1, "Ada".into());
    async fn replica(
        c3: c3::core::C3,
        names: Arc<Mutex<std::collections::HashMap<u32, String>>>,
    ) -> String {
        let app = axum::Router::new()
            .route(
                "/users/{id}",
                route_get(
                    |State(n): State<Arc<Mutex<std::collections::HashMap<u32, String>>>>,
                     Path(id): Path<u32>| async move {
                        let name = n.lock().unwrap().get(&id).cloned().unwrap_or_default();
                        ([("cache-control", "max-age=600")], name)
                    },
                )
                .put(
                    |State(n): State<Arc<Mutex<std::collections::HashMap<u32, String>>>>,
                     Path(id): Path<u32>,
                     body: String| async move {
                        n.lock().unwrap().insert(id, body);
                        "updated"
                    },
                ),
            )
            .layer(C3CacheLayer::new(c3).fixed_authority("users.test"))
            .with_state(names);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
    let a = db.node().await;
    let base_a = replica(a.clone(), names.clone()).await;
    let base_b = replica(db.node().await, names.clone()).await;
    let client = reqwest::Client::new();
    let fetch = |base: &str| {
        let (client, url) = (client.clone(), format!("{base}/users/1"));
        async move {
            // Replicas behind one name: the layer keys on that, not on the
            // address each replica happens to be reached at.
            let r = client.get(url).send().await.unwrap();
            let status = r.headers()["cache-status"].to_str().unwrap().to_owned();
            (status, r.text().await.unwrap())
        }
    };
    let w = a.stats().writes;
    assert_eq!(fetch(&base_a).await.1, "Ada");
    stored(&a, w, 1).await;
    let (status, name) = fetch(&base_a).await;
    assert!(status.starts_with("c3; hit"), "{status}");
    assert_eq!(name, "Ada");

    let r = client
        .put(format!("{base_b}/users/1"))
        .body("Grace")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_until("A serves the new name", DELIVERY, || async {
        fetch(&base_a).await.1 == "Grace"
    })
    .await;
}

/// A handler may return c3's errors (feature `axum`): 503 when L2 cannot
/// answer (a retry may work), 500 for what a retry will not fix; the body
/// tells a client nothing of the cache's internals.
#[tokio::test]
async fn a_handler_returning_c3_errors_answers_503_when_l2_is_down_and_500_otherwise() {
    use axum::response::IntoResponse;
    let db = TestDb::new("into_response").await;
    let link = support::proxy::FaultProxy::start(support::database_addr()).await;
    let node = db
        .pool_through(&link)
        .op_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    link.blackhole();
    let down = node.get::<u32>("k").await.unwrap_err();
    assert!(down.is_timeout(), "{down}");
    let as_sqlx: c3::sqlx::Error = down.into();
    let res = as_sqlx.into_response();
    assert_eq!(res.status(), 503);
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&body).contains("timed out"),
        "no internals"
    );
    let bug = c3::Error::loader(std::io::Error::other("the source's own failure"));
    assert_eq!(bug.into_response().status(), 500);
    let db_err: c3::sqlx::Error = sqlx::Error::RowNotFound.into();
    assert_eq!(db_err.into_response().status(), 500);
    let db_down: c3::sqlx::Error = sqlx::Error::PoolTimedOut.into();
    assert_eq!(db_down.into_response().status(), 503);
    link.forward();
}
