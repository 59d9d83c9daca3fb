//! A randomized differential test of the HTTP layer: two replicas on one
//! PostgreSQL in front of an origin whose answer is a pure function of
//! (path, version, the request headers it varies on). Random overlapping
//! GETs (random `Foo`, random request directives) and PUT/DELETEs go
//! through random replicas; afterwards every answer is checked against the
//! origin's history:
//!
//! * **no other variant**: the body is exactly what the origin answers for
//!   *this* request's headers;
//! * **no older version**: the version answered was current at some moment
//!   between the request's start and its end — it was written before the
//!   request ended, and no write replacing it was *known to the replica*
//!   before the request started: made through it (its PUT returned, so its
//!   invalidation committed), or made through the other replica and its
//!   invalidation delivered here (c3's promise is "no stale read after
//!   delivery": notifications take a moment to cross). Delivery is proven,
//!   not guessed: after each write the writer commits a barrier key through
//!   its own node, and waits until the other node has applied it —
//!   notifications arrive in commit order, so the write's came first.
//!
//! Seeded and bounded: `C3_DIFF_SEED` (default: random, printed) and
//! `C3_DIFF_OPS` (operations per task, default 60).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use support::web::{VersionedOrigin, fetch, send};
use support::{Rng, TestDb};

const PATHS: usize = 4;

/// One answered GET.
struct Answer {
    replica: usize,
    path: String,
    headers: http::HeaderMap,
    started: Instant,
    ended: Instant,
    body: String,
    status: String,
}

#[derive(Default)]
struct Log {
    answers: Vec<Answer>,
    /// (path, version a write made) → (the replica it went through, when its
    /// PUT/DELETE returned, when the other replica had applied it).
    completed: HashMap<(String, u64), (usize, Instant, Instant)>,
}

