//! RFC 9111 decisions: may this response be stored by a shared cache, for how
//! long is it fresh, and how old is it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{AGE, AUTHORIZATION, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode, request, response};

use super::Config;
use super::cache_control::{Directives, response_directives};

/// Headers a response may use to tag itself for group invalidation.
pub(crate) const SURROGATE_KEY: &str = "surrogate-key";
pub(crate) const CACHE_TAG: &str = "cache-tag";
const MAX_TAGS: usize = 64;

/// How a stored response ages (RFC 9111 §4.2–§4.2.4), decided once when
/// it is stored and kept with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Freshness lifetime in seconds (0: stale on arrival, revalidate first).
    pub(crate) lifetime: u64,
    /// RFC 9111 §4.2.3 `corrected_initial_age`, in seconds.
    pub(crate) initial_age: u64,
    /// `stale-while-revalidate` window, seconds.
    pub(crate) swr: u64,
    /// `stale-if-error` window, seconds.
    pub(crate) sie: u64,
    /// `must-revalidate`/`proxy-revalidate`: never served stale.
    pub(crate) must_revalidate: bool,
    /// `no-cache`: always revalidated before use.
    pub(crate) no_cache: bool,
    /// Carries `public`, `s-maxage` or `must-revalidate`, so it may answer a
    /// request with `Authorization` (RFC 9111 §3.5).
    pub(crate) auth_ok: bool,
}

/// How a stored response must be treated, computed when it was received.
#[derive(Debug, Clone, Default)]
pub(crate) struct Storage {
    pub(crate) freshness: Freshness,
    /// Lower-case names from `Vary`.
    pub(crate) vary: Vec<String>,
    /// From `Surrogate-Key` / `Cache-Tag`.
    pub(crate) tags: Vec<String>,
    /// How long the c3 entry should live: freshness left plus the longest
    /// window in which a stale copy is still useful.
    pub(crate) keep: Duration,
}

/// Status codes a cache may store without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The `Age` of a response (RFC 9111 §5.1): of a list — several field lines,
/// or one with commas — only the first member counts; a value that is not a
/// non-negative integer is ignored (0); a huge one is 2^31.
pub(crate) fn age_value(h: &HeaderMap) -> u64 {
    let Some(first) = h
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next())
        .map(str::trim)
    else {
        return 0;
    };
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    first.parse::<u64>().map_or(1 << 31, |a| a.min(1 << 31))
}

pub(crate) fn secs_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn header_date(h: &HeaderMap, name: http::header::HeaderName) -> Option<Result<u64, ()>> {
    let v = h.get(name)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .map(secs_since_epoch)
            .ok_or(()),
    )
}

/// The refusals of RFC 9111 §3 (and a shared cache's duties): what may
/// never be stored, whatever its freshness. Returns the response's `Vary`
/// names and whether it may answer requests with credentials.
fn may_store(
    req: &request::Parts,
    req_dirs: &Directives,
    res: &response::Parts,
    d: &Directives,
    cfg: &Config,
) -> Result<(Vec<String>, bool), &'static str> {
    if req.method != Method::GET {
        return Err("method");
    }
    if req_dirs.no_store {
        return Err("request no-store");
    }
    if res.status.is_informational()
        || res.status == StatusCode::PARTIAL_CONTENT
        || res.status == StatusCode::NOT_MODIFIED
    {
        return Err("status");
    }
    if d.malformed {
        return Err("malformed cache-control");
    }
    if d.no_store {
        return Err("no-store");
    }
    if d.private {
        return Err("private");
    }
    let vary = vary_names(&res.headers).ok_or("vary")?;
    if res.headers.contains_key(SET_COOKIE) && !cfg.store_set_cookie {
        return Err("set-cookie");
    }
    let auth_ok = d.public || d.s_maxage.is_some() || d.must_revalidate;
    if req.headers.contains_key(AUTHORIZATION) && !auth_ok {
        return Err("authorization");
    }
    Ok((vary, auth_ok))
}

