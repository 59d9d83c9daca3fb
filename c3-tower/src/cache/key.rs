//! Cache keys: what makes two requests "the same" for the cache.
//!
//! The primary key is the normalised absolute URI: scheme, lower-cased host,
//! port only if not the default, path, and the query with its parameters
//! sorted and percent-escapes upper-cased. Nothing else from the request goes
//! in, except the values of headers a response nominates with `Vary`. So a
//! header the origin does not declare in `Vary` cannot select (or poison) an
//! entry.
//!
//! Keys that would be longer than the cache allows are not hashed (a weak hash
//! could be made to collide); such requests simply bypass the cache.

use std::cell::RefCell;

use http::HeaderMap;
use http::request::Parts;

const KEY_PREFIX: &str = "http-cache:";
const URI_TAG_PREFIX: &str = "http-uri:";
const TAG_PREFIX: &str = c3_core::HTTP_TAG_PREFIX;

/// Scheme and authority of a request, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: String,
    pub(crate) authority: String,
}

/// The normalised URI of a request, from which every key and tag derives.
#[derive(Debug, Clone)]
pub(crate) struct RequestUri {
    pub(crate) origin: Origin,
    /// `scheme://authority/path?query`, normalised.
    pub(crate) url: String,
}

impl RequestUri {
    /// From a request: the URI's own scheme/authority (client side) or the
    /// `Host` header with `default_scheme` (server side).
    pub(crate) fn from_request(parts: &Parts, default_scheme: &str) -> Option<RequestUri> {
        Self::from_request_with(parts, default_scheme, None)
    }

    /// As [`from_request`](Self::from_request), with an authority that
    /// replaces whatever the request says (see `C3CacheLayer::fixed_authority`).
    pub(crate) fn from_request_with(
        parts: &Parts,
        default_scheme: &str,
        fixed_authority: Option<&str>,
    ) -> Option<RequestUri> {
        let (scheme, authority) = scheme_and_authority(parts, default_scheme, fixed_authority)?;
        Self::build(scheme, authority, parts.uri.path(), parts.uri.query())
    }

    fn build(scheme: &str, authority: &str, path: &str, query: Option<&str>) -> Option<RequestUri> {
        let mut url = String::new();
        let host = write_url(&mut url, scheme, authority, path, query)?;
        let scheme = url[..host.start - "://".len()].to_owned();
        let authority = url[host].to_owned();
        Some(RequestUri {
            origin: Origin { scheme, authority },
            url,
        })
    }

    /// Resolves a `Location`/`Content-Location` value against this URI;
    /// `None` if it points to another origin or does not parse.
    pub(crate) fn resolve_same_origin(&self, reference: &str) -> Option<RequestUri> {
        let target = if reference.contains("://") {
            let uri: http::Uri = reference.parse().ok()?;
            let scheme = uri.scheme_str()?.to_ascii_lowercase();
            Self::build(&scheme, uri.authority()?.as_str(), uri.path(), uri.query())?
        } else if reference.starts_with('/') && !reference.starts_with("//") {
            let uri: http::Uri = reference.parse().ok()?;
            Self::build(
                &self.origin.scheme,
                &self.origin.authority,
                uri.path(),
                uri.query(),
            )?
        } else {
            // A relative path: resolve against our path's directory.
            if reference.is_empty() || reference.chars().any(|c| c.is_control() || c == ' ') {
                return None;
            }
            let own_path = self.url.splitn(4, '/').nth(3).unwrap_or_default();
            let own_path = own_path.split('?').next().unwrap_or_default();
            let dir = own_path.rsplit_once('/').map_or("", |(d, _)| d);
            let (p, q) = reference
                .split_once('?')
                .map_or((reference, None), |(p, q)| (p, Some(q)));
            let path = if dir.is_empty() {
                format!("/{p}")
            } else {
                format!("/{dir}/{p}")
            };
            Self::build(&self.origin.scheme, &self.origin.authority, &path, q)?
        };
        (target.origin == self.origin).then_some(target)
    }