fn settings() -> (u64, usize) {
    let seed = support::seed_from("C3_DIFF_SEED");
    let ops = std::env::var("C3_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    (seed, ops)
}

async fn run(name: &str, cache_control: &str, vary: &[&str]) {
    let (seed, ops) = settings();
    eprintln!("{name}: seed {seed}, {ops} ops per task (C3_DIFF_SEED / C3_DIFF_OPS)");
    let db = TestDb::new(name).await;
    // The barrier keys each node has applied from the other's notifications.
    let applied: [Arc<Mutex<HashSet<String>>>; 2] = Default::default();
    let mut nodes = Vec::new();
    for seen in &applied {
        let seen = Arc::clone(seen);
        let node = db
            .builder()
            .on_applied(move |n| {
                let mut seen = seen.lock().unwrap();
                for (_, k) in n.written {
                    if k.starts_with("barrier:") {
                        seen.insert(k.clone());
                    }
                }
            })
            .build()
            .await
            .unwrap();
        nodes.push(node);
    }
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let origin = VersionedOrigin::with(cache_control, vary, None);
    let replicas = [origin.cached(&a), origin.cached(&b)];
    let log = Arc::new(Mutex::new(Log::default()));

    let task = |t: usize| {
        let (replicas, origin, log) = (&replicas, &origin, Arc::clone(&log));
        let (nodes, applied) = (&nodes, &applied);
        let mut rng = Rng(seed ^ (t as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        async move {
            for op in 0..ops {
                let replica = rng.below(2);
                let svc = &replicas[replica];
                let path = format!("/p{}", rng.below(PATHS));
                let url = format!("http://app.test{path}");
                if rng.below(100) < 25 {
                    let method = if rng.below(2) == 0 { "PUT" } else { "DELETE" };
                    let req = http::Request::builder()
                        .method(method)
                        .uri(&url)
                        .body(Body::empty())
                        .unwrap();
                    let (p, body) = send(svc, req).await;
                    assert_eq!(p.status, 200);
                    let version: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
                    let done = Instant::now();
                    let barrier = format!("barrier:{t}:{op}");
                    nodes[replica].set(&barrier, &1u8).await.unwrap();
                    let other = &applied[1 - replica];
                    support::wait_until("the barrier crosses", support::DELIVERY, || async {
                        other.lock().unwrap().contains(&barrier)
                    })
                    .await;
                    log.lock()
                        .unwrap()
                        .completed
                        .insert((path, version), (replica, done, Instant::now()));
                } else {
                    let mut headers: Vec<(&str, &str)> = Vec::new();
                    match rng.below(4) {
                        0 => {}
                        1 => headers.push(("foo", "a")),
                        2 => headers.push(("foo", "b")),
                        _ => headers.push(("foo", "")),
                    }
                    match rng.below(6) {
                        0 => headers.push(("cache-control", "no-cache")),
                        1 => headers.push(("cache-control", "max-age=0")),
                        2 => headers.push(("pragma", "no-cache")),
                        _ => {}
                    }
                    let started = Instant::now();
                    let (p, body) = fetch(svc, &url, &headers).await;
                    let ended = Instant::now();
                    assert_eq!(p.status, 200, "{}", support::web::cache_status(&p));
                    let mut h = http::HeaderMap::new();
                    for (n, v) in &headers {
                        h.append(*n, v.parse().unwrap());
                    }
                    log.lock().unwrap().answers.push(Answer {
                        replica,
                        path,
                        headers: h,
                        started,
                        ended,
                        body: String::from_utf8(body.to_vec()).unwrap(),
                        status: support::web::cache_status(&p),
                    });
                }
                // Overlap the tasks' requests, not just their I/O waits.
                tokio::task::yield_now().await;
            }
            let _ = origin;
        }
    };
    tokio::join!(task(0), task(1), task(2), task(3), task(4), task(5));

    let log = log.lock().unwrap();
    let mut anomalies = Vec::new();
    let mut hits = 0;
    for ans in &log.answers {
        // Answered from what the cache held: a hit, or a stored response
        // the origin confirmed with a 304.
        if ans.status.contains("hit") || ans.status.contains("fwd-status=304") {
            hits += 1;
        }
        let version: u64 = ans
            .body
            .split('@')
            .nth(1)
            .and_then(|rest| rest.trim_start_matches('v').split(';').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unreadable body {:?}", ans.body));
        let expected = origin.body_for(&ans.path, version, &ans.headers);
        if ans.body != expected {
            anomalies.push(format!(
                "{}: another variant: {:?} for {:?} ({})",
                ans.path, ans.body, ans.headers, ans.status
            ));
            continue;
        }
        // Written before the request ended…
        let born = origin.written_at(&ans.path, version);
        if version > 0 && born.is_none_or(|t| t > ans.ended) {
            anomalies.push(format!(
                "{}: v{version} answered before it was written",
                ans.path
            ));
        }
        // …and not replaced by a write this replica knew of when it started.
        let replaced = log
            .completed
            .iter()
            .filter(|((p, v), _)| *p == ans.path && *v > version)
            .map(|(_, (via, done, delivered))| {
                if *via == ans.replica {
                    *done
                } else {
                    *delivered
                }
            })
            .min();
        if let Some(t) = replaced
            && t < ans.started
        {
            anomalies.push(format!(
                "{} on replica {}: v{version} answered {:?} after a newer write was known there ({})",
                ans.path,
                ans.replica,
                ans.started - t,
                ans.status
            ));
        }
    }
    // The races the run is about: GETs during which a write to their path
    // reached the origin (and those that went upstream meanwhile, whose
    // response a store could have raced).
    let overlapping: Vec<&Answer> = log
        .answers
        .iter()
        .filter(|a| {
            log.completed.keys().any(|(p, v)| {
                *p == a.path
                    && origin
                        .written_at(p, *v)
                        .is_some_and(|t| t > a.started && t < a.ended)
            })
        })
        .collect();
    let upstream = overlapping
        .iter()
        .filter(|a| a.status.contains("fwd="))
        .count();
    eprintln!(
        "{name}: {} answers ({hits} from stored responses), {} writes, {} GETs overlapped a write \
         on their path ({upstream} of them went upstream), {} anomalies",
        log.answers.len(),
        log.completed.len(),
        overlapping.len(),
        anomalies.len()
    );
    assert!(hits > 0, "the run never hit the cache: it tested nothing");
    assert!(
        upstream > 0,
        "no GET that went upstream overlapped a write on its path: the run raced nothing"
    );
    if let Some(first) = anomalies.first() {
        // The timeline of the first anomaly's path, to see what happened.
        let path = first
            .split(' ')
            .next()
            .unwrap_or("")
            .trim_end_matches(':')
            .to_owned();
        let t0 = log.answers.iter().map(|a| a.started).min().unwrap();
        let at = |t: Instant| t.duration_since(t0).as_micros();
        let mut events: Vec<(u128, String)> = Vec::new();
        for ((p, v), (via, done, delivered)) in &log.completed {
            if *p == path {
                let born = origin.written_at(p, *v).map_or(0, at);
                events.push((
                    born,
                    format!(
                        "v{v} written at origin (via replica {via}); returned {}µs, delivered {}µs",
                        at(*done),
                        at(*delivered)
                    ),
                ));
            }
        }
        for a in log.answers.iter().filter(|a| a.path == path) {
            events.push((
                at(a.started),
                format!(
                    "replica {} GET {:?} → {} ({}) ended {}µs",
                    a.replica,
                    a.headers,
                    a.body,
                    a.status,
                    at(a.ended)
                ),
            ));
        }
        events.sort();
        for (t, e) in events {
            eprintln!("{t:>9}µs {e}");
        }
    }
    assert!(
        anomalies.is_empty(),
        "seed {seed}: {} anomalies, first: {:#?}",
        anomalies.len(),
        &anomalies[..anomalies.len().min(10)]
    );
}

#[tokio::test]
async fn answers_are_what_the_origin_said_during_the_request_varying() {
    run("diff_vary", "max-age=300", &["foo"]).await;
}

#[tokio::test]
async fn answers_are_what_the_origin_said_during_the_request_plain() {
    run("diff_plain", "max-age=300", &[]).await;
}

#[tokio::test]
async fn answers_are_what_the_origin_said_during_the_request_no_cache() {
    run("diff_no_cache", "max-age=300, No-Cache", &["foo"]).await;
}
