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
        let scheme = parts
            .uri
            .scheme_str()
            .unwrap_or(default_scheme)
            .to_ascii_lowercase();
        let authority = match (fixed_authority, parts.uri.authority()) {
            (Some(f), _) => f.to_owned(),
            (None, Some(a)) => a.as_str().to_owned(),
            (None, None) => parts
                .headers
                .get(http::header::HOST)?
                .to_str()
                .ok()?
                .to_owned(),
        };
        let path = parts.uri.path();
        Self::build(&scheme, &authority, path, parts.uri.query())
    }

    fn build(scheme: &str, authority: &str, path: &str, query: Option<&str>) -> Option<RequestUri> {
        let authority = normalise_authority(scheme, authority)?;
        let path = if path.is_empty() { "/" } else { path };
        let mut url = format!("{scheme}://{authority}{}", normalise_escapes(path));
        if let Some(q) = query {
            let mut params: Vec<String> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(normalise_escapes)
                .collect();
            params.sort();
            if !params.is_empty() {
                url.push('?');
                url.push_str(&params.join("&"));
            }
        }
        // http::Uri already refuses control characters; this keeps the key
        // rules of c3-core true whatever produced the parts.
        if url.chars().any(char::is_control) {
            return None;
        }
        Some(RequestUri {
            origin: Origin {
                scheme: scheme.to_owned(),
                authority,
            },
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
    for name in vary {
        let values: Vec<&str> = request
            .get_all(name.as_str())
            .iter()
            .map(|v| v.to_str().map(str::trim))
            .collect::<Result<_, _>>()
            .ok()?;
        s.push_str(name);
        if !values.is_empty() {
            s.push('=');
            s.push_str(&values.join(","));
        }
        s.push(';');
    }
    if s.chars().any(char::is_control) {
        return None;
    }
    Some(s)
}

/// The key of the variant with `selection` under the `primary` key.
pub(crate) fn variant_key(primary: &str, selection: &str) -> String {
    format!("{primary} vary:{selection}")
}

fn normalise_authority(scheme: &str, authority: &str) -> Option<String> {
    let authority = authority.rsplit('@').next()?.to_ascii_lowercase();
    if authority.is_empty() {
        return None;
    }
    let default_port = match scheme {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    Some(match default_port {
        Some(p) if authority.ends_with(p) => authority[..authority.len() - p.len()].to_owned(),
        _ => authority,
    })
}

/// Upper-cases the hex digits of percent-escapes (RFC 3986 §6.2.2.1).
fn normalise_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            out.push('%');
            out.push(b[i + 1].to_ascii_uppercase() as char);
            out.push(b[i + 2].to_ascii_uppercase() as char);
            i += 3;
        } else {
            let c = s[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8().max(1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> RequestUri {
        let (parts, ()) = http::Request::get(s).body(()).unwrap().into_parts();
        RequestUri::from_request(&parts, "http").unwrap()
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
        h.insert("accept", http::HeaderValue::from_static(""));
        assert_eq!(selection(&vary, &h).unwrap(), "accept-language=de;accept=;");
        h.insert("accept", http::HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(selection(&["accept".into()], &h).is_none());
    }
}