    /// The key of the entry for this URI (a response, or a variants marker).
    pub(crate) fn primary_key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.url)
    }

    /// The tag every entry of this URI carries, for URI invalidation.
    pub(crate) fn uri_tag(&self) -> String {
        format!("{URI_TAG_PREFIX}{}", self.url)
    }
}

/// The tag under which a `Surrogate-Key`/`Cache-Tag` value is stored.
pub(crate) fn user_tag(tag: &str) -> String {
    format!("{TAG_PREFIX}{tag}")
}

/// The values `request` has for the `vary` header names (lower-case), as
/// one string: what a stored variant was selected by (RFC 9111 §4.1). An
/// absent field (`name;`) differs from an empty one (`name=;`). `None` if a
/// value cannot be part of a key.
pub(crate) fn selection(vary: &[String], request: &HeaderMap) -> Option<String> {
    let mut s = String::new();
    write_selection(&mut s, vary, request)?;
    Some(s)
}

/// Appends [`selection`] to `out` (unspecified on `None`).
fn write_selection(out: &mut String, vary: &[String], request: &HeaderMap) -> Option<()> {
    let start = out.len();
    for name in vary {
        out.push_str(name);
        for (i, v) in request.get_all(name.as_str()).iter().enumerate() {
            out.push(if i == 0 { '=' } else { ',' });
            out.push_str(v.to_str().ok()?.trim());
        }
        out.push(';');
    }
    (!out[start..].chars().any(char::is_control)).then_some(())
}

/// Whether `request`'s [`selection`] is `selected`, without allocating
/// once the thread has compared one (a reused buffer).
pub(crate) fn selection_is(vary: &[String], request: &HeaderMap, selected: &str) -> bool {
    thread_local! {
        static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
    }
    SCRATCH
        .try_with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            write_selection(&mut s, vary, request).is_some() && *s == selected
        })
        .unwrap_or_else(|_| selection(vary, request).as_deref() == Some(selected))
}

/// What separates a primary key from a variant's selection.
const VARIANT: &str = " vary:";

/// The key of the variant with `selection` under the `primary` key.
pub(crate) fn variant_key(primary: &str, selection: &str) -> String {
    format!("{primary}{VARIANT}{selection}")
}

/// Turns `key`, a primary key, into the key of `request`'s variant (what
/// [`variant_key`] makes from [`selection`]), in place.
pub(crate) fn write_variant_key(
    key: &mut String,
    vary: &[String],
    request: &HeaderMap,
) -> Option<()> {
    key.push_str(VARIANT);
    write_selection(key, vary, request)
}

/// Appends the primary key of the request `parts` to `out` — what
/// `RequestUri::from_request_with(..).primary_key()` is, without building
/// the `RequestUri`: an L1 hit builds its key in a reused buffer and
/// allocates nothing. `None` (and `out` unspecified) if it cannot be keyed.
pub(crate) fn write_primary_key(
    out: &mut String,
    parts: &Parts,
    default_scheme: &str,
    fixed_authority: Option<&str>,
) -> Option<()> {
    let (scheme, authority) = scheme_and_authority(parts, default_scheme, fixed_authority)?;
    out.push_str(KEY_PREFIX);
    write_url(out, scheme, authority, parts.uri.path(), parts.uri.query()).map(|_| ())
}

