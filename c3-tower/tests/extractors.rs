//! An axum handler behind the cache answers exactly as without it, on every
//! flow: every request the layer sends on a client's behalf — a revalidation,
//! a background one, a collapsed waiter's, the full GET behind a `Range` or a
//! `HEAD` — carries the client's request's extensions, where axum's router
//! and layers leave what extractors read.
//!
//! The matrix: each flow × each extractor (`Path`, `MatchedPath`,
//! `Extension`, `ConnectInfo`, `State`), on an in-process L2 with a manual
//! clock. A cell passes when the answer is the handler's own for that request.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Extension, MatchedPath, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use c3_core::ManualClock;
use c3_tower::C3CacheLayer;
use support::origin::{DELIVERY, cache_status, send, stored, wait_until};
use support::{ReqBody, clocked};

#[derive(Clone)]
struct Tag(&'static str);

/// The router's state: what `State` reads, and the origin's version and
/// `Cache-Control`, which the tests move.
#[derive(Clone)]
struct App {
    name: &'static str,
    version: Arc<AtomicU64>,
    cache_control: Arc<std::sync::Mutex<&'static str>>,
    /// Held: handlers wait here (the collapse flow).
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<AtomicU64>,
}

/// What every handler answers: the value its extractor read and the
/// version, with validators; a 304 to a matching `If-None-Match`.
async fn answer(app: &App, headers: &HeaderMap, what: String) -> Response {
    app.entered.fetch_add(1, Ordering::SeqCst);
    drop(app.gate.acquire().await.unwrap());
    let v = app.version.load(Ordering::SeqCst);
    let etag = format!("\"v{v}\"");
    let cc = *app.cache_control.lock().unwrap();
    let common = [
        (header::CACHE_CONTROL, cc.to_owned()),
        (header::ETAG, etag.clone()),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|t| t.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, format!("{what} v{v}")).into_response()
}

const CONN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)),
    4321,
);

/// The extractors, one route each, and the body each must answer.
const ROUTES: [(&str, &str); 5] = [
    ("path", "path=7"),
    ("matched", "matched=/matched/{id}"),
    ("extension", "extension=blue"),
    ("connect_info", "connect_info=10.0.0.7:4321"),
    ("state", "state=shop"),
];

fn router(app: App, c3: &c3_core::C3) -> Router {
    Router::new()
        .route(
            "/path/{id}",
            get(|Path(id): Path<String>, State(app): State<App>, h: HeaderMap| async move {
                answer(&app, &h, format!("path={id}")).await
            }),
        )
        .route(
            "/matched/{id}",
            get(|m: MatchedPath, State(app): State<App>, h: HeaderMap| async move {
                answer(&app, &h, format!("matched={}", m.as_str())).await
            }),
        )
        .route(
            "/extension/{id}",
            get(|Extension(t): Extension<Tag>, State(app): State<App>, h: HeaderMap| async move {
                answer(&app, &h, format!("extension={}", t.0)).await
            }),
        )
        .route(
            "/connect_info/{id}",
            get(
                |ConnectInfo(a): ConnectInfo<SocketAddr>, State(app): State<App>, h: HeaderMap| async move {
                    answer(&app, &h, format!("connect_info={a}")).await
                },
            ),
        )
        .route(
            "/state/{id}",
            get(|State(app): State<App>, h: HeaderMap| async move {
                let name = app.name;
                answer(&app, &h, format!("state={name}")).await
            }),
        )
        // After routing (Router::layer): the path parameters are already in
        // the request's extensions when the cache sees it.
        .layer(C3CacheLayer::new(c3.clone()))
        .layer(Extension(Tag("blue")))
        .layer(MockConnectInfo(CONN))
        .with_state(app)
}

/// One cell's world: a node with a manual clock, the app, its router.
struct Cell {
    clock: ManualClock,
    c3: c3_core::C3,
    app: App,
    svc: Router,
    url: String,
    expected: &'static str,
}

impl Cell {
    async fn new(route: &str, expected: &'static str, cache_control: &'static str) -> Cell {
        let clock = ManualClock::new();
        let c3 = clocked(&clock).await;
        let app = App {
            name: "shop",
            version: Arc::new(AtomicU64::new(1)),
            cache_control: Arc::new(std::sync::Mutex::new(cache_control)),
            gate: Arc::new(tokio::sync::Semaphore::new(1_000)),
            entered: Arc::new(AtomicU64::new(0)),
        };
        let svc = router(app.clone(), &c3);
        Cell {
            clock,
            c3,
            app,
            svc,
            url: format!("http://app.test/{route}/7"),
            expected,
        }
    }

