//! Entry point for the `http_headers` fuzz target in `fuzz/`, compiled only
//! with `--cfg fuzzing`. Not part of the API.

use std::time::{Duration, SystemTime};

use http::header::{
    ACCEPT_ENCODING, AGE, CACHE_CONTROL, DATE, EXPIRES, HeaderName, LAST_MODIFIED, PRAGMA, VARY,
};
use http::{HeaderMap, HeaderValue, Request, Response};

use super::Config;
use super::{cache_control, freshness, key};

/// Splits `data` at `0xFF` bytes into header values (response
/// `Cache-Control`, `Vary`, `Date`, `Age`, `Expires`, `Last-Modified`;
/// request `Cache-Control`, `Accept-Encoding`, `Pragma`) and runs the
/// storability decision and the variant key on them. Checks that a stored
/// response never outlives what its own directives allow to be checked:
/// freshness is finite, and `no-store` is never stored.
pub fn headers(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0xff);
    let mut next = |map: &mut HeaderMap, name: HeaderName| {
        if let Some(v) = parts.next().and_then(|p| HeaderValue::from_bytes(p).ok()) {
            map.append(name, v);
        }
    };
    let mut res = HeaderMap::new();
    for name in [CACHE_CONTROL, VARY, DATE, AGE, EXPIRES, LAST_MODIFIED] {
        next(&mut res, name);
    }
    let mut req = HeaderMap::new();
    for name in [CACHE_CONTROL, ACCEPT_ENCODING, PRAGMA] {
        next(&mut req, name);
    }
    let (mut req_parts, ()) = Request::get("http://fuzz.test/a?b=c")
        .body(())
        .expect("a valid request")
        .into_parts();
    req_parts.headers = req;
    let (mut res_parts, ()) = Response::new(()).into_parts();
    res_parts.headers = res;

    let req_dirs = cache_control::parse(&req_parts.headers, &CACHE_CONTROL);
    let res_dirs = cache_control::response_directives(&res_parts.headers);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let config = Config {
        heuristic_freshness: true,
        ..Config::default()
    };
    if let Ok(_storage) = freshness::decide(&req_parts, &req_dirs, &res_parts, &config, now, now) {
        assert!(
            !res_dirs.no_store && !req_dirs.no_store,
            "stored a no-store exchange"
        );
    }
    let _ = freshness::tags(&res_parts.headers);
    if let Some(vary) = freshness::vary_names(&res_parts.headers)
        && let Some(uri) = key::RequestUri::from_request(&req_parts, "http")
        && let Some(sel) = key::selection(&vary, &req_parts.headers)
    {
        let _ = key::variant_key(&uri.primary_key(), &sel);
    }
}
