//! RFC 9111 in the layer, rule by rule: in-process origins behind the
//! layer, nodes on an in-process L2 and a manual clock — PostgreSQL adds
//! nothing to these rules (the workspace's `tests/http_cache.rs` keeps what
//! needs it: several replicas over PostgreSQL, a real HTTP client).

mod support;

use std::sync::Arc;
use std::time::Duration;

use c3_core::{Clock, ManualClock, MemoryServer};
use c3_tower::C3CacheLayer;
use support::origin::{DELIVERY, Origin, cache_status, cached, fetch, get, resp, send, stored};
use support::{ReqBody, clocked, node};

const URL: &str = "http://app.test/item";

#[tokio::test]
async fn fresh_responses_are_served_from_the_cache_until_they_expire() {
    let clock = ManualClock::new();
    let c3 = clocked(&clock).await;
    let origin = Origin::new(|_, n| resp(&[("cache-control", "max-age=60")], format!("v{n}")));
    let svc = cached(&c3, &origin);

    let w = c3.stats().writes;
    let (p, body) = fetch(&svc, URL, &[]).await;
    assert_eq!(body, "v0");
    assert_eq!(cache_status(&p), "c3; fwd=uri-miss; stored");
    stored(&c3, w, 1).await;

    clock.advance(Duration::from_secs(10));
    let (p, body) = fetch(&svc, URL, &[]).await;
    assert_eq!(body, "v0");
    assert!(
        cache_status(&p).starts_with("c3; hit; ttl=50; detail=l1"),
        "{}",
        cache_status(&p)
    );
    assert_eq!(p.headers["age"], "10");
    assert_eq!(origin.hits(), 1);

    // Query order does not matter; the fragment-free normalised URI is the key.
    let (_, body) = send(
        &svc,
        get("http://APP.test:80/item")
            .body(ReqBody::default())
            .unwrap(),
    )
    .await;
    assert_eq!(body, "v0");

    // Stale, and without validators not worth keeping: fetched again.
    clock.advance(Duration::from_secs(51));
    let (p, body) = fetch(&svc, URL, &[]).await;
    assert_eq!(body, "v1");
    assert!(!cache_status(&p).contains("hit"), "{}", cache_status(&p));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn age_expires_s_maxage_and_targeted_headers_set_freshness() {
    let clock = ManualClock::new();
    let c3 = clocked(&clock).await;
    let now = httpdate::fmt_http_date(clock.now());
    let expires = httpdate::fmt_http_date(clock.now() + Duration::from_secs(30));
    let (now2, expires2) = (now.clone(), expires.clone());
    let origin = Origin::new(move |parts, n| match parts.uri.path() {
        "/aged" => resp(
            &[("cache-control", "max-age=60"), ("age", "50")],
            format!("aged{n}"),
        ),
        "/expires" => resp(
            &[("date", &now2), ("expires", &expires2)],
            format!("exp{n}"),
        ),
        "/smax" => resp(
            &[("cache-control", "max-age=5, s-maxage=40")],
            format!("smax{n}"),
        ),
        "/cdn" => resp(
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=40"),
            ],
            format!("cdn{n}"),
        ),
        "/c3" => resp(
            &[
                ("cache-control", "max-age=1000"),
                ("c3-cache-control", "max-age=40"),
            ],
            format!("c3{n}"),
        ),
        _ => resp(&[], "?"),
    });
    let svc = cached(&c3, &origin);
    let paths = ["/aged", "/expires", "/smax", "/cdn", "/c3"];
    // Judged by the bodies (each origin answer is numbered), not only by
    // what the layer says of itself in Cache-Status.
    let mut first = std::collections::HashMap::new();
    for path in paths {
        let w = c3.stats().writes;
        let (p, body) = fetch(&svc, &format!("http://app.test{path}"), &[]).await;
        first.insert(path, body);
        assert!(
            cache_status(&p).ends_with("stored"),
            "{path}: {}",
            cache_status(&p)
        );
        assert!(
            !p.headers.contains_key("c3-cache-control"),
            "override header never leaves"
        );
        stored(&c3, w, 1).await;
    }
    clock.advance(Duration::from_secs(20));
    for path in paths {
        let (p, body) = fetch(&svc, &format!("http://app.test{path}"), &[]).await;
        let fresh = path != "/aged"; // 50 s old on arrival + 20 s > 60 s
        assert_eq!(
            cache_status(&p).starts_with("c3; hit"),
            fresh,
            "{path}: {}",
            cache_status(&p)
        );
        assert_eq!(
            body == first[path],
            fresh,
            "{path}: {body:?} after {:?} ({})",
            first[path],
            cache_status(&p)
        );
    }
    let before = origin.hits();
    clock.advance(Duration::from_secs(15)); // 35 s: /expires (30 s) is stale, 40 s ones fresh
    let (p, body) = fetch(&svc, "http://app.test/expires", &[]).await;
    assert!(!cache_status(&p).starts_with("c3; hit"));
    assert_ne!(body, first["/expires"], "the origin answered again");
    let (p, body) = fetch(&svc, "http://app.test/cdn", &[]).await;
    assert!(
        cache_status(&p).starts_with("c3; hit"),
        "CDN-Cache-Control replaces Cache-Control"
    );
    assert_eq!(body, first["/cdn"]);
    assert_eq!(
        origin.hits(),
        before + 1,
        "only /expires reached the origin"
    );
}

