//! [`Policy`]: which requests may use the cache at all.

use http::request::Parts;

/// Decides, per request, whether the cache may be used. Requests it refuses
/// are forwarded untouched (`Cache-Status: c3; fwd=bypass`).
///
/// The RFC 9111 rules (methods, `no-store`, `private`, `Authorization`,
/// `Set-Cookie`, …) always apply on top; a policy can only narrow them.
/// Closures `Fn(&Parts) -> bool` are policies:
///
/// ```
/// use c3_tower::C3CacheLayer;
/// # async fn f(c3: c3_core::C3) {
/// let layer = C3CacheLayer::new(c3).policy(|req: &http::request::Parts| {
///     !req.uri.path().starts_with("/admin")
/// });
/// # }
/// ```
pub trait Policy: Clone + Send + Sync + 'static {
    /// Whether `request` may be answered from, and stored in, the cache.
    fn cacheable(&self, request: &Parts) -> bool;
}

/// Caches everything RFC 9111 allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn cacheable(&self, _request: &Parts) -> bool {
        true
    }
}

impl<F> Policy for F
where
    F: Fn(&Parts) -> bool + Clone + Send + Sync + 'static,
{
    fn cacheable(&self, request: &Parts) -> bool {
        self(request)
    }
}
