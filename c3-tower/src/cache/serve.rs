//! Answering from a stored response: the full response, a 304 when the
//! request's own validators match it, or a byte range of it (RFC 9110 §14).

use std::sync::OnceLock;

use http::header::{self, CACHE_CONTROL, CONTENT_LOCATION, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderValue, Method, Response, StatusCode, request};

use super::body::C3Body;
use super::freshness::secs_since_epoch;
use super::status::{CACHE_STATUS, CacheStatus};
use super::stored::StoredResponse;

/// Answers `parts` from `stored`, which is `age` seconds old.
pub(crate) fn serve<B>(
    stored: &StoredResponse,
    parts: &request::Parts,
    age: u64,
    status: CacheStatus,
) -> Response<C3Body<B>> {
    if not_modified_for(parts, stored) {
        let mut res = Response::new(C3Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in stored.headers.get_all(&name) {
                res.headers_mut().append(name.clone(), v.clone());
            }
        }
        return finish(res, age, status);
    }
    let head = parts.method == Method::HEAD;
    let mut res = match byte_range(parts, stored) {
        Some(Ranged::Part(start, end)) => {
            let body = if head {
                C3Body::empty()
            } else {
                C3Body::full(stored.body.slice(start..=end))
            };
            let mut res = Response::new(body);
            *res.status_mut() = StatusCode::PARTIAL_CONTENT;
            *res.headers_mut() = stored.headers.clone();
            let len = stored.body.len();
            if let Ok(v) = format!("bytes {start}-{end}/{len}").parse::<HeaderValue>() {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            res
        }
        Some(Ranged::Unsatisfiable) => {
            let mut res = Response::new(C3Body::empty());
            *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let len = stored.body.len();
            if let Ok(v) = format!("bytes */{len}").parse::<HeaderValue>() {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            res
        }
        None => {
            let body = if head {
                C3Body::empty()
            } else {
                C3Body::full(stored.body.clone())
            };
            let mut res = Response::new(body);
            *res.status_mut() = stored.status;
            // Made when the response was stored: one clone, then the two
            // values that change overwritten in place.
            let headers = res.headers_mut();
            *headers = stored.served().clone();
            headers.insert(header::AGE, age_value(age));
            if let header::Entry::Occupied(mut ours) = headers.entry(CACHE_STATUS)
                && let Some(last) = ours.iter_mut().last()
            {
                *last = status.header_value();
            }
            return res;
        }
    };
    if stored.status == StatusCode::OK {
        res.headers_mut()
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    finish(res, age, status)
}

fn finish<B>(mut res: Response<C3Body<B>>, age: u64, status: CacheStatus) -> Response<C3Body<B>> {
    res.headers_mut().insert(header::AGE, age_value(age));
    res.headers_mut()
        .append(CACHE_STATUS, status.header_value());
    res
}

/// An `Age` value. The first ages are made once and kept for the life of
/// the process (static strings, so a clone is a copy, not a shared count):
/// most hits are younger than that.
fn age_value(age: u64) -> HeaderValue {
    const KEPT: usize = 1024;
    static AGES: [OnceLock<HeaderValue>; KEPT] = [const { OnceLock::new() }; KEPT];
    match usize::try_from(age).ok().and_then(|i| AGES.get(i)) {
        Some(kept) => kept
            .get_or_init(|| HeaderValue::from_static(Box::leak(age.to_string().into_boxed_str())))
            .clone(),
        None => HeaderValue::from(age),
    }
}

/// The 504 of an `only-if-cached` request the cache cannot answer.
pub(crate) fn gateway_timeout<B>() -> Response<C3Body<B>> {
    let mut res = Response::new(C3Body::empty());
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    res.headers_mut().append(
        CACHE_STATUS,
        CacheStatus::fwd(super::status::Fwd::Miss)
            .detail("only-if-cached")
            .header_value(),
    );
    res
}

/// RFC 9110 §13.1.2/§13.1.3, weak comparison for If-None-Match.
fn not_modified_for(parts: &request::Parts, stored: &StoredResponse) -> bool {
    if !stored.status.is_success() {
        return false;
    }
    if parts.headers.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.etag().and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        let ours = weak(etag);
        return parts
            .headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || weak(t) == ours);
    }
    let since = parts
        .headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = stored
        .last_modified()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified) {
        (Some(since), Some(modified)) => secs_since_epoch(modified) <= secs_since_epoch(since),
        _ => false,
    }
}

