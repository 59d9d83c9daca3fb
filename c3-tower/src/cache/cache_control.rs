//! Parsing of `Cache-Control` and its targeted variants (`CDN-Cache-Control`,
//! RFC 9213, and c3's own override header).
//!
//! The parser is total: any input yields [`Directives`]. Bytes outside visible
//! ASCII make the whole field `malformed`, and a malformed response field
//! makes the response unstorable — when in doubt, do not share.

use http::HeaderMap;
use http::header::{CACHE_CONTROL, HeaderName};

/// The c3 override header: honoured above `CDN-Cache-Control` and
/// `Cache-Control`, and removed before the response leaves the cache.
pub const C3_CACHE_CONTROL: HeaderName = HeaderName::from_static("c3-cache-control");
/// RFC 9213 targeted cache control for CDNs and shared caches.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Largest delta-seconds honoured (RFC 9111 §1.2.2: 2^31).
const MAX_DELTA: u64 = 1 << 31;

/// Parsed directives; request-only and response-only ones share the struct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    /// `max-stale` (request): `Some(None)` accepts any staleness.
    pub(crate) max_stale: Option<Option<u64>>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) only_if_cached: bool,
    /// A field value that is not visible ASCII, or a directive value that
    /// does not parse.
    pub(crate) malformed: bool,
    /// At least one field was present.
    pub(crate) present: bool,
}

/// Parses every value of `name` in `headers` as one directive list.
pub(crate) fn parse(headers: &HeaderMap, name: &HeaderName) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(name) {
        d.present = true;
        match value.to_str() {
            Ok(s) => parse_into(s, &mut d),
            Err(_) => d.malformed = true,
        }
    }
    d
}

/// The directives that govern a response in a shared cache: the c3 override
/// if present, else `CDN-Cache-Control`, else `Cache-Control` (RFC 9213 §2.1:
/// a targeted field replaces the general one entirely). A targeted field that
/// is not a valid RFC 8941 dictionary is ignored as if absent.
pub(crate) fn response_directives(headers: &HeaderMap) -> Directives {
    for name in [&C3_CACHE_CONTROL, &CDN_CACHE_CONTROL] {
        if let Some(d) = parse_targeted(headers, name) {
            return d;
        }
    }
    parse(headers, &CACHE_CONTROL)
}

/// A targeted cache-control field (RFC 9213 §2.1): an RFC 8941 dictionary.
/// `None` when absent or invalid. A directive whose value has the wrong type
/// (e.g. `max-age="60"`, `no-store=3`) is ignored; `?0` turns a flag off.
fn parse_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Directives> {
    let mut lines = Vec::new();
    for v in headers.get_all(name) {
        lines.push(v.to_str().ok()?);
    }
    if lines.is_empty() {
        return None;
    }
    let dict = super::structured::parse_dictionary(&lines.join(", "))?;
    let mut d = Directives {
        present: true,
        ..Directives::default()
    };
    use super::structured::Item;
    for (key, value) in dict {
        let flag = match value {
            Item::Boolean(b) => Some(b),
            // `no-cache="field"`, `private="field"`: stricter, never looser.
            Item::String(_) if key == "no-cache" || key == "private" => Some(true),
            _ => None,
        };
        let secs = match value {
            Item::Integer(n) if n >= 0 => Some((n as u64).min(MAX_DELTA)),
            _ => None,
        };
        let min = |old: Option<u64>| match (old, secs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match key.as_str() {
            "no-store" => d.no_store |= flag == Some(true),
            "no-cache" => d.no_cache |= flag == Some(true),
            "private" => d.private |= flag == Some(true),
            "public" => d.public |= flag == Some(true),
            "must-revalidate" => d.must_revalidate |= flag == Some(true),
            "proxy-revalidate" => d.proxy_revalidate |= flag == Some(true),
            "max-age" => d.max_age = min(d.max_age),
            "s-maxage" => d.s_maxage = min(d.s_maxage),
            "stale-while-revalidate" => d.stale_while_revalidate = min(d.stale_while_revalidate),
            "stale-if-error" => d.stale_if_error = min(d.stale_if_error),
            _ => {}
        }
    }
    Some(d)
}

fn parse_into(s: &str, d: &mut Directives) {
    for item in split_list(s) {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
            None => (item.trim(), None),
        };
        if name.is_empty() {
            continue;
        }
        let seconds = |d: &mut Directives| -> Option<u64> {
            match value.as_deref().map(str::parse::<u64>) {
                Some(Ok(n)) => Some(n.min(MAX_DELTA)),
                Some(Err(_)) => {
                    // Overflowing digits are "very large"; anything else is bad.
                    if value
                        .as_deref()
                        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    {
                        Some(MAX_DELTA)
                    } else {
                        d.malformed = true;
                        // RFC 9111 §4.2.1: an invalid freshness value means stale.
                        Some(0)
                    }
                }
                None => {
                    d.malformed = true;
                    Some(0)
                }
            }
        };
        // Where a directive repeats, the most restrictive value wins.
        let min = |old: Option<u64>, new: Option<u64>| match (old, new) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match name.to_ascii_lowercase().as_str() {
            // `no-cache="field"` and `private="field"` are treated like their
            // unqualified forms: stricter, never looser.
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache = true,
            "private" => d.private = true,
            "public" => d.public = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "only-if-cached" => d.only_if_cached = true,
            "max-age" => d.max_age = min(d.max_age, seconds(d)),
            "s-maxage" => d.s_maxage = min(d.s_maxage, seconds(d)),
            "stale-while-revalidate" => {
                d.stale_while_revalidate = min(d.stale_while_revalidate, seconds(d));
            }
            "stale-if-error" => d.stale_if_error = min(d.stale_if_error, seconds(d)),
            "min-fresh" => d.min_fresh = min(d.min_fresh, seconds(d)),
            "max-stale" => {
                d.max_stale = Some(match value {
                    None => None,
                    Some(_) => seconds(d),
                });
            }
            _ => {} // unknown directives are ignored (RFC 9111 §5.2.3)
        }
    }
}

