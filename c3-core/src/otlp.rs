//! One call to export c3's spans and metrics (and the application's) over
//! OTLP (feature `otlp`).
//!
//! [`install`] sets up, from the standard `OTEL_*` environment variables:
//!
//! * a tracer provider with a batching OTLP span exporter,
//! * a meter provider with a periodic OTLP metric exporter (the instruments
//!   are listed on [`C3Builder::meter`](crate::C3Builder::meter)),
//! * the W3C trace-context propagator (so the HTTP layer can continue an
//!   incoming `traceparent`),
//!
//! and makes them the global providers. c3's spans come from `tracing`: add
//! [`OtlpGuard::layer`] to the application's subscriber to turn them into
//! OpenTelemetry spans. Install *before* building caches: a cache takes its
//! meter from the global provider when it is built.
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector base URL, e.g. `http://localhost:4318` (HTTP) or `:4317` (gRPC). **Unset: nothing is exported** (no default collector; logged once at INFO). A collector that cannot be reached is logged at WARN once per outage, and its return at INFO |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT` and the per-signal `…_TRACES_*`/`…_METRICS_*` forms | as the OpenTelemetry specification says |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | metric export period in ms (default 60000) |
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let otel = c3_core::otlp::Otlp::from_env()?.service_name("my-api").install()?;
//! tracing_subscriber::registry().with(otel.layer()).init();
//! let cache = c3_core::C3::builder().postgres("postgres://postgres@127.0.0.1/postgres").build().await?;
//! // ... serve ...
//! cache.shutdown().await;
//! otel.shutdown().await?; // flushes what is still buffered
//! # Ok(()) }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// Protobuf over HTTP (`http/protobuf`, port 4318): `POST /v1/traces`,
    /// `POST /v1/metrics`.
    HttpProtobuf,
    /// gRPC (`grpc`, port 4317).
    Grpc,
}

/// Why OTLP export could not be set up or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// An environment variable holds a value c3 cannot use.
    #[error("{variable}: {message}")]
    Env {
        /// The variable's name.
        variable: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The exporter could not be built (bad endpoint, client setup).
    #[error("building the OTLP {signal} exporter: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The exporter's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Flushing or shutting down a provider failed (e.g. the collector was
    /// unreachable and the export timed out).
    #[error("shutting down the OTLP {signal} pipeline: {message}")]
    Shutdown {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The SDK's error.
        message: String,
    },
}

/// Builds a span or metric exporter (their builders share method names but
/// not a trait): HTTP at `base + path`, or gRPC at `base`.
macro_rules! exporter {
    ($otlp:expr, $builder:expr, $protocol:expr, $path:literal) => {
        match $protocol {
            Protocol::HttpProtobuf => {
                let mut b = $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(url) = $otlp.signal_url($path) {
                    b = b.with_endpoint(url);
                }
                b.build()
            }
            Protocol::Grpc => {
                let mut b = $builder.with_tonic();
                if let Some(url) = &$otlp.endpoint {
                    b = b.with_endpoint(url.clone());
                }
                b.build()
            }
        }
    };
}

/// OTLP export settings; [`install`] is `Otlp::from_env()?.install()`.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Otlp {
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    service_name: Option<String>,
    metric_interval: Option<Duration>,
}

/// Installs OTLP export configured by the environment; see the [module
/// docs](self).
///
/// # Errors
///
/// As for [`Otlp::from_env`] and [`Otlp::install`].
pub fn install() -> Result<OtlpGuard, OtlpError> {
    Otlp::from_env()?.install()
}

impl Otlp {
    /// Settings from `OTEL_EXPORTER_OTLP_PROTOCOL`; everything else
    /// (endpoint, headers, timeouts, resource, export interval) is read by
    /// the OpenTelemetry SDK itself when [`install`](Self::install) runs.
    ///
    /// # Errors
    ///
    /// [`OtlpError::Env`] for a protocol other than `http/protobuf` or `grpc`.
    pub fn from_env() -> Result<Otlp, OtlpError> {
        let mut otlp = Otlp::default();
        if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
            otlp.protocol = Some(parse_protocol(&p)?);
        }
        Ok(otlp)
    }

    /// The collector's base URL, overriding `OTEL_EXPORTER_OTLP_ENDPOINT`.
    /// For HTTP, `/v1/traces` and `/v1/metrics` are appended.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The transport, overriding `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// `service.name`, overriding `OTEL_SERVICE_NAME`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// How often metrics are exported, overriding `OTEL_METRIC_EXPORT_INTERVAL`.
    pub fn metric_interval(mut self, every: Duration) -> Self {
        self.metric_interval = Some(every);
        self
    }

    /// Whether a collector was named: [`endpoint`](Self::endpoint), or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` / `…_TRACES_ENDPOINT` /
    /// `…_METRICS_ENDPOINT`.
    #[must_use]
    pub fn has_endpoint(&self) -> bool {
        self.endpoint.is_some()
            || [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            ]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
    }

    /// Builds the exporters and providers and makes them global.
    ///
    /// With no collector named (see [`has_endpoint`](Self::has_endpoint))
    /// nothing is exported: the guard holds providers without exporters, so
    /// instrumented code works, nothing tries to reach `localhost:4318`, and
    /// `shutdown` has nothing to flush.
    ///
    /// With gRPC this must run inside a Tokio runtime (the channel lives on it).
    ///
    /// # Errors
    ///
    /// [`OtlpError::Exporter`] if an exporter cannot be built.
    pub fn install(self) -> Result<OtlpGuard, OtlpError> {
        let protocol = self.protocol.unwrap_or(Protocol::HttpProtobuf);
        let mut resource = Resource::builder();
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let resource = resource.build();
        if !self.has_endpoint() {
            tracing::info!(target: "c3::otlp", "no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT); nothing is exported");
            let tracer_provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .build();
            let meter_provider = SdkMeterProvider::builder().with_resource(resource).build();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            return Ok(OtlpGuard {
                tracer_provider,
                meter_provider,
                exporting: false,
            });
        }

        let spans = self
            .span_exporter(protocol)
            .map_err(|source| OtlpError::Exporter {
                signal: "traces",
                source,
            })?;
        let metrics = self
            .metric_exporter(protocol)
            .map_err(|source| OtlpError::Exporter {
                signal: "metrics",
                source,
            })?;

        let spans = Watched::new(spans, "traces", self.named("TRACES"));
        let metrics = Watched::new(metrics, "metrics", self.named("METRICS"));
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let mut reader = PeriodicReader::builder(metrics);
        if let Some(every) = self.metric_interval {
            reader = reader.with_interval(every);
        }
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(reader.build())
            .with_resource(resource)
            .build();

        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(OtlpGuard {
            tracer_provider,
            meter_provider,
            exporting: true,
        })
    }

    /// The collector a signal goes to, as the logs name it.
    fn named(&self, signal: &str) -> String {
        let env = |v: &str| std::env::var(v).ok().filter(|v| !v.trim().is_empty());
        self.endpoint
            .clone()
            .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_default()
    }

    fn signal_url(&self, path: &str) -> Option<String> {
        self.endpoint
            .as_ref()
            .map(|base| format!("{}{path}", base.trim_end_matches('/')))
    }

    fn span_exporter(
        &self,
        protocol: Protocol,
    ) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
        let b = opentelemetry_otlp::SpanExporter::builder();
        exporter!(self, b, protocol, "/v1/traces")
    }

    fn metric_exporter(
        &self,
        protocol: Protocol,
    ) -> Result<opentelemetry_otlp::MetricExporter, opentelemetry_otlp::ExporterBuildError> {
        let b = opentelemetry_otlp::MetricExporter::builder();
        exporter!(self, b, protocol, "/v1/metrics")
    }
}

