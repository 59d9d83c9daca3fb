//! Response parts that talk to the cache layer.

use axum::response::{IntoResponseParts, ResponseParts};
use http::HeaderValue;
use http::header::HeaderName;

const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

fn joined(tags: &[String]) -> Option<HeaderValue> {
    let v = tags.join(" ");
    HeaderValue::from_str(&v).ok()
}

/// Tags the response (`Surrogate-Key`), so
/// [`invalidate_tag`](c3_tower::invalidate_tag) can remove it with every
/// other response carrying the tag. Tags may not contain spaces.
#[derive(Debug, Clone)]
pub struct CacheTags(Vec<String>);

impl CacheTags {
    /// Tags from any list of strings.
    pub fn new<I, T>(tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        CacheTags(tags.into_iter().map(Into::into).collect())
    }
}

impl IntoResponseParts for CacheTags {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if let Some(v) = joined(&self.0) {
            res.headers_mut().append(SURROGATE_KEY, v);
        }
        Ok(res)
    }
}

/// Asks the cache layer to invalidate these tags, cluster-wide, when this
/// response to a POST/PUT/PATCH/DELETE is successful (2xx/3xx). The layer
/// removes the header before the response leaves.
#[derive(Debug, Clone)]
pub struct InvalidateTags(Vec<String>);

impl InvalidateTags {
    /// Tags from any list of strings.
    pub fn new<I, T>(tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        InvalidateTags(tags.into_iter().map(Into::into).collect())
    }
}

impl IntoResponseParts for InvalidateTags {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if let Some(v) = joined(&self.0) {
            res.headers_mut().append(c3_tower::C3_INVALIDATE_TAG, v);
        }
        Ok(res)
    }
}