/// Splits a comma-separated list, keeping commas inside quoted strings.
fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(v: &str) -> Directives {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        parse(&h, &CACHE_CONTROL)
    }

    #[test]
    fn directives() {
        let d = cc("public, max-age=60, s-maxage=\"120\", stale-while-revalidate=30");
        assert!(d.public && !d.private);
        assert_eq!(
            (d.max_age, d.s_maxage, d.stale_while_revalidate),
            (Some(60), Some(120), Some(30))
        );
        let d = cc("No-Store, PRIVATE, no-cache=\"Set-Cookie, X-Foo\", must-revalidate");
        assert!(d.no_store && d.private && d.no_cache && d.must_revalidate);
        assert!(!d.malformed);
        assert_eq!(cc("max-stale").max_stale, Some(None));
        assert_eq!(cc("max-stale=5, min-fresh=2").max_stale, Some(Some(5)));
    }

    #[test]
    fn hostile_values() {
        let d = cc("max-age=abc");
        assert!(d.malformed);
        assert_eq!(d.max_age, Some(0), "invalid means stale");
        assert_eq!(
            cc("max-age=99999999999999999999999").max_age,
            Some(MAX_DELTA)
        );
        assert_eq!(
            cc("max-age=10, max-age=5").max_age,
            Some(5),
            "most restrictive"
        );
        assert_eq!(cc(",,, ,max-age=1,").max_age, Some(1));
        assert!(cc("max-age").malformed);
        let mut h = HeaderMap::new();
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=1\xff").unwrap(),
        );
        assert!(parse(&h, &CACHE_CONTROL).malformed);
        let long = "x,".repeat(10_000);
        assert_eq!(
            cc(&long),
            Directives {
                present: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn targeted_fields_take_precedence() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
        h.insert(CDN_CACHE_CONTROL, HeaderValue::from_static("max-age=30"));
        let d = response_directives(&h);
        assert_eq!(d.max_age, Some(30));
        assert!(!d.private);
        h.insert(C3_CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(response_directives(&h).no_store);
    }

    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        let targeted = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
            h.insert(CDN_CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            response_directives(&h)
        };
        assert_eq!(targeted("max-age=30, must-revalidate").max_age, Some(30));
        assert!(targeted("max-age=30, must-revalidate").must_revalidate);
        // Not a dictionary: ignored entirely, Cache-Control applies.
        for bad in [
            "Max-Age=30",
            "max-age=30,",
            "max-age=3 0",
            "max-age==1",
            "max-age=30, ,x",
        ] {
            assert_eq!(targeted(bad).max_age, Some(5), "{bad}");
        }
        // Valid dictionary, wrong value types: those directives are ignored.
        let d = targeted("max-age=\"30\", no-store=3, private=?0");
        assert_eq!(d.max_age, None);
        assert!(!d.no_store && !d.private);
        assert_eq!(targeted("max-age=-1").max_age, None);
        assert!(targeted("no-cache=\"set-cookie\"").no_cache);
        assert_eq!(targeted("").max_age, None, "an empty dictionary is valid");
    }
}