fn parse_protocol(value: &str) -> Result<Protocol, OtlpError> {
    match value.trim() {
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "grpc" => Ok(Protocol::Grpc),
        other => Err(OtlpError::Env {
            variable: "OTEL_EXPORTER_OTLP_PROTOCOL",
            message: format!("expected `http/protobuf` or `grpc`, got {other:?}"),
        }),
    }
}

/// An exporter whose failures are logged once per outage: the first failed
/// export at WARN with the error, then nothing while the collector stays
/// unreachable (every export period would otherwise log again), and one INFO
/// line when an export succeeds again, with how long it lasted and how many
/// exports were lost. Without it a down collector is silent: the SDK's own
/// logs are a feature c3 leaves off.
#[derive(Debug)]
struct Watched<E> {
    inner: E,
    outage: Outage,
}

impl<E> Watched<E> {
    fn new(inner: E, signal: &'static str, endpoint: String) -> Self {
        Watched {
            inner,
            outage: Outage {
                signal,
                endpoint,
                since: Mutex::new(None),
            },
        }
    }
}

/// Whether a signal's exports are failing, and since when.
#[derive(Debug)]
struct Outage {
    signal: &'static str,
    endpoint: String,
    /// When the first failed export of the current outage ended, and how
    /// many have failed since.
    since: Mutex<Option<(Instant, u64)>>,
}