/// Where a request is aimed: the URI's own scheme and authority (client
/// side) or `default_scheme` and the `Host` header (server side); a fixed
/// authority replaces whatever the request says.
fn scheme_and_authority<'a>(
    parts: &'a Parts,
    default_scheme: &'a str,
    fixed_authority: Option<&'a str>,
) -> Option<(&'a str, &'a str)> {
    let scheme = parts.uri.scheme_str().unwrap_or(default_scheme);
    let authority = match (fixed_authority, parts.uri.authority()) {
        (Some(f), _) => f,
        // Client side (or a proxy's outgoing request): the target names
        // what is fetched.
        (None, Some(a)) => a.as_str(),
        (None, None) => {
            // The Host header is the client's word, checked by nobody before
            // us: anything but one `host[:port]` (a `/`, `@`, `?`, space, a
            // second Host line…) could make one resource's key another's —
            // uncached instead.
            let mut hosts = parts.headers.get_all(http::header::HOST).iter();
            let h = hosts.next()?.to_str().ok()?;
            if hosts.next().is_some() || !is_authority(h) {
                return None;
            }
            h
        }
    };
    Some((scheme, authority))
}

/// Whether `a` is `host[:port]` as RFC 3986 spells it without userinfo: a
/// registered name or IPv4 address (unreserved, sub-delims, `%`-escapes), or
/// an IP literal in brackets, then optionally `:` and up to five digits.
fn is_authority(a: &str) -> bool {
    let (host, port) = match a.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, after)) => {
                let literal_ok = !literal.is_empty()
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b":.%-_~".contains(&b));
                if !literal_ok {
                    return false;
                }
                match after {
                    "" => return true,
                    _ => ("x", after.strip_prefix(':')),
                }
            }
            None => return false,
        },
        None => match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok = match port {
        None => true,
        Some(p) => (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()),
    };
    host_ok && port_ok
}

/// How long the URI tag of a primary key is (`http-uri:` + the URL).
pub(crate) fn uri_tag_len(primary_key: &str) -> usize {
    primary_key.len() - KEY_PREFIX.len() + URI_TAG_PREFIX.len()
}

/// Query parameters sorted on the stack up to this many; more take a `Vec`.
const SORTED_ON_STACK: usize = 16;

/// Appends the normalised `scheme://authority/path?query` to `out` (the one
/// normalisation every key and tag derives from) and returns where the
/// authority landed in `out`; `None` if it cannot be keyed.
fn write_url(
    out: &mut String,
    scheme: &str,
    authority: &str,
    path: &str,
    query: Option<&str>,
) -> Option<std::ops::Range<usize>> {
    let start = out.len();
    out.extend(scheme.chars().map(|c| c.to_ascii_lowercase()));
    let scheme = &out[start..];
    // Userinfo is not part of the origin.
    let authority = authority.rsplit('@').next()?;
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        Some(":80")
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(":443")
    } else {
        None
    };
    if authority.is_empty() {
        return None;
    }
    let authority = match default_port {
        Some(p) => authority.strip_suffix(p).unwrap_or(authority),
        None => authority,
    };
    out.push_str("://");
    let host_start = out.len();
    out.extend(authority.chars().map(|c| c.to_ascii_lowercase()));
    let host = host_start..out.len();
    write_escapes(out, if path.is_empty() { "/" } else { path });
    if let Some(q) = query {
        let mut on_stack = [""; SORTED_ON_STACK];
        let mut spilled = Vec::new();
        let mut n = 0;
        for p in q.split('&').filter(|p| !p.is_empty()) {
            if n < SORTED_ON_STACK {
                on_stack[n] = p;
            } else {
                if spilled.is_empty() {
                    spilled.extend_from_slice(&on_stack);
                }
                spilled.push(p);
            }
            n += 1;
        }
        let params = if n > SORTED_ON_STACK {
            &mut spilled[..]
        } else {
            &mut on_stack[..n]
        };
        // By name only, and stably: `?a=1&a=2` and `?a=2&a=1` are different
        // requests to an application that reads the list (or the last
        // value), so repeated names keep their order (a stable sort of at
        // most a few dozen items allocates nothing).
        params.sort_by(|a, b| {
            escapes_normalised(param_name(a)).cmp(escapes_normalised(param_name(b)))
        });
        for (i, p) in params.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            write_escapes(out, p);
        }
    }
    // http::Uri already refuses control characters; this keeps the key
    // rules of c3-core true whatever produced the parts (a Host header).
    if out[start..].chars().any(char::is_control) {
        return None;
    }
    Some(host)
}