/// The freshness lifetime in seconds (RFC 9111 §4.2.1): `s-maxage`, else
/// `max-age`, else `Expires` − `Date`, else — when allowed — a tenth of the
/// time since `Last-Modified` (at most a day).
fn freshness_lifetime(
    res: &response::Parts,
    d: &Directives,
    cfg: &Config,
    date: u64,
) -> Option<u64> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        Some(s)
    } else if let Some(expires) = header_date(&res.headers, EXPIRES) {
        // An invalid Expires (e.g. "0") means "already expired".
        Some(expires.map_or(0, |e| e.saturating_sub(date)))
    } else if cfg.heuristic_freshness && heuristically_cacheable(res.status) {
        match header_date(&res.headers, LAST_MODIFIED) {
            Some(Ok(lm)) => Some((date.saturating_sub(lm) / 10).min(86_400)),
            _ => None,
        }
    } else {
        None
    }
}

/// Decides whether `res`, received for `req`, may be stored, and how.
/// `Err` carries the reason it may not (for logs and tests).
pub(crate) fn decide(
    req: &request::Parts,
    req_dirs: &Directives,
    res: &response::Parts,
    cfg: &Config,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Result<Storage, &'static str> {
    let d = response_directives(&res.headers);
    let (vary, auth_ok) = may_store(req, req_dirs, res, &d, cfg)?;

    let response_s = secs_since_epoch(response_time);
    let date = match header_date(&res.headers, DATE) {
        Some(Ok(d)) => d,
        _ => response_s,
    };
    let lifetime = freshness_lifetime(res, &d, cfg, date);
    let has_validators = res.headers.contains_key(ETAG) || res.headers.contains_key(LAST_MODIFIED);
    let lifetime = match lifetime {
        Some(l) => l,
        // No freshness information: worth keeping only to revalidate cheaply.
        None if has_validators && heuristically_cacheable(res.status) => 0,
        None => return Err("no freshness information"),
    };

    // RFC 9111 §4.2.3, with §5.1's parsing of `Age`.
    let age_value = age_value(&res.headers);
    let apparent_age = response_s.saturating_sub(date);
    let response_delay = response_time
        .duration_since(request_time)
        .map_or(0, |d| d.as_secs());
    let initial_age = apparent_age.max(age_value + response_delay);

    // s-maxage implies proxy-revalidate in a shared cache (RFC 9111 §5.2.2.10).
    let must_revalidate = d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some();
    let (swr, sie) = if must_revalidate {
        (0, 0)
    } else {
        (
            d.stale_while_revalidate.unwrap_or(0),
            d.stale_if_error.unwrap_or(0),
        )
    };
    let fresh_left = lifetime.saturating_sub(initial_age);
    let revalidate_keep = if has_validators {
        cfg.revalidation_window.as_secs()
    } else {
        0
    };
    let keep = fresh_left + swr.max(sie).max(revalidate_keep);
    if keep == 0 {
        return Err("stale on arrival");
    }
    Ok(Storage {
        freshness: Freshness {
            lifetime,
            initial_age,
            swr,
            sie,
            must_revalidate,
            no_cache: d.no_cache,
            auth_ok,
        },
        vary,
        tags: tags(&res.headers),
        keep: Duration::from_secs(keep),
    })
}

