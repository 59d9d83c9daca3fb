//! The L1 hit, answered inside `call`: no future to box, no task state, no
//! key `String` — a key built in a reused buffer, one in-memory lookup, the
//! one reuse decision, and a response cloned from what was stored.
//!
//! Only what needs nothing else is answered here: a stored response found in
//! L1 — under the URI, or under the request's variant when the URI varies —
//! that [`reuse::decide`] lets answer as it is (fresh, or within the
//! request's `max-stale`). Everything else — L2, revalidation, misses —
//! takes the [`lookup`](super::lookup) flow, which decides again on its own.
//! Nothing is allocated but the response (`tests/hit_allocations.rs`).

use std::cell::RefCell;
use std::sync::Arc;

use c3_core::Tier;
use http::{Response, request};

use super::body::C3Body;
use super::context::{Shared, request_directives};
use super::key::{uri_tag_len, write_primary_key, write_variant_key};
use super::policy::Policy;
use super::reuse::{self, Reuse};
use super::serve::serve;
use super::status::CacheStatus;
use super::stored::{Entry, StoredResponse};

thread_local! {
    /// Where a hit builds its key: the thread's buffer keeps its capacity,
    /// so after the first request a key costs no allocation.
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The answer to `parts` from L1, if L1 holds a stored response that may
/// answer it as it is.
pub(crate) fn from_l1<P: Policy, B>(
    shared: &Shared<P>,
    parts: &request::Parts,
) -> Option<Response<C3Body<B>>> {
    if !shared.policy.cacheable(parts) {
        return None;
    }
    let stored = KEY
        .try_with(|key| found(shared, parts, &mut key.borrow_mut()))
        .ok()??;
    let dirs = request_directives(&parts.headers);
    let now_us = c3_core::unix_micros(shared.c3.now());
    let status = match reuse::decide(&stored, parts, &dirs, now_us) {
        Reuse::Fresh { age, ttl } => (age, CacheStatus::hit().ttl(ttl).detail(Tier::L1.as_str())),
        Reuse::MaxStale { age } => (age, CacheStatus::hit().detail("max-stale")),
        _ => return None,
    };
    Some(serve(&stored, parts, status.0, status.1))
}

/// The stored response L1 holds under the request's primary key.
fn found<P>(
    shared: &Shared<P>,
    parts: &request::Parts,
    key: &mut String,
) -> Option<Arc<StoredResponse>> {
    let c3 = &shared.c3;
    key.clear();
    write_primary_key(
        key,
        parts,
        &shared.config.default_scheme,
        shared.config.fixed_authority.as_deref(),
    )?;
    // The lookup flow refuses the same keys (and its stores need the tag).
    if key.len() > c3.max_key_bytes() || uri_tag_len(key) > c3.max_key_bytes() {
        return None;
    }
    match c3.get_local::<Entry>(key).ok()??.as_deref()? {
        Entry::Response(r) => Some(Arc::clone(r)),
        // The URI varies: this request's variant, as `find` looks it up,
        // its key written in the same buffer.
        Entry::Variants { vary } => {
            write_variant_key(key, vary, &parts.headers)?;
            match c3.get_local::<Entry>(key).ok()??.as_deref()? {
                Entry::Response(r) => Some(Arc::clone(r)),
                Entry::Variants { .. } => None,
            }
        }
    }
}
