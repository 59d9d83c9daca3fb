//! The layer's `c3.http` span: OpenTelemetry HTTP attributes, the outcome's
//! `Cache-Status`, and (feature `otel`) continuation of the caller's trace.

use http::{Method, Uri};

use super::status::CACHE_STATUS;

/// `c3.http` at `$level`. Nothing listening there: no span at all (the
/// macro's disabled path would still hand its fields to `log` when
/// tracing's `log` feature is on and no subscriber was ever set — a cost on
/// every request, for nobody).
macro_rules! c3_http_span {
    ($level:ident, $method:expr, $uri:expr) => {
        if tracing::Level::$level > tracing::level_filters::LevelFilter::current() {
            tracing::Span::none()
        } else {
            tracing::span!(
                target: "c3::http",
                tracing::Level::$level,
                "c3.http",
                otel.kind = "server",
                http.request.method = %$method,
                url.path = $uri.path(),
                http.response.status_code = tracing::field::Empty,
                c3.cache_status = tracing::field::Empty,
            )
        }
    };
}

/// The layer's span for one request; the cache's own spans (`c3.get`,
/// `c3.l2`, …) nest inside it, and so does the work a request leaves behind
/// (`c3.http.store`, `c3.http.revalidate`). Of kind SERVER: it is the
/// handling of an incoming request (`otel.kind`, read by
/// tracing-opentelemetry).
pub(crate) fn http_span(method: &Method, uri: &Uri) -> tracing::Span {
    c3_http_span!(INFO, method, uri)
}

/// The span of a request answered from L1: the same span at DEBUG, made
/// once the answer is (it took less than the span costs). Exported as an
/// OpenTelemetry span it would cost several times the hit — ≈ 2.9 µs
/// against ≈ 0.55 µs for the layer's work, in the `http_layer` bench — so
/// hits are traced only where DEBUG is on; `c3.hits` counts every one.
pub(crate) fn hit_span(method: &Method, uri: &Uri) -> tracing::Span {
    c3_http_span!(DEBUG, method, uri)
}

/// Parents `span` on the remote context carried by the request headers.
#[cfg(feature = "otel")]
pub(crate) fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    // Fails only if the span is disabled or already started; then there is
    // nothing to continue.
    let _ = span.set_parent(cx);
}

/// Runs a flow inside `span` and records how it answered.
pub(crate) async fn traced<B, E>(
    span: tracing::Span,
    flow: impl std::future::Future<Output = Result<http::Response<B>, E>>,
) -> Result<http::Response<B>, E> {
    use tracing::Instrument;
    let r = flow.instrument(span.clone()).await;
    if let Ok(res) = &r {
        record_answer(&span, res);
    }
    r
}

/// Records on `span` how the request was answered.
pub(crate) fn record_answer<B>(span: &tracing::Span, res: &http::Response<B>) {
    if span.is_disabled() {
        return;
    }
    // An integer, as the semantic conventions say: tracing-opentelemetry
    // exports an i64 as one, but a u64 through `Debug`, as a string.
    span.record(
        "http.response.status_code",
        i64::from(res.status().as_u16()),
    );
    if let Some(v) = res
        .headers()
        .get_all(CACHE_STATUS)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
    {
        span.record("c3.cache_status", v);
    }
}
