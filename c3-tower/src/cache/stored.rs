//! What the cache stores for a URI: a response, or — when the response varies
//! on request headers — a marker naming those headers, with each variant under
//! its own key.
//!
//! Stored as JSON like every c3 value, so other languages can read it:
//! header values are written as Latin-1 strings (lossless for any byte) and
//! the body as standard base64.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT_RANGES, AGE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::freshness::Freshness;
use super::status::CACHE_STATUS;

/// The value under a primary or variant key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// Behind an `Arc`, so an L1 hit shares the decoded response instead of
    /// copying its headers.
    Response(Arc<StoredResponse>),
    /// The response at this URI varies on these (lower-case) request headers.
    Variants { vary: Vec<String> },
}

/// A stored response with the timing facts needed to compute its age.
#[derive(Debug, Clone)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// When the response was received, µs since the Unix epoch (cache clock).
    pub(crate) response_time_us: u64,
    /// How it ages (decided when it was stored).
    pub(crate) freshness: Freshness,
    /// The (lower-case) header names of its `Vary`, and the values the
    /// request that got it had for them (`key::selection`): it answers only
    /// requests with the same selection (RFC 9111 §4.1).
    pub(crate) vary: Vec<String>,
    pub(crate) selected: String,
    /// `headers` as a full answer sends them (see [`served`](Self::served)).
    served: HeaderMap,
}

impl StoredResponse {
    /// A response received at `response_time_us`, with the storage decided
    /// for it and the Vary selection of the request that got it.
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        response_time_us: u64,
        storage: &super::freshness::Storage,
        selected: String,
    ) -> Self {
        StoredResponse {
            served: served(status, &headers),
            status,
            headers,
            body,
            response_time_us,
            freshness: storage.freshness,
            vary: storage.vary.clone(),
            selected,
        }
    }

    /// The headers of a full answer from this response, made once when it
    /// is stored or read: `headers`, `Accept-Ranges` for a `200`, then an
    /// `Age` and a c3 `Cache-Status` member whose values each answer
    /// overwrites in place — so serving clones one map and neither grows
    /// nor rehashes it.
    pub(crate) fn served(&self) -> &HeaderMap {
        &self.served
    }

    /// RFC 9111 §4.2.3 `current_age`, in seconds.
    pub(crate) fn age(&self, now_us: u64) -> u64 {
        self.freshness.initial_age + now_us.saturating_sub(self.response_time_us) / 1_000_000
    }

    /// Seconds of freshness left (negative when stale).
    pub(crate) fn ttl(&self, now_us: u64) -> i64 {
        self.freshness.lifetime as i64 - self.age(now_us) as i64
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::LAST_MODIFIED)
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    response_time_us: u64,
    initial_age: u64,
    lifetime: u64,
    swr: u64,
    sie: u64,
    must_revalidate: bool,
    no_cache: bool,
    auth_ok: bool,
    #[serde(default)]
    vary: Vec<String>,
    #[serde(default)]
    selected: String,
}

impl Serialize for StoredResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            status: self.status.as_u16(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        v.as_bytes().iter().map(|&b| b as char).collect(),
                    )
                })
                .collect(),
            body: base64_encode(&self.body),
            response_time_us: self.response_time_us,
            initial_age: self.freshness.initial_age,
            lifetime: self.freshness.lifetime,
            swr: self.freshness.swr,
            sie: self.freshness.sie,
            must_revalidate: self.freshness.must_revalidate,
            no_cache: self.freshness.no_cache,
            auth_ok: self.freshness.auth_ok,
            vary: self.vary.clone(),
            selected: self.selected.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoredResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = Wire::deserialize(d)?;
        let mut headers = HeaderMap::with_capacity(w.headers.len());
        for (n, v) in w.headers {
            let bytes: Vec<u8> = v
                .chars()
                .map(|c| {
                    u8::try_from(u32::from(c))
                        .map_err(|_| D::Error::custom("header value is not Latin-1"))
                })
                .collect::<Result<_, _>>()?;
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).map_err(D::Error::custom)?,
                HeaderValue::from_bytes(&bytes).map_err(D::Error::custom)?,
            );
        }
        let status = StatusCode::from_u16(w.status).map_err(D::Error::custom)?;
        Ok(StoredResponse {
            served: served(status, &headers),
            status,
            headers,
            body: Bytes::from(
                base64_decode(&w.body).ok_or_else(|| D::Error::custom("bad base64 body"))?,
            ),
            response_time_us: w.response_time_us,
            freshness: Freshness {
                initial_age: w.initial_age,
                lifetime: w.lifetime,
                swr: w.swr,
                sie: w.sie,
                must_revalidate: w.must_revalidate,
                no_cache: w.no_cache,
                auth_ok: w.auth_ok,
            },
            vary: w.vary,
            selected: w.selected,
        })
    }
}

/// See [`StoredResponse::served`].
fn served(status: StatusCode, headers: &HeaderMap) -> HeaderMap {
    // Three more names, and room for a fourth: `HeaderMap::insert` makes
    // room for a new name before it looks for the existing one, so a map
    // filled to its capacity would grow (allocate, rehash) on every answer.
    let mut served = HeaderMap::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        served.append(name.clone(), value.clone());
    }
    if status == StatusCode::OK {
        served.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    served.insert(AGE, HeaderValue::from_static("0"));
    served.append(CACHE_STATUS, HeaderValue::from_static("c3"));
    served
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for len in 0..70 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let e = base64_encode(&data);
            assert_eq!(base64_decode(&e).unwrap(), data, "{len}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode("Zm8").is_none());
        assert!(base64_decode("Z=8=").is_none());
        assert!(base64_decode("Zm8=Zm8=").is_none());
        assert!(base64_decode("Zm*=").is_none());
    }

    #[test]
    fn stored_response_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-bin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.append("x-bin", HeaderValue::from_static("two"));
        let r = StoredResponse {
            served: served(StatusCode::NOT_FOUND, &headers),
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"\x00\x01binary\xff"),
            response_time_us: 5,
            freshness: Freshness {
                initial_age: 1,
                lifetime: 60,
                swr: 0,
                sie: 10,
                must_revalidate: true,
                no_cache: false,
                auth_ok: false,
            },
            vary: vec!["accept".into()],
            selected: "accept=text/plain;".into(),
        };
        let json = serde_json::to_string(&Entry::Response(Arc::new(r.clone()))).unwrap();
        let Entry::Response(back) = serde_json::from_str(&json).unwrap() else {
            panic!()
        };
        assert_eq!(back.status, r.status);
        assert_eq!(back.headers, r.headers);
        assert_eq!(back.body, r.body);
        assert_eq!(back.freshness, r.freshness);
        assert_eq!(back.selected, r.selected);
        assert!(serde_json::from_str::<Entry>("{\"kind\":\"response\",\"status\":1}").is_err());
    }
}