/// A `Range` request against a stored complete response.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// Bytes `start..=end`.
    Part(usize, usize),
    /// No byte of the range exists (416).
    Unsatisfiable,
}

/// RFC 9110 §14.2: the range to answer with, or `None` to answer with the
/// whole response — no `Range`, not a GET, not a complete 200, an
/// `If-Range` that does not match, a unit or syntax we do not take, or
/// several ranges (a multipart answer is optional; the whole body is a
/// valid answer to any range request).
fn byte_range(parts: &request::Parts, stored: &StoredResponse) -> Option<Ranged> {
    let range = parts.headers.get(header::RANGE)?;
    if parts.method != Method::GET || stored.status != StatusCode::OK {
        return None;
    }
    if let Some(if_range) = parts.headers.get(header::IF_RANGE)
        && !if_range_matches(if_range, stored)
    {
        return None;
    }
    let spec = range.to_str().ok()?.trim();
    let (unit, set) = spec.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let len = stored.body.len();
    let (first, last) = set.trim().split_once('-')?;
    let digits = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            return Some(None);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Overflowing digits are simply past the end.
        Some(Some(s.parse().unwrap_or(u64::MAX)))
    };
    match (digits(first)?, digits(last)?) {
        (Some(first), last) => {
            if last.is_some_and(|l| l < first) {
                return None; // invalid: ignore the field
            }
            if first >= len as u64 {
                return Some(Ranged::Unsatisfiable);
            }
            let end = last.map_or(len as u64 - 1, |l| l.min(len as u64 - 1));
            Some(Ranged::Part(first as usize, end as usize))
        }
        (None, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                return Some(Ranged::Unsatisfiable);
            }
            let start = len as u64 - suffix.min(len as u64);
            Some(Ranged::Part(start as usize, len - 1))
        }
        (None, None) => None,
    }
}

/// RFC 9110 §13.1.5: a strong entity-tag equal to the stored one, or a date
/// equal to its `Last-Modified`.
fn if_range_matches(if_range: &HeaderValue, stored: &StoredResponse) -> bool {
    let Ok(v) = if_range.to_str() else {
        return false;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return stored
            .etag()
            .and_then(|e| e.to_str().ok())
            .is_some_and(|e| e.trim() == v);
    }
    if v.starts_with("W/") {
        return false; // weak tags never match If-Range
    }
    stored
        .last_modified()
        .is_some_and(|lm| lm.as_bytes() == v.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Request};

    fn stored(body: &'static [u8]) -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let storage = crate::cache::freshness::Storage {
            freshness: crate::cache::freshness::Freshness {
                lifetime: 60,
                ..Default::default()
            },
            ..Default::default()
        };
        StoredResponse::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(body),
            0,
            &storage,
            String::new(),
        )
    }

    fn ranged(range: &str, if_range: Option<&str>) -> Option<Ranged> {
        let mut b = Request::get("http://a.test/").header(header::RANGE, range);
        if let Some(i) = if_range {
            b = b.header(header::IF_RANGE, i);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        byte_range(&parts, &stored(b"0123456789"))
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(ranged("bytes=0-3", None), Some(Ranged::Part(0, 3)));
        assert_eq!(ranged("bytes=5-", None), Some(Ranged::Part(5, 9)));
        assert_eq!(ranged("bytes=-3", None), Some(Ranged::Part(7, 9)));
        assert_eq!(ranged("bytes=8-100", None), Some(Ranged::Part(8, 9)));
        assert_eq!(ranged("BYTES=-100", None), Some(Ranged::Part(0, 9)));
        assert_eq!(ranged("bytes=10-", None), Some(Ranged::Unsatisfiable));
        assert_eq!(ranged("bytes=-0", None), Some(Ranged::Unsatisfiable));
        // Ignored: the whole response answers.
        assert_eq!(ranged("bytes=3-1", None), None);
        assert_eq!(ranged("bytes=0-1,4-5", None), None);
        assert_eq!(ranged("items=0-1", None), None);
        assert_eq!(ranged("bytes=a-b", None), None);
        assert_eq!(
            ranged("bytes=0-3", Some("\"v1\"")),
            Some(Ranged::Part(0, 3))
        );
        assert_eq!(ranged("bytes=0-3", Some("\"v2\"")), None);
        assert_eq!(ranged("bytes=0-3", Some("W/\"v1\"")), None);
    }
}