/// `Vary` names, lower-cased and sorted; `None` for `Vary: *` or unreadable values.
pub(crate) fn vary_names(h: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in h.get_all(VARY) {
        for name in v.to_str().ok()?.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() {
                http::HeaderName::from_bytes(name.as_bytes()).ok()?;
                names.push(name);
            }
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// Tags from `Surrogate-Key` (space-separated) and `Cache-Tag`
/// (comma-separated); unreadable values and excess tags are ignored.
pub(crate) fn tags(h: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = [SURROGATE_KEY, CACHE_TAG]
        .iter()
        .flat_map(|n| h.get_all(*n))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split([' ', ',']))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_TAGS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::cache_control::parse;

    fn check(req: http::Request<()>, res: http::Response<()>) -> Result<Storage, &'static str> {
        let (rq, ()) = req.into_parts();
        let (rs, ()) = res.into_parts();
        let d = parse(&rq.headers, &http::header::CACHE_CONTROL);
        let now = SystemTime::now();
        decide(&rq, &d, &rs, &Config::default(), now, now)
    }

    fn get() -> http::request::Builder {
        http::Request::get("http://x/")
    }

    fn ok() -> http::response::Builder {
        http::Response::builder().status(200)
    }

    #[test]
    fn storability() {
        let s = check(
            get().body(()).unwrap(),
            ok().header("cache-control", "max-age=60").body(()).unwrap(),
        )
        .unwrap();
        assert_eq!((s.freshness.lifetime, s.keep.as_secs()), (60, 60));
        for cc in ["no-store", "private", "max-age=x, no-store"] {
            assert!(
                check(
                    get().body(()).unwrap(),
                    ok().header("cache-control", cc).body(()).unwrap()
                )
                .is_err(),
                "{cc}"
            );
        }
        assert_eq!(
            check(get().body(()).unwrap(), ok().body(()).unwrap()).unwrap_err(),
            "no freshness information"
        );
        assert_eq!(
            check(
                get().body(()).unwrap(),
                ok().header("cache-control", "max-age=60")
                    .header("vary", "*")
                    .body(())
                    .unwrap()
            )
            .unwrap_err(),
            "vary"
        );
        assert_eq!(
            check(
                get().body(()).unwrap(),
                ok().header("cache-control", "max-age=60")
                    .header("set-cookie", "a=b")
                    .body(())
                    .unwrap()
            )
            .unwrap_err(),
            "set-cookie"
        );
    }

    #[test]
    fn requests_with_credentials_or_other_methods() {
        let authed = || get().header("authorization", "Bearer t");
        assert_eq!(
            check(
                authed().body(()).unwrap(),
                ok().header("cache-control", "max-age=60").body(()).unwrap()
            )
            .unwrap_err(),
            "authorization"
        );
        assert!(
            check(
                authed().body(()).unwrap(),
                ok().header("cache-control", "public, max-age=60")
                    .body(())
                    .unwrap()
            )
            .is_ok()
        );
        assert!(
            check(
                get().header("cache-control", "no-store").body(()).unwrap(),
                ok().header("cache-control", "max-age=9").body(()).unwrap()
            )
            .is_err()
        );
        let post = http::Request::post("http://x/").body(()).unwrap();
        assert!(
            check(
                post,
                ok().header("cache-control", "max-age=60").body(()).unwrap()
            )
            .is_err()
        );
        assert!(
            check(
                get().body(()).unwrap(),
                ok().status(206)
                    .header("cache-control", "max-age=60")
                    .body(())
                    .unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn lifetimes_and_age() {
        let now = httpdate::fmt_http_date(SystemTime::now());
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let s = check(
            get().body(()).unwrap(),
            ok().header("date", &now)
                .header("expires", &later)
                .body(())
                .unwrap(),
        )
        .unwrap();
        assert!(
            (119..=120).contains(&s.freshness.lifetime),
            "{}",
            s.freshness.lifetime
        );
        let s = check(
            get().body(()).unwrap(),
            ok().header("cache-control", "max-age=100, s-maxage=10")
                .header("age", "4")
                .body(())
                .unwrap(),
        )
        .unwrap();
        assert_eq!((s.freshness.lifetime, s.freshness.initial_age), (10, 4));
        assert!(
            s.freshness.must_revalidate,
            "s-maxage implies proxy-revalidate"
        );
        let r = check(
            get().body(()).unwrap(),
            ok().header("expires", "0")
                .header("etag", "\"a\"")
                .body(())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.freshness.lifetime, 0, "invalid Expires is stale");
        let r = check(
            get().body(()).unwrap(),
            ok().header(
                "cache-control",
                "max-age=1, stale-while-revalidate=30, stale-if-error=60",
            )
            .body(())
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (r.freshness.swr, r.freshness.sie, r.keep.as_secs()),
            (30, 60, 61)
        );
    }

    #[test]
    fn age_is_the_first_member_of_a_list() {
        let age = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AGE, v.parse().unwrap());
            }
            age_value(&h)
        };
        assert_eq!(age(&["30"]), 30);
        assert_eq!(age(&["30, 7200"]), 30);
        assert_eq!(age(&["30", "7200"]), 30);
        assert_eq!(age(&["-5"]), 0);
        assert_eq!(age(&["1.5"]), 0);
        assert_eq!(age(&["abc, 60"]), 0);
        assert_eq!(age(&["99999999999999999999"]), 1 << 31);
        assert_eq!(age(&[]), 0);
    }

    #[test]
    fn vary_and_tags() {
        let mut h = HeaderMap::new();
        h.append("vary", "Accept-Encoding, accept-language".parse().unwrap());
        h.append("vary", "Accept".parse().unwrap());
        assert_eq!(
            vary_names(&h).unwrap(),
            vec!["accept", "accept-encoding", "accept-language"]
        );
        h.insert("surrogate-key", "user:42  post:1".parse().unwrap());
        h.insert("cache-tag", "a,b, user:42".parse().unwrap());
        assert_eq!(tags(&h), vec!["a", "b", "post:1", "user:42"]);
    }
}