/// `s` with the hex digits of its percent-escapes upper-cased (RFC 3986
/// §6.2.2.1), byte by byte: what [`write_escapes`] writes, to sort by.
/// A query parameter's name: what precedes its first `=`.
fn param_name(p: &str) -> &str {
    p.split('=').next().unwrap_or(p)
}

fn escapes_normalised(s: &str) -> impl Iterator<Item = u8> + '_ {
    let b = s.as_bytes();
    b.iter().enumerate().map(move |(i, &c)| {
        let escaped = |j: usize| {
            b[j] == b'%'
                && j + 2 < b.len()
                && b[j + 1].is_ascii_hexdigit()
                && b[j + 2].is_ascii_hexdigit()
        };
        if (i >= 1 && escaped(i - 1)) || (i >= 2 && escaped(i - 2)) {
            c.to_ascii_uppercase()
        } else {
            c
        }
    })
}

/// Appends `s` to `out` with the hex digits of its percent-escapes
/// upper-cased (RFC 3986 §6.2.2.1).
fn write_escapes(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut plain = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            out.push_str(&s[plain..i]);
            out.push('%');
            out.push(b[i + 1].to_ascii_uppercase() as char);
            out.push(b[i + 2].to_ascii_uppercase() as char);
            i += 3;
            plain = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> RequestUri {
        let (parts, ()) = http::Request::get(s).body(()).unwrap().into_parts();
        RequestUri::from_request(&parts, "http").unwrap()
    }

    #[test]
    fn a_written_primary_key_is_the_request_uris() {
        for s in [
            "http://Example.COM:80/a?b=2&a=1",
            "https://x:443/",
            "https://x:8443/p%2fq?x=%aa&X=%Ab&&y",
            "http://u:p@Host/%7e?q=1&q=%7e&p",
            "http://h/?a=%zz&a=%2g&%41=1",
            "http://h/?17&16&15&14&13&12&11&10&9&8&7&6&5&4&3&2&1&0",
        ] {
            let (parts, ()) = http::Request::get(s).body(()).unwrap().into_parts();
            let mut out = String::from("left alone|");
            write_primary_key(&mut out, &parts, "http", None).unwrap();
            let uri = RequestUri::from_request(&parts, "http").unwrap();
            assert_eq!(out, format!("left alone|{}", uri.primary_key()), "{s}");
            assert_eq!(uri_tag_len(&uri.primary_key()), uri.uri_tag().len());
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            uri("http://Example.COM:80/a?b=2&a=1").url,
            "http://example.com/a?a=1&b=2"
        );
        assert_eq!(uri("https://x:443/").url, "https://x/");
        assert_eq!(
            uri("https://x:8443/p%2fq?x=%aa").url,
            "https://x:8443/p%2Fq?x=%AA"
        );
        assert_eq!(uri("http://x/a?&&").url, "http://x/a");
        // Names are sorted; a repeated name keeps its values' order.
        assert_eq!(uri("http://x/?b=1&a=2").url, uri("http://x/?a=2&b=1").url);
        assert_eq!(uri("http://x/?a=2&b=1&a=1").url, "http://x/?a=2&a=1&b=1");
        assert_ne!(uri("http://x/?a=1&a=2").url, uri("http://x/?a=2&a=1").url);
        assert_eq!(uri("http://x").url, "http://x/");
    }

    #[test]
    fn host_header_on_the_server_side() {
        let (parts, ()) = http::Request::get("/users/1?z=1")
            .header("host", "api.local:3000")
            .body(())
            .unwrap()
            .into_parts();
        let u = RequestUri::from_request(&parts, "https").unwrap();
        assert_eq!(u.url, "https://api.local:3000/users/1?z=1");
        let (parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
        assert!(
            RequestUri::from_request(&parts, "http").is_none(),
            "no Host: no key"
        );
    }

    #[test]
    fn a_host_header_that_is_not_an_authority_is_not_keyed() {
        let key = |host: &str, target: &str| {
            let (parts, ()) = http::Request::get(target)
                .header("host", host)
                .body(())
                .unwrap()
                .into_parts();
            RequestUri::from_request(&parts, "http").map(|u| u.url)
        };
        assert_eq!(
            key("a.test", "/app.js").as_deref(),
            Some("http://a.test/app.js")
        );
        assert_eq!(
            key("a.test:8080", "/").as_deref(),
            Some("http://a.test:8080/")
        );
        assert_eq!(
            key("[::1]:3000", "/").as_deref(),
            Some("http://[::1]:3000/")
        );
        assert_eq!(key("127.0.0.1", "/").as_deref(), Some("http://127.0.0.1/"));
        // Would be another resource's key, or an origin the app never serves.
        for bad in [
            "a.test/static",
            "evil.com/@a.test",
            "u@a.test",
            "a.test?x",
            "a.test#x",
            "a.test page",
            "a.test:80x",
            "a.test:",
            "",
            "[::1",
            "a\\b",
        ] {
            assert_eq!(key(bad, "/app.js"), None, "{bad:?}");
        }
        // Absolute form (client side, a proxy's outgoing request): the
        // target is what is fetched, and what is keyed.
        assert_eq!(
            key("evil.com", "http://a.test/x").as_deref(),
            Some("http://a.test/x")
        );
        // Two Host lines: not keyed.
        let (mut parts, ()) = http::Request::get("/x")
            .header("host", "a.test")
            .body(())
            .unwrap()
            .into_parts();
        parts.headers.append("host", "b.test".parse().unwrap());
        assert!(RequestUri::from_request(&parts, "http").is_none());
    }

    #[test]
    fn same_origin_resolution() {
        let base = uri("http://a.test/users/1");
        assert_eq!(
            base.resolve_same_origin("/users/2").unwrap().url,
            "http://a.test/users/2"
        );
        assert_eq!(
            base.resolve_same_origin("3?x=1").unwrap().url,
            "http://a.test/users/3?x=1"
        );
        assert_eq!(
            base.resolve_same_origin("http://A.test:80/z").unwrap().url,
            "http://a.test/z"
        );
        assert!(
            base.resolve_same_origin("http://evil.test/users/1")
                .is_none()
        );
        assert!(base.resolve_same_origin("https://a.test/users/1").is_none());
        assert!(base.resolve_same_origin("::not a uri").is_none());
    }

    #[test]
    fn variant_keys() {
        let mut h = HeaderMap::new();
        h.insert("accept-language", "de".parse().unwrap());
        let vary = ["accept-language".to_owned(), "accept".to_owned()];
        let k = variant_key("p", &selection(&vary, &h).unwrap());
        assert_eq!(k, "p vary:accept-language=de;accept;");
        let mut written = "p".to_owned();
        write_variant_key(&mut written, &vary, &h).unwrap();
        assert_eq!(written, k);
        assert!(selection_is(&vary, &h, "accept-language=de;accept;"));
        assert!(!selection_is(&vary, &h, "accept-language=de;accept=;"));
        h.insert("accept", http::HeaderValue::from_static(""));
        assert_eq!(selection(&vary, &h).unwrap(), "accept-language=de;accept=;");
        h.append("accept", http::HeaderValue::from_static(" a "));
        assert_eq!(
            selection(&vary, &h).unwrap(),
            "accept-language=de;accept=,a;"
        );
        h.insert("accept", http::HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(selection(&["accept".into()], &h).is_none());
        assert!(!selection_is(&["accept".into()], &h, ""));
        h.insert("accept", http::HeaderValue::from_static("a\tb"));
        assert!(
            selection(&["accept".into()], &h).is_none(),
            "a control character"
        );
    }
}