#[tokio::test]
async fn vary_keys_variants_by_the_nominated_headers_only() {
    let server = MemoryServer::new();
    let c3 = node(&server).await;
    let origin = Origin::new(|parts, n| {
        let lang = parts
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if parts.uri.path() == "/star" {
            return resp(
                &[("cache-control", "max-age=60"), ("vary", "*")],
                format!("star{n}"),
            );
        }
        resp(
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            format!("{lang}{n}"),
        )
    });
    let svc = cached(&c3, &origin);
    let req = |lang: &str, evil: &str| {
        get(URL)
            .header("accept-language", lang)
            .header("x-forwarded-host", evil)
            .body(ReqBody::default())
            .unwrap()
    };
    let w = c3.stats().writes;
    assert_eq!(send(&svc, req("de", "a")).await.1, "de0");
    stored(&c3, w, 2).await; // the variant and the marker
    let w = c3.stats().writes;
    assert_eq!(send(&svc, req("en", "a")).await.1, "en1");
    stored(&c3, w, 2).await;
    let (p, body) = send(&svc, req("de", "evil.example")).await;
    assert_eq!(
        body, "de0",
        "an unkeyed header does not select another entry"
    );
    assert!(cache_status(&p).starts_with("c3; hit"));
    assert_eq!(send(&svc, req("en", "b")).await.1, "en1");
    assert_eq!(origin.hits(), 2);

    for _ in 0..2 {
        let (p, _) = send(
            &svc,
            get("http://app.test/star")
                .body(ReqBody::default())
                .unwrap(),
        )
        .await;
        assert!(!cache_status(&p).contains("stored"));
    }
    assert_eq!(origin.hits(), 4, "Vary: * is never served from cache");

    // Hundreds of Vary headers: no panic; too long to key, so not stored.
    let many: String = (0..300)
        .map(|i| format!("x-h{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let origin = Origin::new(move |_, n| {
        resp(
            &[("cache-control", "max-age=60"), ("vary", &many)],
            format!("m{n}"),
        )
    });
    let svc = cached(&c3, &origin);
    let mut b = get("http://app.test/many");
    for i in 0..300 {
        b = b.header(format!("x-h{i}"), "some-long-value-to-exceed-the-key-limit");
    }
    let (p, _) = send(&svc, b.body(ReqBody::default()).unwrap()).await;
    assert!(!cache_status(&p).contains("stored"), "{}", cache_status(&p));
}