    async fn request(&self, method: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut b = http::Request::builder().method(method).uri(&self.url);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let (p, body) = send(&self.svc, b.body(ReqBody::default()).unwrap()).await;
        (
            p.status.as_u16(),
            cache_status(&p),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// A GET, answered and stored.
    async fn primed(&self) {
        let w = self.c3.stats().writes;
        let (status, _, body) = self.request("GET", &[]).await;
        assert_eq!((status, body.as_str()), (200, self.body(1).as_str()));
        stored(&self.c3, w, 1).await;
    }

    fn body(&self, v: u64) -> String {
        format!("{} v{v}", self.expected)
    }

    fn bump(&self) {
        self.app.version.fetch_add(1, Ordering::SeqCst);
    }
}

/// The flows, each returning `Err(what went wrong)` for a cell.
async fn flow(name: &str, route: &str, expected: &'static str) -> Result<(), String> {
    let check = |got: (u16, String, String), status: u16, body: &str| {
        if got.0 == status && got.2 == body {
            Ok(())
        } else {
            Err(format!(
                "answered {} {:?} ({}), the handler's own answer is {status} {body:?}",
                got.0, got.2, got.1
            ))
        }
    };
    match name {
        "miss" => {
            let c = Cell::new(route, expected, "max-age=60").await;
            check(c.request("GET", &[]).await, 200, &c.body(1))
        }
        "hit" => {
            let c = Cell::new(route, expected, "max-age=60").await;
            c.primed().await;
            let got = c.request("GET", &[]).await;
            check(got, 200, &c.body(1))
        }
        "no-cache request" => {
            let c = Cell::new(route, expected, "max-age=60").await;
            c.primed().await;
            check(
                c.request("GET", &[("cache-control", "no-cache")]).await,
                200,
                &c.body(1),
            )?;
            check(
                c.request("GET", &[("pragma", "no-cache")]).await,
                200,
                &c.body(1),
            )
        }
        "304 revalidation" => {
            let c = Cell::new(route, expected, "max-age=1").await;
            c.primed().await;
            c.clock.advance(Duration::from_secs(2));
            check(c.request("GET", &[]).await, 200, &c.body(1))
        }
        "200 revalidation" => {
            let c = Cell::new(route, expected, "max-age=1").await;
            c.primed().await;
            c.bump();
            c.clock.advance(Duration::from_secs(2));
            check(c.request("GET", &[]).await, 200, &c.body(2))
        }
        "stale-while-revalidate" => {
            let c = Cell::new(route, expected, "max-age=1, stale-while-revalidate=60").await;
            c.primed().await;
            c.bump();
            c.clock.advance(Duration::from_secs(2));
            let w = c.c3.stats().writes;
            // Served stale at once; the background GET stores version 2.
            check(c.request("GET", &[]).await, 200, &c.body(1))?;
            let done = tokio::time::timeout(DELIVERY, async {
                while c.c3.stats().writes < w + 1 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            if done.is_err() {
                return Err("the background revalidation stored nothing".into());
            }
            check(c.request("GET", &[]).await, 200, &c.body(2))
        }
        "stale-if-error" => {
            // A handler that cannot read its extractor answers an error; the
            // layer would then serve the stale body, hiding it.
            let c = Cell::new(route, expected, "max-age=1, stale-if-error=60").await;
            c.primed().await;
            c.bump();
            c.clock.advance(Duration::from_secs(2));
            check(c.request("GET", &[]).await, 200, &c.body(2))
        }
        "collapsed leader and waiter" => {
            let c = Cell::new(route, expected, "max-age=60").await;
            let permits = c.app.gate.available_permits();
            let held = c.app.gate.acquire_many(permits as u32).await.unwrap();
            let (leader, waiter) = tokio::join!(c.request("GET", &[]), async {
                wait_until("the leader reached the handler", DELIVERY, || async {
                    c.app.entered.load(Ordering::SeqCst) >= 1
                })
                .await;
                let waiter = c.request("GET", &[]);
                let release = async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    drop(held);
                };
                tokio::join!(waiter, release).0
            });
            check(leader, 200, &c.body(1))?;
            check(waiter, 200, &c.body(1))
        }
        "range" => {
            let c = Cell::new(route, expected, "max-age=60").await;
            let got = c.request("GET", &[("range", "bytes=0-3")]).await;
            let full = c.body(1);
            match got.0 {
                206 if full.starts_with(&got.2) => {}
                200 if got.2 == full => {}
                _ => {
                    return Err(format!(
                        "a Range GET answered {} {:?} ({})",
                        got.0, got.2, got.1
                    ));
                }
            }
            // And from the stored response. The range request's own fetch
            // may already have stored it (then priming would wait for a
            // store that never comes), or the next GET does: either way a
            // GET soon answers from the cache.
            wait_until("a GET answers from the cache", DELIVERY, || async {
                c.request("GET", &[]).await.1.contains("hit")
            })
            .await;
            let got = c.request("GET", &[("range", "bytes=0-3")]).await;
            check(got, 206, &full[..4])
        }
        "head" => {
            let c = Cell::new(route, expected, "max-age=60").await;
            check(c.request("HEAD", &[]).await, 200, "")?;
            c.primed().await;
            check(c.request("HEAD", &[]).await, 200, "")
        }
        other => unreachable!("{other}"),
    }
}

const FLOWS: [&str; 10] = [
    "miss",
    "hit",
    "no-cache request",
    "304 revalidation",
    "200 revalidation",
    "stale-while-revalidate",
    "stale-if-error",
    "collapsed leader and waiter",
    "range",
    "head",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_answers_as_the_handler_would_for_every_extractor() {
    let mut failed = Vec::new();
    for f in FLOWS {
        for (route, expected) in ROUTES {
            if let Err(why) = flow(f, route, expected).await {
                failed.push(format!("{f} × {route}: {why}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cells differ from the handler's own answer:\n{}",
        failed.len(),
        FLOWS.len() * ROUTES.len(),
        failed.join("\n")
    );
}