/// Hostile header values: parsing never panics, `Vary` with hundreds of
/// names is keyed consistently, and unreadable values fail safe.
#[cfg(test)]
mod properties {
    use http::HeaderValue;
    use http::header::{CACHE_CONTROL, HeaderName};
    use proptest::prelude::*;

    use super::super::cache_control;
    use super::*;

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_filter_map("a valid header value", |b| HeaderValue::from_bytes(&b).ok())
    }

    proptest! {
        #[test]
        fn directives_dates_and_tags_never_panic(
            cc in header_value(), date in header_value(), vary in header_value(), tag in header_value()
        ) {
            let mut h = HeaderMap::new();
            h.insert(CACHE_CONTROL, cc);
            h.insert(DATE, date.clone());
            h.insert(EXPIRES, date.clone());
            h.insert(AGE, date);
            h.insert(VARY, vary);
            h.insert(HeaderName::from_static("surrogate-key"), tag);
            let _ = cache_control::parse(&h, &CACHE_CONTROL);
            let _ = cache_control::response_directives(&h);
            let _ = vary_names(&h);
            let _ = tags(&h);
        }

        #[test]
        fn numbers_in_directives_never_overflow(n in any::<u128>(), name in prop::sample::select(vec!["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "max-stale", "min-fresh"])) {
            let mut h = HeaderMap::new();
            h.insert(CACHE_CONTROL, HeaderValue::from_str(&format!("{name}={n}")).unwrap());
            let _ = cache_control::parse(&h, &CACHE_CONTROL);
        }

        #[test]
        fn vary_order_and_case_do_not_change_the_key(mut names in prop::collection::vec("[a-z][a-z0-9-]{0,20}", 1..300)) {
            let joined = names.join(", ");
            let mut h = HeaderMap::new();
            h.insert(VARY, HeaderValue::from_str(&joined).unwrap());
            let a = vary_names(&h).expect("readable");
            names.reverse();
            let shuffled = names.iter().map(|n| n.to_ascii_uppercase()).collect::<Vec<_>>().join(",");
            h.insert(VARY, HeaderValue::from_str(&shuffled).unwrap());
            prop_assert_eq!(vary_names(&h).expect("readable"), a);
        }
    }
}
