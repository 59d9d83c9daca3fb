//! The one decision: may a stored response answer this request (RFC 9111 §4)?
//!
//! Every path that answers from a stored response asks here first — an L1
//! or L2 hit, a request that waited for another request's miss (collapsed),
//! a response refreshed by a 304 — so the rules cannot drift apart:
//!
//! 1. **Selecting headers** (§4.1): a response that varies answers only a
//!    request whose values for its `Vary` names are the ones it was stored
//!    for — an absent field matches only an absent one. (`Vary: *` is never
//!    stored.)
//! 2. **Credentials** (§3.5): a request with `Authorization` only gets a
//!    response that explicitly allows sharing (`public`, `s-maxage`,
//!    `must-revalidate`).
//! 3. **Freshness** (§4.2) and the request's own limits (`max-age`,
//!    `min-fresh`), unless `no-cache` (response or request, any letter case)
//!    demands validation.
//! 4. **Stale answers** only where allowed: the request's `max-stale`, the
//!    response's `stale-while-revalidate`, never past `must-revalidate`;
//!    `stale-if-error` decides what a failed validation may fall back to.

use http::header::AUTHORIZATION;
use http::request;

use super::cache_control::Directives;
use super::key::selection_is;
use super::stored::StoredResponse;

/// What a stored response may do for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Fresh, and within the request's limits: answer with it.
    Fresh { age: u64, ttl: i64 },
    /// Stale, and the request accepts that (`max-stale`).
    MaxStale { age: u64 },
    /// Stale within `stale-while-revalidate`: answer, and revalidate in the
    /// background.
    WhileRevalidate { age: u64 },
    /// Must be validated with the origin first; `stale_if_error`: may still
    /// answer if the origin fails.
    Revalidate { age: u64, stale_if_error: bool },
    /// May not answer this request at all (another variant, credentials).
    Never(&'static str),
}

/// Decides whether `stored` may answer the request `req` (with request
/// directives `dirs`) at `now_us`.
pub(crate) fn decide(
    stored: &StoredResponse,
    req: &request::Parts,
    dirs: &Directives,
    now_us: u64,
) -> Reuse {
    if !stored.vary.is_empty() && !selection_is(&stored.vary, &req.headers, &stored.selected) {
        return Reuse::Never("vary");
    }
    if req.headers.contains_key(AUTHORIZATION) && !stored.freshness.auth_ok {
        return Reuse::Never("authorization");
    }
    let age = stored.age(now_us);
    let ttl = stored.ttl(now_us);
    let must_check = stored.freshness.no_cache || dirs.no_cache;
    let within_request_limits =
        dirs.max_age.is_none_or(|m| age <= m) && dirs.min_fresh.is_none_or(|m| ttl >= m as i64);
    if !must_check && ttl > 0 && within_request_limits {
        return Reuse::Fresh { age, ttl };
    }
    let staleness = (-ttl).max(0) as u64;
    if !must_check && ttl <= 0 && !stored.freshness.must_revalidate {
        if let Some(max_stale) = dirs.max_stale
            && max_stale.is_none_or(|m| staleness <= m)
        {
            return Reuse::MaxStale { age };
        }
        // A request's max-age or min-fresh without max-stale says the client
        // does not want a stale response (RFC 9111 §5.2.1.1, §5.2.1.3): the
        // response's stale-while-revalidate does not override that.
        if staleness <= stored.freshness.swr && dirs.max_age.is_none() && dirs.min_fresh.is_none() {
            return Reuse::WhileRevalidate { age };
        }
    }
    Reuse::Revalidate {
        age,
        stale_if_error: !stored.freshness.must_revalidate && staleness <= stored.freshness.sie,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Request, StatusCode};

    fn stored(lifetime: u64) -> StoredResponse {
        let storage = crate::cache::freshness::Storage {
            freshness: crate::cache::freshness::Freshness {
                lifetime,
                ..Default::default()
            },
            ..Default::default()
        };
        StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            0,
            &storage,
            String::new(),
        )
    }

    fn req(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::get("http://a.test/x");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_variant_answers_only_its_own_selection() {
        let mut s = stored(60);
        s.vary = vec!["foo".into()];
        s.selected = "foo=a;".into();
        let d = Directives::default();
        assert!(matches!(
            decide(&s, &req(&[("foo", "a")]), &d, 0),
            Reuse::Fresh { .. }
        ));
        assert_eq!(
            decide(&s, &req(&[("foo", "b")]), &d, 0),
            Reuse::Never("vary")
        );
        assert_eq!(decide(&s, &req(&[]), &d, 0), Reuse::Never("vary"));
        s.selected = "foo;".into(); // stored for a request without Foo
        assert!(matches!(decide(&s, &req(&[]), &d, 0), Reuse::Fresh { .. }));
        assert_eq!(
            decide(&s, &req(&[("foo", "")]), &d, 0),
            Reuse::Never("vary")
        );
    }

    #[test]
    fn no_cache_and_credentials() {
        let mut s = stored(60);
        let d = Directives::default();
        assert_eq!(
            decide(&s, &req(&[("authorization", "x")]), &d, 0),
            Reuse::Never("authorization")
        );
        s.freshness.no_cache = true;
        assert!(matches!(
            decide(&s, &req(&[]), &d, 0),
            Reuse::Revalidate { .. }
        ));
        s.freshness.no_cache = false;
        let d = Directives {
            no_cache: true,
            ..Directives::default()
        };
        assert!(matches!(
            decide(&s, &req(&[]), &d, 0),
            Reuse::Revalidate { .. }
        ));
    }

    #[test]
    fn stale_answers_only_where_allowed() {
        let mut s = stored(10);
        let now = 20_000_000; // 10 s stale
        let d = Directives::default();
        assert!(matches!(
            decide(&s, &req(&[]), &d, now),
            Reuse::Revalidate {
                stale_if_error: false,
                ..
            }
        ));
        s.freshness.swr = 10;
        assert!(matches!(
            decide(&s, &req(&[]), &d, now),
            Reuse::WhileRevalidate { .. }
        ));
        // A reload (request max-age=0) or min-fresh wants nothing stale.
        for d in [
            Directives {
                max_age: Some(0),
                ..Directives::default()
            },
            Directives {
                min_fresh: Some(1),
                ..Directives::default()
            },
        ] {
            assert!(matches!(
                decide(&s, &req(&[]), &d, now),
                Reuse::Revalidate { .. }
            ));
        }
        let d = Directives {
            max_stale: Some(None),
            ..Directives::default()
        };
        assert!(matches!(
            decide(&s, &req(&[]), &d, now),
            Reuse::MaxStale { .. }
        ));
        s.freshness.must_revalidate = true;
        assert!(matches!(
            decide(&s, &req(&[]), &d, now),
            Reuse::Revalidate { .. }
        ));
    }
}
