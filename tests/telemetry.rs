//! OpenTelemetry: spans through `tracing-opentelemetry` into an in-memory
//! span exporter, metrics into an in-memory metric exporter — what an
//! application wiring c3 to OpenTelemetry would see.
//!
//! Spans: one per cache operation with the tier that answered, and a
//! `c3.l2` child (database semantic conventions) for every L2 round trip —
//! none for an L1 hit, which does no I/O. Metrics: counters and histograms
//! moving on the node that acted and on the node that heard about it.

mod support;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::TestDb;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

/// Spans of the current thread go to an in-memory exporter as they end.
struct Traces {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Traces {
    /// `#[tokio::test]` runs on one thread, so spawned tasks (load flights)
    /// report here too.
    fn start() -> Traces {
        Self::start_at(tracing_subscriber::filter::LevelFilter::TRACE)
    }

    /// Exports only spans at `level` and above (c3's OTLP layer: INFO).
    fn start_at(level: tracing_subscriber::filter::LevelFilter) -> Traces {
        use tracing_subscriber::Layer;
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(level);
        let guard = tracing::subscriber::set_default(Registry::default().with(layer));
        Traces {
            exporter,
            _provider: provider,
            _guard: guard,
        }
    }

    /// The spans that ended since the last call.
    /// Takes finished spans until one is named `name`.
    async fn until(&self, name: &str) -> Vec<SpanData> {
        let mut all = Vec::new();
        let deadline = std::time::Instant::now() + support::DELIVERY;
        loop {
            all.extend(self.take());
            if all.iter().any(|s| s.name == name) {
                return all;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {name} span in {:#?}",
                names(&all)
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    fn take(&self) -> Vec<SpanData> {
        let spans = self.exporter.get_finished_spans().unwrap();
        self.exporter.reset();
        spans
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// An attribute with its type, as an OTLP backend receives it.
fn typed(span: &SpanData, key: &str) -> Option<opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn named<'a>(all: &'a [SpanData], name: &str) -> &'a SpanData {
    all.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span in {:#?}", names(all)))
}

fn names(all: &[SpanData]) -> Vec<String> {
    all.iter().map(|s| s.name.to_string()).collect()
}

fn children<'a>(all: &'a [SpanData], of: &SpanData) -> Vec<&'a SpanData> {
    all.iter()
        .filter(|s| s.parent_span_id == of.span_context.span_id())
        .collect()
}

#[tokio::test]
async fn an_l1_hit_has_no_child_span_and_an_l2_hit_has_a_postgres_one() {
    let traces = Traces::start();
    let db = TestDb::new("traces").await;
    let a = db.node().await;
    let b = db.builder().trace_keys(true).build().await.unwrap();
    a.set("user:1", &"Ada".to_owned()).await.unwrap();
    traces.take();

    // B has never seen the key: L2.
    assert!(b.get::<String>("user:1").await.unwrap().is_some());
    let all = traces.take();
    let get = named(&all, "c3.get");
    assert_eq!(attr(get, "c3.tier").as_deref(), Some("l2"), "{get:?}");
    assert_eq!(attr(get, "c3.outcome").as_deref(), Some("hit"));
    assert_eq!(
        attr(get, "c3.key").as_deref(),
        Some("user:1"),
        "keys only when opted in"
    );
    let l2 = children(&all, get);
    assert_eq!(l2.len(), 1, "{:#?}", names(&all));
    assert_eq!(l2[0].name, "c3.l2");
    assert_eq!(attr(l2[0], "db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(attr(l2[0], "db.operation.name").as_deref(), Some("get"));
    assert!(
        attr(l2[0], "db.collection.name")
            .unwrap()
            .contains("cache_data")
    );

    // Now in B's L1: one span, no children, no I/O.
    let l2_calls = b.stats().l2_hits + b.stats().l2_misses;
    assert!(b.get::<String>("user:1").await.unwrap().is_some());
    let all = traces.take();
    assert_eq!(all.len(), 1, "{:#?}", names(&all));
    assert_eq!(all[0].name, "c3.get");
    assert_eq!(all[0].parent_span_id, SpanId::INVALID, "a root span");
    assert_eq!(attr(&all[0], "c3.tier").as_deref(), Some("l1"));
    assert_eq!(b.stats().l2_hits + b.stats().l2_misses, l2_calls);

    // Node A did not opt in: no keys in its spans.
    a.get::<String>("user:1").await.unwrap();
    let all = traces.take();
    assert!(all.iter().all(|s| attr(s, "c3.key").is_none()), "{all:#?}");

    // Writes and loads: their own spans, with the L2 work beneath them.
    let opts = c3::core::LoadOptions::new();
    b.get_or_load("user:2", &opts, || async {
        Ok::<_, std::io::Error>(Some("Grace".to_owned()))
    })
    .await
    .unwrap();
    let all = traces.take();
    let load = named(&all, "c3.get_or_load");
    assert_eq!(attr(load, "c3.tier").as_deref(), Some("source"));
    let trace = load.span_context.trace_id();
    assert!(
        all.iter()
            .any(|s| s.name == "c3.l2" && s.span_context.trace_id() == trace),
        "the flight's L2 calls are inside the load's trace: {:#?}",
        names(&all)
    );
    b.delete("user:2").await.unwrap();
    let all = traces.take();
    let del = named(&all, "c3.delete");
    assert_eq!(attr(del, "c3.outcome").as_deref(), Some("ok"));
    assert_eq!(
        attr(children(&all, del)[0], "db.operation.name").as_deref(),
        Some("delete")
    );
}

#[tokio::test]
async fn the_http_layer_span_carries_http_attributes_the_cache_status_and_the_callers_trace() {
    use axum::body::Body;
    use c3::tower::C3CacheLayer;
    use support::web::{Origin, cached, get, resp, send, stored};

    let traces = Traces::start();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let db = TestDb::new("http_traces").await;
    let c3 = db.node().await;
    let origin = Origin::new(|_, n| resp(&[("cache-control", "max-age=60")], format!("v{n}")));
    let svc = cached(&c3, &origin);
    let w = c3.stats().writes;
    send(&svc, get("http://app.test/x").body(Body::empty()).unwrap()).await;
    stored(&c3, w, 1).await;
    // The store ran after the response, in a task of its own: still in the
    // request's trace, under its `c3.http` span, with the L2 call a CLIENT.
    // (The request's span ends with the last of its children: wait for it.)
    let all = traces.until("c3.http").await;
    let first = named(&all, "c3.http");
    let store = named(&all, "c3.http.store");
    assert_eq!(store.parent_span_id, first.span_context.span_id());
    let fill = named(&all, "c3.fill");
    assert_eq!(fill.parent_span_id, store.span_context.span_id());
    assert!(
        all.iter()
            .filter(|s| s.name == "c3.l2")
            .all(|s| s.span_kind == opentelemetry::trace::SpanKind::Client
                && s.span_context.trace_id() == first.span_context.trace_id()),
        "{all:#?}"
    );
    send(&svc, get("http://app.test/x").body(Body::empty()).unwrap()).await;
    let all = traces.take();
    let http = named(&all, "c3.http");
    assert_eq!(attr(http, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(http, "url.path").as_deref(), Some("/x"));
    assert_eq!(
        typed(http, "http.response.status_code"),
        Some(opentelemetry::Value::I64(200)),
        "an integer, as the semantic conventions say"
    );
    assert_eq!(http.span_kind, opentelemetry::trace::SpanKind::Server);
    assert!(
        attr(http, "c3.cache_status")
            .unwrap()
            .starts_with("c3; hit"),
        "{http:?}"
    );
    assert!(
        attr(http, "c3.cache_status")
            .unwrap()
            .ends_with("detail=l1"),
        "{http:?}"
    );
    assert!(
        children(&all, http).is_empty(),
        "an L1 hit does no I/O and opens no span inside the layer's: {:#?}",
        names(&all)
    );

    // A caller's traceparent: ignored by default (a public endpoint must not
    // let callers pick its trace ids), continued when the layer is told to.
    let caller_trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let caller_span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let with_parent = || {
        get("http://app.test/x")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Body::empty())
            .unwrap()
    };
    send(&svc, with_parent()).await;
    let all = traces.take();
    assert_ne!(named(&all, "c3.http").span_context.trace_id(), caller_trace);

    let propagating = tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()).propagate_trace_context(true))
        .service(origin.service());
    send(&propagating, with_parent()).await;
    let all = traces.take();
    let http = named(&all, "c3.http");
    assert_eq!(http.span_context.trace_id(), caller_trace);
    assert_eq!(http.parent_span_id, caller_span);
    assert!(
        all.iter()
            .filter(|s| s.name == "c3.get")
            .all(|s| s.span_context.trace_id() == caller_trace),
        "the cache's spans join the caller's trace"
    );
}

#[tokio::test]
async fn answers_from_l1_are_debug_spans_and_io_is_info() {
    use axum::body::Body;
    use support::web::{Origin, cached, get, resp, send, stored};

    // What `c3::core::otlp`'s layer exports: INFO and above.
    let traces = Traces::start_at(tracing_subscriber::filter::LevelFilter::INFO);
    let db = TestDb::new("debug_hits").await;
    let c3 = db.node().await;
    c3.set("k", &1u8).await.unwrap();
    traces.take();
    let (_, tier) = c3.get_with_tier::<u8>("k").await.unwrap();
    assert_eq!(tier, c3::core::Tier::L1);
    let opts = c3::core::LoadOptions::default();
    let loaded = c3
        .get_or_load("k", &opts, || async { Ok::<_, std::io::Error>(Some(2u8)) })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref(), Some(&1), "answered from L1");
    assert!(traces.take().is_empty(), "an L1 hit exported a span");
    c3.delete("k").await.unwrap();
    c3.get::<u8>("k").await.unwrap();
    let all = traces.take();
    let read = named(&all, "c3.get");
    assert_eq!(attr(read, "c3.tier").as_deref(), Some("l2"));

    let origin = Origin::new(|_, n| resp(&[("cache-control", "max-age=60")], format!("v{n}")));
    let svc = cached(&c3, &origin);
    let w = c3.stats().writes;
    send(&svc, get("http://app.test/x").body(Body::empty()).unwrap()).await;
    stored(&c3, w, 1).await;
    let all = traces.until("c3.http").await;
    assert!(
        attr(named(&all, "c3.http"), "c3.cache_status")
            .unwrap()
            .contains("fwd=uri-miss")
    );
    let hits = c3.stats().l1_hits;
    send(&svc, get("http://app.test/x").body(Body::empty()).unwrap()).await;
    assert_eq!(
        c3.stats().l1_hits,
        hits + 1,
        "the second request was an L1 hit"
    );
    assert!(
        traces.take().iter().all(|s| s.name != "c3.http"),
        "an HTTP L1 hit exported a span at INFO"
    );
}

/// A meter provider whose exports land in memory, as one node's would.
struct Metrics {
    exporter: InMemoryMetricExporter,
    provider: SdkMeterProvider,
}

impl Metrics {
    fn new() -> Metrics {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Metrics { exporter, provider }
    }

    fn meter(&self) -> opentelemetry::metrics::Meter {
        use opentelemetry::metrics::MeterProvider as _;
        self.provider.meter("c3")
    }

    /// Collects now and returns the (cumulative) result.
    fn collect(&self) -> ResourceMetrics {
        self.provider.force_flush().unwrap();
        self.exporter
            .get_finished_metrics()
            .unwrap()
            .pop()
            .expect("an export")
    }
}

/// The data points of `name` whose attributes include all of `attrs`:
/// `(value or count, attributes)`.
fn points(rm: &ResourceMetrics, name: &str, attrs: &[(&str, &str)]) -> Vec<(f64, Vec<String>)> {
    let matches = |a: Vec<&opentelemetry::KeyValue>| {
        let shown: Vec<String> = a
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        attrs
            .iter()
            .all(|(k, v)| shown.contains(&format!("{k}={v}")))
            .then_some(shown)
    };
    let mut out = Vec::new();
    for m in rm
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == name)
    {
        match m.data() {
            AggregatedMetrics::U64(MetricData::Sum(s)) => {
                for p in s.data_points() {
                    if let Some(a) = matches(p.attributes().collect()) {
                        out.push((p.value() as f64, a));
                    }
                }
            }
            AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                for p in g.data_points() {
                    if let Some(a) = matches(p.attributes().collect()) {
                        out.push((p.value() as f64, a));
                    }
                }
            }
            AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                for p in h.data_points() {
                    if let Some(a) = matches(p.attributes().collect()) {
                        out.push((p.count() as f64, a));
                    }
                }
            }
            other => panic!("{name}: unexpected data {other:?}"),
        }
    }
    out
}