#[tokio::test]
async fn private_responses_are_never_shared() {
    let server = MemoryServer::new();
    let c3 = node(&server).await;
    let origin = Origin::new(|parts, n| match parts.uri.path() {
        "/no-store" => resp(&[("cache-control", "no-store, max-age=60")], format!("{n}")),
        "/private" => resp(&[("cache-control", "private, max-age=60")], format!("{n}")),
        "/cookie" => resp(
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "session=secret"),
            ],
            format!("{n}"),
        ),
        "/public" => resp(&[("cache-control", "public, max-age=60")], format!("{n}")),
        _ => resp(&[("cache-control", "max-age=60")], format!("{n}")),
    });
    let svc = cached(&c3, &origin);
    let writes_before = c3.stats().writes;
    for path in ["/no-store", "/private", "/cookie"] {
        let url = format!("http://app.test{path}");
        let (p1, b1) = fetch(&svc, &url, &[]).await;
        let (_, b2) = fetch(&svc, &url, &[]).await;
        assert_ne!(b1, b2, "{path} must reach the origin every time");
        assert!(!cache_status(&p1).contains("stored"));
    }
    // A request with credentials: its response is not stored unless public…
    let authed = |url: &str| {
        get(url)
            .header("authorization", "Bearer alice")
            .body(ReqBody::default())
            .unwrap()
    };
    let (p, _) = send(&svc, authed("http://app.test/plain")).await;
    assert!(!cache_status(&p).contains("stored"), "{}", cache_status(&p));
    // …and a stored non-public response is not served to it.
    let w = c3.stats().writes;
    send(
        &svc,
        get("http://app.test/plain")
            .body(ReqBody::default())
            .unwrap(),
    )
    .await;
    stored(&c3, w, 1).await;
    let hits = origin.hits();
    let (p, _) = send(&svc, authed("http://app.test/plain")).await;
    assert!(
        cache_status(&p).contains("fwd=bypass"),
        "{}",
        cache_status(&p)
    );
    assert_eq!(origin.hits(), hits + 1);
    // A public response may be shared with authenticated requests.
    let w = c3.stats().writes;
    send(&svc, authed("http://app.test/public")).await;
    stored(&c3, w, 1).await;
    let (p, _) = send(&svc, authed("http://app.test/public")).await;
    assert!(cache_status(&p).starts_with("c3; hit"));
    // Request no-store: not stored.
    let (p, _) = fetch(
        &svc,
        "http://app.test/other",
        &[("cache-control", "no-store")],
    )
    .await;
    assert!(!cache_status(&p).contains("stored"));

    // Not the layer's word for it: the cache itself. A last storable
    // response goes in after all the others had their chance to be stored;
    // then only the two meant to be stored and it were written, and another
    // replica holds none of the others.
    let w = c3.stats().writes;
    fetch(&svc, "http://app.test/barrier", &[]).await;
    stored(&c3, w, 1).await;
    assert_eq!(
        c3.stats().writes,
        writes_before + 3,
        "only /plain, /public and /barrier were stored"
    );
    let b = node(&server).await;
    let svc_b = cached(&b, &origin);
    for path in ["/no-store", "/private", "/cookie", "/other"] {
        let (p, _) = fetch(
            &svc_b,
            &format!("http://app.test{path}"),
            &[("cache-control", "only-if-cached")],
        )
        .await;
        assert_eq!(
            p.status,
            504,
            "{path} is in the shared cache: {}",
            cache_status(&p)
        );
    }
}

#[tokio::test]
async fn set_cookie_responses_may_be_stored_without_the_cookie_when_allowed() {
    let server = MemoryServer::new();
    let c3 = node(&server).await;
    let origin = Origin::new(|_, n| {
        resp(
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
            format!("{n}"),
        )
    });
    let svc = tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()).store_set_cookie(true))
        .service(origin.service());
    let w = c3.stats().writes;
    let (p, _) = fetch(&svc, URL, &[]).await;
    assert!(
        p.headers.contains_key("set-cookie"),
        "the original requester gets its cookie"
    );
    stored(&c3, w, 1).await;
    let (p, _) = fetch(&svc, URL, &[]).await;
    assert!(cache_status(&p).starts_with("c3; hit"));
    assert!(
        !p.headers.contains_key("set-cookie"),
        "never replayed to others"
    );
}

