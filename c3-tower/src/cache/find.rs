//! Finding what the cache holds for a request: the URI's primary entry,
//! then — if the response there varies — the request's variant. Used by a
//! lookup and by a collapsed waiter looking again.

use std::sync::Arc;

use c3_core::Tier;
use http::HeaderMap;

use super::context::Shared;
use super::key::{RequestUri, selection, variant_key};
use super::status::Fwd;
use super::stored::{Entry, StoredResponse};

/// What the cache holds for a request.
pub(crate) enum Found {
    Hit {
        stored: Arc<StoredResponse>,
        key: String,
        tier: &'static str,
    },
    Miss {
        /// Where a response would be stored (`None`: it cannot be keyed).
        key: Option<String>,
        fwd: Fwd,
    },
}

/// Looks the request up: the URI's primary key, then — if the response
/// there varies — the request's variant.
pub(crate) async fn find<P>(shared: &Shared<P>, uri: &RequestUri, headers: &HeaderMap) -> Found {
    let c3 = &shared.c3;
    let get = |key: String| async move {
        match c3.get_with_tier::<Entry>(&key).await {
            Ok((found, tier)) => (key, found, tier.as_str()),
            Err(e) => {
                // An unavailable or unreadable L2 is a miss, not an HTTP error.
                tracing::debug!(target: "c3::http", error = %e, "cache lookup failed; treating as a miss");
                (key, None, Tier::L2.as_str())
            }
        }
    };
    let (primary, found, tier) = get(uri.primary_key()).await;
    match found.as_deref() {
        None => Found::Miss {
            key: Some(primary),
            fwd: Fwd::UriMiss,
        },
        Some(Entry::Response(r)) => Found::Hit {
            stored: Arc::clone(r),
            key: primary,
            tier,
        },
        Some(Entry::Variants { vary }) => {
            let Some(sel) = selection(vary, headers) else {
                return Found::Miss {
                    key: None,
                    fwd: Fwd::VaryMiss,
                };
            };
            match get(variant_key(&primary, &sel)).await {
                (vkey, Some(e), tier) => match &*e {
                    Entry::Response(r) => Found::Hit {
                        stored: Arc::clone(r),
                        key: vkey,
                        tier,
                    },
                    Entry::Variants { .. } => Found::Miss {
                        key: None,
                        fwd: Fwd::VaryMiss,
                    },
                },
                (vkey, None, _) => Found::Miss {
                    key: Some(vkey),
                    fwd: Fwd::VaryMiss,
                },
            }
        }
    }
}
