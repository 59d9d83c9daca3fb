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

/// `install` sets the global providers and a cache takes its meter from
/// them: tests that install with a collector run one at a time.
static GLOBAL_PROVIDERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn spans_and_metrics_reach_an_otlp_http_collector() {
    let _one_at_a_time = GLOBAL_PROVIDERS.lock().await;
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
    // That was an L1 hit, a DEBUG span the layer does not export; this
    // read goes to L2, an INFO `c3.get` with its `c3.l2`.
    assert!(c3.get::<String>("user:2").await.unwrap().is_none());
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

/// What `c3::otlp` logged: (level, message, endpoint field).
type Logged = std::sync::Arc<std::sync::Mutex<Vec<(tracing::Level, String, String)>>>;

/// Records `c3::otlp` events from every thread (exports run on the SDK's
/// own threads, so a thread-local subscriber would not see them).
struct Capture(Logged);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "c3::otlp" {
            return;
        }
        #[derive(Default)]
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                match f.name() {
                    "message" => self.0 = format!("{v:?}"),
                    "endpoint" => self.1 = format!("{v:?}"),
                    _ => {}
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0, fields.1));
    }
}

/// A collector that fails is logged at WARN once per outage, not once per
/// export, and its return at INFO: three failed exports, one success, two
/// more failures → two WARN lines and one INFO line for this endpoint.
#[tokio::test]
async fn a_failing_collector_is_logged_once_per_outage() {
    let _one_at_a_time = GLOBAL_PROVIDERS.lock().await;
    let logged = Logged::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Capture(logged.clone())),
    )
    .expect("the only global subscriber in this binary");
    let collector = MockServer::start().await;
    let answer = |status| {
        Mock::given(method("POST"))
            .and(path("/v1/metrics"))
            .respond_with(ResponseTemplate::new(status))
    };
    answer(503).mount(&collector).await;
    let otel = Otlp::from_env()
        .unwrap()
        .endpoint(collector.uri())
        .protocol(Protocol::HttpProtobuf)
        // Exports happen when the test flushes, not on a timer.
        .metric_interval(std::time::Duration::from_secs(3600))
        .install()
        .unwrap();
    use opentelemetry::metrics::MeterProvider;
    let counter = otel.meter_provider().meter("t").u64_counter("x").build();
    let endpoint = collector.uri();
    let lines = |level: tracing::Level| {
        logged
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _, e)| *l == level && e.contains(&endpoint))
            .count()
    };
    let flush = |ok: bool| {
        counter.add(1, &[]);
        let provider = otel.meter_provider().clone();
        let result = std::thread::spawn(move || provider.force_flush())
            .join()
            .unwrap();
        assert_eq!(result.is_ok(), ok, "{result:?}");
    };
    for _ in 0..3 {
        flush(false);
    }
    assert_eq!(
        lines(tracing::Level::WARN),
        1,
        "{:?}",
        logged.lock().unwrap()
    );
    collector.reset().await;
    answer(200).mount(&collector).await;
    flush(true);
    assert_eq!(
        lines(tracing::Level::INFO),
        1,
        "{:?}",
        logged.lock().unwrap()
    );
    collector.reset().await;
    answer(503).mount(&collector).await;
    flush(false);
    flush(false);
    assert_eq!(
        lines(tracing::Level::WARN),
        2,
        "{:?}",
        logged.lock().unwrap()
    );
    drop(otel);
}