#[tokio::test]
async fn conditional_requests_get_304_from_the_cache() {
    let server = MemoryServer::new();
    let c3 = node(&server).await;
    let origin = Origin::new(|_, _| {
        resp(
            &[
                ("cache-control", "max-age=60"),
                ("etag", "W/\"v1\""),
                ("last-modified", "Sun, 01 Nov 2026 10:00:00 GMT"),
            ],
            "body",
        )
    });
    let svc = cached(&c3, &origin);
    let w = c3.stats().writes;
    fetch(&svc, URL, &[]).await;
    stored(&c3, w, 1).await;
    let (p, body) = fetch(&svc, URL, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(p.status, 304);
    assert!(body.is_empty());
    assert_eq!(p.headers["etag"], "W/\"v1\"");
    let (p, _) = fetch(&svc, URL, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(p.status, 200);
    let (p, _) = fetch(
        &svc,
        URL,
        &[("if-modified-since", "Mon, 02 Nov 2026 10:00:00 GMT")],
    )
    .await;
    assert_eq!(p.status, 304);
    let (p, _) = fetch(
        &svc,
        URL,
        &[("if-modified-since", "Sat, 31 Oct 2026 10:00:00 GMT")],
    )
    .await;
    assert_eq!(p.status, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn stale_entries_are_revalidated_with_validators_and_updated_by_304() {
    let clock = ManualClock::new();
    let c3 = clocked(&clock).await;
    let origin = Origin::new(|parts, n| {
        if n > 0
            && parts
                .headers
                .get("if-none-match")
                .is_some_and(|v| v == "\"e1\"")
        {
            let mut r = resp(
                &[
                    ("cache-control", "max-age=100"),
                    ("c3-cache-control", "max-age=100"),
                    ("etag", "\"e1\""),
                    ("x-refreshed", "yes"),
                ],
                "",
            );
            *r.status_mut() = http::StatusCode::NOT_MODIFIED;
            return r;
        }
        resp(
            &[("cache-control", "max-age=10"), ("etag", "\"e1\"")],
            "original body",
        )
    });
    let svc = cached(&c3, &origin);
    let w = c3.stats().writes;
    fetch(&svc, URL, &[]).await;
    stored(&c3, w, 1).await;
    clock.advance(Duration::from_secs(11));

    let w = c3.stats().writes;
    let (p, body) = fetch(&svc, URL, &[]).await;
    assert_eq!(p.status, 200);
    assert_eq!(body, "original body");
    assert_eq!(cache_status(&p), "c3; fwd=stale; fwd-status=304");
    assert_eq!(
        p.headers["x-refreshed"], "yes",
        "headers updated from the 304"
    );
    assert_eq!(origin.request(1).headers["if-none-match"], "\"e1\"");
    // The field meant for the cache is not stored with the refresh, nor
    // sent on to clients.
    assert!(!p.headers.contains_key("c3-cache-control"));
    stored(&c3, w, 1).await;

    clock.advance(Duration::from_secs(50)); // fresh again thanks to max-age=100
    let (p, _) = fetch(&svc, URL, &[]).await;
    assert!(
        cache_status(&p).starts_with("c3; hit"),
        "{}",
        cache_status(&p)
    );
    assert!(!p.headers.contains_key("c3-cache-control"));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn stale_while_revalidate_and_stale_if_error() {
    let clock = ManualClock::new();
    let c3 = clocked(&clock).await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failing.clone();
    let origin = Origin::new(move |parts, n| {
        if parts.uri.path() != "/swr" && f.load(std::sync::atomic::Ordering::SeqCst) {
            let mut r = resp(&[], "down");
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        match parts.uri.path() {
            "/swr" => resp(
                &[("cache-control", "max-age=10, stale-while-revalidate=60")],
                format!("swr{n}"),
            ),
            "/sie" => resp(
                &[("cache-control", "max-age=10, stale-if-error=60")],
                format!("sie{n}"),
            ),
            // A validator keeps the entry past its freshness (to revalidate
            // it), so the cache does have a stale copy it must not serve.
            _ => resp(
                &[
                    (
                        "cache-control",
                        "max-age=10, must-revalidate, stale-if-error=60",
                    ),
                    ("etag", "\"mr\""),
                ],
                format!("mr{n}"),
            ),
        }
    });
    let svc = cached(&c3, &origin);
    for path in ["/swr", "/sie", "/mr"] {
        let w = c3.stats().writes;
        fetch(&svc, &format!("http://app.test{path}"), &[]).await;
        stored(&c3, w, 1).await;
    }
    clock.advance(Duration::from_secs(15));

    let w = c3.stats().writes;
    let (p, body) = send(
        &svc,
        get("http://app.test/swr").body(ReqBody::default()).unwrap(),
    )
    .await;
    assert_eq!(body, "swr0", "stale copy served at once");
    assert_eq!(cache_status(&p), "c3; hit; detail=stale-while-revalidate");
    stored(&c3, w, 1).await; // the background revalidation stored a new copy
    let (p, body) = send(
        &svc,
        get("http://app.test/swr").body(ReqBody::default()).unwrap(),
    )
    .await;
    assert_eq!(body, "swr3");
    assert!(cache_status(&p).starts_with("c3; hit"));

    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let (p, body) = send(
        &svc,
        get("http://app.test/sie").body(ReqBody::default()).unwrap(),
    )
    .await;
    assert_eq!(p.status, 200);
    assert_eq!(body, "sie1");
    assert_eq!(
        cache_status(&p),
        "c3; fwd=stale; fwd-status=503; detail=stale-if-error"
    );

    // must-revalidate forbids serving stale, whatever stale-if-error says:
    // with the origin failing, the stored "mr2" must not come back.
    let (p, body) = fetch(&svc, "http://app.test/mr", &[]).await;
    assert_eq!(p.status, 503, "the origin's error, not the stale copy");
    assert_eq!(body, "down");
    assert_eq!(cache_status(&p), "c3; fwd=stale; fwd-status=503");
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_and_never_stored() {
    let server = MemoryServer::new();
    let c3 = node(&server).await;
    let origin = Origin::new(|_, n| {
        resp(
            &[("cache-control", "max-age=60"), ("content-length", "2")],
            format!("b{n}"),
        )
    });
    let svc = cached(&c3, &origin);
    let (p, _) = send(
        &svc,
        http::Request::head(URL).body(ReqBody::default()).unwrap(),
    )
    .await;
    assert!(
        !cache_status(&p).contains("stored"),
        "HEAD miss forwarded, not stored"
    );
    let w = c3.stats().writes;
    fetch(&svc, URL, &[]).await;
    stored(&c3, w, 1).await;
    let (p, body) = send(
        &svc,
        http::Request::head(URL).body(ReqBody::default()).unwrap(),
    )
    .await;
    assert!(cache_status(&p).starts_with("c3; hit"));
    assert!(body.is_empty());
    assert_eq!(p.headers["content-length"], "2");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn bodies_over_the_limit_stream_through_uncached() {
    let server = MemoryServer::new();
    let c3 = node(&server).await;
    let big = "x".repeat(64 * 1024);
    let b2 = big.clone();
    let origin = Origin::new(move |_, _| resp(&[("cache-control", "max-age=60")], b2.clone()));
    let svc = tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()).max_body_bytes(16 * 1024))
        .service(origin.service());
    for _ in 0..2 {
        let (p, body) = fetch(&svc, URL, &[]).await;
        assert_eq!(body.len(), big.len(), "body intact");
        assert!(!cache_status(&p).contains("stored"));
    }
    assert_eq!(origin.hits(), 2);
    assert_eq!(c3.stats().writes, 0);
}

#[tokio::test]
async fn a_miss_streams_its_body_to_the_client_while_capturing_it() {
    use http_body_util::{BodyExt, channel::Channel};
    use std::sync::Mutex;
    use tower::ServiceExt;

    let server = MemoryServer::new();
    let c3 = node(&server).await;
    type Tx = http_body_util::channel::Sender<bytes::Bytes>;
    let sender: Arc<Mutex<Option<Tx>>> = Arc::default();
    let slot = Arc::clone(&sender);
    let origin = tower::service_fn(move |_req: http::Request<ReqBody>| {
        let (tx, body) = Channel::<bytes::Bytes>::new(4);
        *slot.lock().unwrap() = Some(tx);
        async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()))
        .service(origin);
    let w = c3.stats().writes;
    let res = svc
        .clone()
        .oneshot(get(URL).body(ReqBody::default()).unwrap())
        .await
        .unwrap();
    let mut tx = sender.lock().unwrap().take().expect("origin called");
    let mut body = res.into_body();
    tx.send_data("first ".into()).await.unwrap();
    // The client has the first chunk while the origin is still sending.
    let frame = tokio::time::timeout(DELIVERY, body.frame())
        .await
        .expect("first chunk forwarded before the body ended")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "first ");
    assert_eq!(c3.stats().writes, w, "nothing stored before the end");
    tx.send_data("second".into()).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    stored(&c3, w, 1).await;

    let (p, body) = fetch(&svc, URL, &[]).await;
    assert_eq!(body, "first second", "the captured body is whole");
    assert!(cache_status(&p).contains("hit"), "{}", cache_status(&p));
}

#[tokio::test]
async fn any_method_not_known_to_be_safe_invalidates_and_options_does_not() {
    let server = MemoryServer::new();
    let a = node(&server).await;
    let origin = Origin::new(|parts, n| {
        if parts.method != http::Method::GET {
            return resp(&[], "done");
        }
        resp(&[("cache-control", "max-age=600")], format!("v{n}"))
    });
    let svc = cached(&a, &origin);
    let w = a.stats().writes;
    fetch(&svc, URL, &[]).await;
    stored(&a, w, 1).await;
    // Safe: OPTIONS passes through and leaves the entry.
    let req = http::Request::options(URL)
        .body(ReqBody::default())
        .unwrap();
    send(&svc, req).await;
    let hits = origin.hits();
    let (p, body) = fetch(&svc, URL, &[]).await;
    assert!(cache_status(&p).contains("hit"));
    assert_eq!(body, "v0", "the stored response");
    assert_eq!(origin.hits(), hits, "the GET did not reach the origin");
    // Unknown methods are unsafe (RFC 9111 §4.4): a 2xx invalidates.
    for method in ["M-SEARCH", "PURGE"] {
        let w = a.stats().writes;
        let (p, _) = fetch(&svc, URL, &[]).await;
        if !cache_status(&p).contains("hit") {
            stored(&a, w, 1).await;
        }
        let req = http::Request::builder()
            .method(method)
            .uri(URL)
            .body(ReqBody::default())
            .unwrap();
        let (p, _) = send(&svc, req).await;
        assert_eq!(cache_status(&p), "c3; fwd=method");
        let hits = origin.hits();
        let (p, body) = fetch(&svc, URL, &[]).await;
        assert!(
            !cache_status(&p).contains("hit"),
            "{method}: {}",
            cache_status(&p)
        );
        // From outside: the origin answered the GET, with a new body.
        assert_eq!(
            origin.hits(),
            hits + 1,
            "{method}: the GET reached the origin"
        );
        assert_eq!(body, format!("v{hits}"), "{method}");
    }
}

#[tokio::test]
async fn range_requests_are_answered_from_a_stored_complete_response() {
    let server = MemoryServer::new();
    let a = node(&server).await;
    let origin = Origin::new(|_, _| {
        resp(
            &[("cache-control", "max-age=600"), ("etag", "\"e1\"")],
            "0123456789",
        )
    });
    let svc = cached(&a, &origin);
    let w = a.stats().writes;
    fetch(&svc, URL, &[]).await;
    stored(&a, w, 1).await;

    let (p, body) = fetch(&svc, URL, &[("range", "bytes=2-5")]).await;
    assert_eq!(p.status, 206);
    assert_eq!(body, "2345");
    assert_eq!(p.headers["content-range"], "bytes 2-5/10");
    assert!(cache_status(&p).contains("hit"));
    let (p, body) = fetch(&svc, URL, &[("range", "bytes=-3")]).await;
    assert_eq!((p.status.as_u16(), &body[..]), (206, &b"789"[..]));
    let (p, _) = fetch(&svc, URL, &[("range", "bytes=10-")]).await;
    assert_eq!(p.status, 416);
    assert_eq!(p.headers["content-range"], "bytes */10");
    // Several ranges, or an If-Range that does not match: the whole body.
    let (p, body) = fetch(&svc, URL, &[("range", "bytes=0-1,4-5")]).await;
    assert_eq!((p.status.as_u16(), &body[..]), (200, &b"0123456789"[..]));
    let (p, body) = fetch(&svc, URL, &[("range", "bytes=0-1"), ("if-range", "\"e0\"")]).await;
    assert_eq!((p.status.as_u16(), &body[..]), (200, &b"0123456789"[..]));
    let (p, body) = fetch(&svc, URL, &[("range", "bytes=0-1"), ("if-range", "\"e1\"")]).await;
    assert_eq!((p.status.as_u16(), &body[..]), (206, &b"01"[..]));
    assert_eq!(origin.hits(), 1, "every range came from the cache");

    // An origin's 206 is passed through, never stored.
    let partial = Origin::new(|_, _| {
        let mut r = resp(
            &[
                ("cache-control", "max-age=600"),
                ("content-range", "bytes 0-1/10"),
            ],
            "01",
        );
        *r.status_mut() = http::StatusCode::PARTIAL_CONTENT;
        r
    });
    let svc = cached(&a, &partial);
    let url = "http://app.test/partial";
    for _ in 0..2 {
        let (p, _) = fetch(&svc, url, &[("range", "bytes=0-1")]).await;
        assert_eq!(p.status, 206);
    }
    assert_eq!(partial.hits(), 2);
}