/// The one value (or histogram count) of `name` with `attrs`; 0 if absent.
fn value(rm: &ResourceMetrics, name: &str, attrs: &[(&str, &str)]) -> u64 {
    let p = points(rm, name, attrs);
    assert!(p.len() <= 1, "{name} {attrs:?}: several series {p:?}");
    p.first().map_or(0, |(v, _)| *v as u64)
}

#[tokio::test]
async fn counters_and_histograms_move_on_the_node_that_acts_and_on_the_node_that_hears() {
    // Spans too: a test in this binary that hits c3's callsites with no
    // subscriber can make tracing cache "never interested" for them while
    // another test is collecting spans.
    let _traces = Traces::start();
    let db = TestDb::new("metrics").await;
    let (ma, mb) = (Metrics::new(), Metrics::new());
    let a = db.builder().meter(ma.meter()).build().await.unwrap();
    let b = db.builder().meter(mb.meter()).build().await.unwrap();

    // A writes; B hears of it, then reads from L2 and from L1.
    let heard = b.stats().invalidations_received;
    a.set("user:1", &"Ada".to_owned()).await.unwrap();
    support::received(&b, heard).await;
    assert!(b.get::<String>("user:1").await.unwrap().is_some());
    assert!(b.get::<String>("user:1").await.unwrap().is_some());
    assert!(b.get::<String>("nobody").await.unwrap().is_none());

    // A invalidates a tag; B clears everything, which A hears.
    a.set_tagged("user:2", &"Grace".to_owned(), None, &["team:1"])
        .await
        .unwrap();
    assert_eq!(a.invalidate_tag("team:1").await.unwrap(), 1);
    let heard = a.stats().invalidations_received;
    let purges = b.stats().purges;
    b.clear().await.unwrap();
    support::received(&a, heard).await;
    // B purges once when its clear commits and once more when the clear's
    // own notification comes back; the load below must come after both.
    support::wait_until("B's own clear echo", support::DELIVERY, || async {
        b.stats().purges >= purges + 2
    })
    .await;

    // B loads a key from the source.
    let opts = c3::core::LoadOptions::new();
    b.get_or_load("user:3", &opts, || async {
        Ok::<_, std::io::Error>(Some("Edsger".to_owned()))
    })
    .await
    .unwrap();

    let (ra, rb) = (ma.collect(), mb.collect());
    let (sa, sb) = (a.stats(), b.stats());
    // Sent on A, received on B — and the same numbers `stats()` reports.
    let key = [("c3.kind", "key")];
    assert!(value(&ra, "c3.invalidations.sent", &key) >= 2, "two writes");
    assert_eq!(
        value(&ra, "c3.invalidations.sent", &key),
        sa.key_invalidations_sent
    );
    assert_eq!(
        value(&ra, "c3.invalidations.sent", &[("c3.kind", "tag")]),
        1
    );
    assert!(value(&rb, "c3.invalidations.received", &key) >= 1);
    assert_eq!(
        value(&rb, "c3.invalidations.received", &key),
        sb.key_invalidations_received
    );
    assert_eq!(
        value(&rb, "c3.invalidations.sent", &[("c3.kind", "clear")]),
        1
    );
    assert_eq!(
        value(&ra, "c3.invalidations.received", &[("c3.kind", "clear")]),
        1
    );
    assert!(
        value(&rb, "c3.invalidation.lag", &[]) >= 1,
        "B timed what it heard"
    );
    assert!(
        value(&ra, "c3.invalidation.lag", &[]) >= 1,
        "A timed B's clear"
    );
    assert_eq!(value(&ra, "c3.writes", &[]), sa.writes);

    // Reads on B by tier, counted and timed.
    assert_eq!(value(&rb, "c3.hits", &[("c3.tier", "l1")]), 1);
    assert_eq!(value(&rb, "c3.hits", &[("c3.tier", "l2")]), 1);
    assert_eq!(value(&rb, "c3.misses", &[("c3.tier", "l2")]), sb.l2_misses);
    let get = |tier: &'static str, outcome: &'static str| {
        value(
            &rb,
            "c3.operation.duration",
            &[
                ("c3.operation", "get"),
                ("c3.tier", tier),
                ("c3.outcome", outcome),
            ],
        )
    };
    assert_eq!(get("l1", "hit"), 0, "L1 hits are counted, not timed");
    assert_eq!(get("l2", "hit"), 1);
    assert_eq!(get("l2", "miss"), 1);
    assert_eq!(
        value(
            &rb,
            "c3.operation.duration",
            &[("c3.operation", "get_or_load"), ("c3.tier", "source")]
        ),
        1
    );
    assert_eq!(value(&rb, "c3.loads", &[]), 1);
    assert_eq!(value(&rb, "c3.load.duration", &[("c3.outcome", "ok")]), 1);
    assert_eq!(value(&rb, "c3.load.errors", &[]), 0);

    // Gauges: what L1 holds, the listener, the breaker.
    assert!(value(&rb, "c3.l1.entries", &[]) >= 1, "the loaded key");
    assert!(value(&rb, "c3.l1.size", &[]) > 0);
    let listener = |s: &'static str| value(&rb, "c3.listener.state", &[("c3.listener.state", s)]);
    assert_eq!((listener("listening"), listener("reconnecting")), (1, 0));
    let breaker = |which: &'static str, state: &'static str| {
        value(
            &rb,
            "c3.breaker.state",
            &[("c3.breaker", which), ("c3.breaker.state", state)],
        )
    };
    assert_eq!((breaker("l2", "closed"), breaker("l2", "open")), (1, 0));
    assert_eq!(
        value(
            &rb,
            "c3.breaker.state",
            &[
                ("c3.breaker", "loader"),
                ("c3.source", "default"),
                ("c3.breaker.state", "closed")
            ]
        ),
        1,
        "one series per loader source"
    );

    // Every series names its cache.
    let table = &b.sql_names().table;
    for name in ["c3.hits", "c3.operation.duration", "c3.l1.entries"] {
        for (_, attrs) in points(&rb, name, &[]) {
            assert!(
                attrs.contains(&format!("c3.cache={table}")),
                "{name}: {attrs:?}"
            );
        }
    }
    ma.provider.shutdown().unwrap();
    mb.provider.shutdown().unwrap();
}

#[tokio::test]
async fn a_dropped_cache_stops_reporting() {
    let _traces = Traces::start();
    let db = TestDb::new("metrics_drop").await;
    let m = Metrics::new();
    let c3 = db.builder().meter(m.meter()).build().await.unwrap();
    c3.set("k", &1).await.unwrap();
    assert_eq!(value(&m.collect(), "c3.writes", &[]), 1);
    c3.shutdown().await;
    drop(c3);
    m.exporter.reset();
    let rm = m.collect();
    assert!(
        points(&rm, "c3.l1.entries", &[]).is_empty(),
        "nothing observed for a dropped cache"
    );
}
