//! Shared by the criterion benches (a folder, so Cargo does not take it for
//! a bench of its own). Each bench uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Times `iters` sequential awaits of `f` inside one runtime entry, so the
/// cost of entering the runtime is not part of the figure.
pub(crate) fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        t.elapsed()
    })
}

/// A single-threaded runtime: one worker, so figures are per core.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `DATABASE_URL`, else the local default.
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The README's OpenTelemetry pipeline (`c3::core::otlp` and its
/// `tracing-opentelemetry` layer as the global subscriber), exporting spans
/// and metrics over OTLP/HTTP to a local sink that answers 200: how users
/// run c3, for the benches that report "with telemetry". Call it once, after
/// the figures without telemetry; build caches after it (a cache takes its
/// meter when it is built).
pub(crate) async fn install_otel(service: &str) -> c3::core::otlp::OtlpGuard {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // The sink on a thread of its own: a benchmark's runtime never yields
    // during a timed loop, and an exporter left waiting would drop spans
    // instead of exporting them.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the OTLP sink");
    let endpoint = format!("http://{}", sink.local_addr().expect("its address"));
    std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async move {
            sink.set_nonblocking(true).expect("non-blocking");
            let sink = tokio::net::TcpListener::from_std(sink).expect("a tokio listener");
            let accept_all = axum::Router::new().fallback(|| async { "" });
            axum::serve(sink, accept_all).await
        })
    });
    let otel = c3::core::otlp::Otlp::default()
        .endpoint(endpoint)
        .service_name(service)
        .install()
        .expect("the OTLP pipeline");
    tracing_subscriber::registry().with(otel.layer()).init();
    otel
}
