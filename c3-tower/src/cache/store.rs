//! Storing a response: whether it may be stored (RFC 9111 §3, the body
//! limit, its variant key), which of its headers, and the fenced store
//! itself — used by a miss and by a revalidation alike.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use c3_core::{Fill, unix_micros};
use http::Response;
use http::header::{self, SET_COOKIE};
use http_body::Body;

use super::body::{C3Body, Capture};
use super::cache_control::C3_CACHE_CONTROL;
use super::collapse::{Collapsed, LeaderGuard};
use super::context::{Ctx, Shared, forwarded};
use super::freshness::{self, Storage};
use super::key::{RequestUri, selection, user_tag, variant_key};
use super::policy::Policy;
use super::status::{CACHE_STATUS, CacheStatus};
use super::stored::{Entry, StoredResponse};

/// Hop-by-hop headers: never stored, never replayed (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Decides whether `res` can be stored; if so, streams it to the client while
/// capturing it, and stores it through `fill` (and wakes collapsed waiters)
/// when complete. `target`: the key chosen before the response arrived, and
/// the fill fenced when the request went upstream.
pub(crate) fn store_response<P, B>(
    ctx: &Ctx<P>,
    target: Option<(String, Arc<Fill>)>,
    res: Response<B>,
    request_time: SystemTime,
    status: CacheStatus,
    leader: Option<LeaderGuard>,
) -> Response<C3Body<B>>
where
    P: Policy,
    B: Body<Data = Bytes> + Send + 'static,
{
    let c3 = ctx.c3();
    let config = &ctx.shared.config;
    let response_time = c3.now();
    let (mut res_parts, body) = res.into_parts();
    let decision = target.ok_or("no key").and_then(|(key, fill)| {
        let (key, storage, selected) =
            storable(ctx, key, &res_parts, &body, request_time, response_time)?;
        Ok((key, fill, storage, selected))
    });
    let Ok((key, fill, storage, selected)) = decision else {
        drop(leader); // waiters go upstream themselves
        return forwarded(Response::from_parts(res_parts, body), status);
    };

    let stored_headers = storable_headers(&res_parts.headers);
    let (capture, done) = Capture::new(config.max_body_bytes);
    let shared = Arc::clone(&ctx.shared);
    let uri = ctx.uri.clone();
    let code = res_parts.status;
    // The store outlives the response; its span stays in the request's
    // trace, under the request's `c3.http` span (the current one here).
    let span = tracing::info_span!(target: "c3::http", "c3.http.store");
    let store = async move {
        let Ok(body) = done.await else {
            return; // not read to the end, or too large: nothing stored
        };
        let stored = Arc::new(StoredResponse::new(
            code,
            stored_headers,
            body,
            unix_micros(response_time),
            &storage,
            selected,
        ));
        // Waiters only get a response that is now the cache's: one the fence
        // refused may predate a write they must see.
        let kept = store_entry(&shared, &fill, &uri, key, &storage, stored).await;
        if let Some(l) = leader {
            l.publish(if kept {
                Collapsed::Stored
            } else {
                Collapsed::Forward
            });
        }
    };
    tokio::spawn(tracing::Instrument::instrument(store, span));
    res_parts.headers.remove(C3_CACHE_CONTROL);
    res_parts
        .headers
        .append(CACHE_STATUS, status.stored().header_value());
    Response::from_parts(res_parts, C3Body::capturing(body, capture))
}

/// Whether the response may be stored and under which key: RFC 9111's
/// rules (`freshness::decide`), the body limit, and the variant key when it
/// varies. Returns the key, how to store, and the request's values of the
/// `Vary` headers.
fn storable<P, B>(
    ctx: &Ctx<P>,
    key: String,
    res_parts: &http::response::Parts,
    body: &B,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Result<(String, Storage, String), &'static str>
where
    P: Policy,
    B: Body,
{
    let (c3, config) = (ctx.c3(), &ctx.shared.config);
    let storage = freshness::decide(
        &ctx.parts,
        &ctx.dirs,
        res_parts,
        config,
        request_time,
        response_time,
    )?;
    let too_big = body
        .size_hint()
        .exact()
        .is_some_and(|n| n > config.max_body_bytes as u64);
    if too_big {
        return Err("body too large");
    }
    // The key chosen before the response arrived is the primary one; a
    // response that varies goes under its variant key instead.
    let selected = selection(&storage.vary, &ctx.parts.headers).ok_or("vary key")?;
    let key = if storage.vary.is_empty() {
        key
    } else {
        Some(variant_key(&ctx.uri.primary_key(), &selected))
            .filter(|k| k.len() <= c3.max_key_bytes())
            .ok_or("vary key")?
    };
    Ok((key, storage, selected))
}

/// The response headers worth storing: no hop-by-hop fields (also those
/// `Connection` names), no `Age` (recomputed), no `Set-Cookie`, no c3
/// override.
pub(crate) fn storable_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut stored = headers.clone();
    for h in HOP_BY_HOP {
        stored.remove(h);
    }
    stored.remove(header::AGE);
    stored.remove(C3_CACHE_CONTROL);
    stored.remove(SET_COOKIE);
    if let Some(connection) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        for name in connection.split(',') {
            stored.remove(name.trim());
        }
    }
    stored
}

/// Stores a response (and, for a varying one, the primary marker) through
/// `fill`, tagged with its URI and its surrogate keys. Returns whether the
/// response was stored.
pub(crate) async fn store_entry<P>(
    shared: &Shared<P>,
    fill: &Fill,
    uri: &RequestUri,
    key: String,
    storage: &Storage,
    stored: Arc<StoredResponse>,
) -> bool {
    let c3 = &shared.c3;
    let uri_tag = uri.uri_tag();
    let user_tags: Vec<String> = storage
        .tags
        .iter()
        .map(|t| user_tag(t))
        .filter(|t| t.len() <= c3.max_key_bytes())
        .collect();
    let mut tags: Vec<&str> = vec![uri_tag.as_str()];
    tags.extend(user_tags.iter().map(String::as_str));
    let ttl = Some(storage.keep);
    let entry = Entry::Response(stored);
    match fill.store(&key, &entry, ttl, &tags).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::debug!(target: "c3::http", error = %e, "could not store a response");
            return false;
        }
    }
    if !storage.vary.is_empty() {
        let marker = Entry::Variants {
            vary: storage.vary.clone(),
        };
        if let Err(e) = fill
            .store(&uri.primary_key(), &marker, ttl, &[uri_tag.as_str()])
            .await
        {
            tracing::debug!(target: "c3::http", error = %e, "could not store a vary marker");
        }
    }
    true
}
