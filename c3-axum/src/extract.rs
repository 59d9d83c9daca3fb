//! [`Cache`]: the `C3` handle as an extractor.

use std::convert::Infallible;

use axum::extract::{FromRef, FromRequestParts};
use c3_core::C3;
use http::request::Parts;

/// Extracts the application's [`C3`] from state. Works for any state `S` with
/// `C3: FromRef<S>` (including `C3` itself).
///
/// ```
/// use c3_axum::Cache;
/// async fn handler(Cache(c3): Cache) -> String {
///     c3.node_id().to_owned()
/// }
/// # let _: axum::Router<c3_core::C3> = axum::Router::new().route("/", axum::routing::get(handler));
/// ```
#[derive(Debug, Clone)]
pub struct Cache(pub C3);

impl<S> FromRequestParts<S> for Cache
where
    C3: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Cache(C3::from_ref(state)))
    }
}