impl Outage {
    fn observe(&self, result: &OTelSdkResult) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        match (result, since.as_mut()) {
            (Ok(()), None) => {}
            (Ok(()), Some((start, failed))) => {
                tracing::info!(
                    target: "c3::otlp",
                    signal = self.signal,
                    endpoint = %self.endpoint,
                    outage_ms = start.elapsed().as_millis() as u64,
                    failed_exports = *failed,
                    "OTLP export is back"
                );
                *since = None;
            }
            (Err(e), None) => {
                tracing::warn!(
                    target: "c3::otlp",
                    signal = self.signal,
                    endpoint = %self.endpoint,
                    error = %e,
                    "OTLP export failing; what it held is dropped (logged once until an export succeeds)"
                );
                *since = Some((Instant::now(), 1));
            }
            (Err(_), Some((_, failed))) => *failed += 1,
        }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.outage.observe(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Watched<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.outage.observe(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The installed pipeline. Keep it for the life of the application and call
/// [`shutdown`](Self::shutdown) at the end: spans and metrics are exported
/// in batches, and whatever is buffered is lost without it.
#[derive(Debug)]
pub struct OtlpGuard {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    /// False when no collector was named: nothing to flush at shutdown.
    exporting: bool,
}

impl OtlpGuard {
    /// A `tracing` layer that turns spans at INFO and above (c3's are INFO)
    /// into OpenTelemetry spans on this pipeline.
    #[must_use]
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        // No code location, thread or busy/idle attributes: each costs
        // allocations and clock reads on every span (on an HTTP hit, more
        // than the hit itself), and c3's spans are named by what they do.
        tracing_opentelemetry::OpenTelemetryLayer::new(self.tracer_provider.tracer("c3"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    }

    /// The tracer provider, for instrumenting other code directly.
    #[must_use]
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// The meter provider (also installed as the global one).
    #[must_use]
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }

    /// Exports what is buffered and stops both pipelines. Runs the blocking
    /// export on Tokio's blocking pool so it cannot stall the runtime.
    ///
    /// # Errors
    ///
    /// [`OtlpError::Shutdown`] if an export failed (the pipelines are
    /// stopped either way).
    pub async fn shutdown(self) -> Result<(), OtlpError> {
        let done = tokio::task::spawn_blocking(move || self.shutdown_blocking()).await;
        done.unwrap_or_else(|e| {
            Err(OtlpError::Shutdown {
                signal: "traces",
                message: e.to_string(),
            })
        })
    }

    /// [`shutdown`](Self::shutdown) for code outside a runtime.
    ///
    /// # Errors
    ///
    /// As for [`shutdown`](Self::shutdown).
    pub fn shutdown_blocking(self) -> Result<(), OtlpError> {
        if !self.exporting {
            return Ok(());
        }
        let traces = self.tracer_provider.shutdown();
        let metrics = self.meter_provider.shutdown();
        traces.map_err(|e| OtlpError::Shutdown {
            signal: "traces",
            message: e.to_string(),
        })?;
        metrics.map_err(|e| OtlpError::Shutdown {
            signal: "metrics",
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_the_specifications_names_and_others_are_refused() {
        assert_eq!(parse_protocol("grpc").unwrap(), Protocol::Grpc);
        assert_eq!(
            parse_protocol(" http/protobuf ").unwrap(),
            Protocol::HttpProtobuf
        );
        let e = parse_protocol("http/json").unwrap_err().to_string();
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"), "{e}");
    }

    #[test]
    fn the_http_endpoint_is_a_base_url() {
        let o = Otlp::default().endpoint("http://collector:4318/");
        assert_eq!(
            o.signal_url("/v1/traces").as_deref(),
            Some("http://collector:4318/v1/traces")
        );
    }
}
