//! `c3::core::otlp`: one call installs tracer and meter providers that
//! export over OTLP/HTTP. A wiremock server plays the collector and must
//! receive protobuf posts on `/v1/traces` and `/v1/metrics` after a flush.
//!
//! Its own test binary: it installs global providers.

mod support;

use c3::core::otlp::{Otlp, Protocol};
use support::TestDb;
use tracing_subscriber::layer::SubscriberExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn spans_and_metrics_reach_an_otlp_http_collector() {
    let collector = MockServer::start().await;
    for p in ["/v1/traces", "/v1/metrics"] {
        Mock::given(method("POST"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200))
            .mount(&collector)
            .await;
    }
    let otel = Otlp::from_env()
        .unwrap()
        .endpoint(collector.uri())
        .protocol(Protocol::HttpProtobuf)
        .service_name("c3-otlp-test")
        .install()
        .unwrap();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(otel.layer()));

    // Built after install: takes its meter from the global provider.
    let db = TestDb::new("otlp").await;
    let c3 = db.node().await;
    c3.set("user:1", &"Ada".to_owned()).await.unwrap();
    assert!(c3.get::<String>("user:1").await.unwrap().is_some());
    c3.shutdown().await;
    otel.shutdown().await.unwrap();

    let got = collector.received_requests().await.unwrap();
    let body_of = |p: &str| -> Vec<u8> {
        let posts: Vec<_> = got.iter().filter(|r| r.url.path() == p).collect();
        assert!(!posts.is_empty(), "no POST {p}; got {:?}", paths(&got));
        for r in &posts {
            assert_eq!(r.method.as_str(), "POST");
            assert_eq!(
                r.headers.get("content-type").map(|v| v.to_str().unwrap()),
                Some("application/x-protobuf"),
                "{p}"
            );
        }
        posts.iter().flat_map(|r| r.body.clone()).collect()
    };
    // Protobuf keeps strings as they are, so names can be found in the bytes.
    let traces = body_of("/v1/traces");
    for name in ["c3.get", "c3.set", "c3.l2", "c3-otlp-test"] {
        assert!(contains(&traces, name), "{name} not in the exported spans");
    }
    let metrics = body_of("/v1/metrics");
    for name in [
        "c3.hits",
        "c3.writes",
        "c3.operation.duration",
        "c3.l1.entries",
    ] {
        assert!(
            contains(&metrics, name),
            "{name} not in the exported metrics"
        );
    }
}

fn paths(got: &[wiremock::Request]) -> Vec<String> {
    got.iter().map(|r| r.url.path().to_owned()).collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// With no collector named, `install` exports nothing — no connection
/// attempts to a default `localhost:4318` — and `shutdown` succeeds (it used
/// to fail with "Failed to shutdown" at every exit). Tracing and metrics
/// calls still work against the in-process providers.
#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_shutdown_is_clean() {
    // This test binary never sets the OTLP variables; be sure.
    for v in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ] {
        assert!(
            std::env::var(v).is_err(),
            "{v} is set in the test environment"
        );
    }
    let otlp = c3::core::otlp::Otlp::from_env().unwrap();
    assert!(!otlp.has_endpoint());
    let guard = otlp.install().unwrap();
    use opentelemetry::trace::{Tracer, TracerProvider};
    guard.tracer_provider().tracer("t").in_span("work", |_| {});
    guard.shutdown().await.expect("a clean shutdown");
}
