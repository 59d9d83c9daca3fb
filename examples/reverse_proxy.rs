//! A caching reverse proxy: c3's HTTP cache layer around a hyper client.
//!
//! ```text
//! cargo run --example reverse_proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000
//! ```
//!
//! Every request is forwarded to the upstream with its method, path, query,
//! headers and body; every response comes back with its status, headers and
//! body, plus `Age` and `Cache-Status` from the cache and a `Via` line (RFC
//! 9110 §7.6.3). Only hop-by-hop headers (`Connection` and the headers it
//! names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
//! `Proxy-Authorization`, `Proxy-Authenticate`) stop at the proxy, as for
//! any HTTP intermediary.
//!
//! Run several proxies against one PostgreSQL (`DATABASE_URL`, else the local
//! default) and they form one cache: a response stored by one is served by
//! all, and a successful POST/PUT/PATCH/DELETE through any of them invalidates
//! the URI on every proxy. Entries are keyed by the upstream URI, so proxies
//! listening on different addresses share them. Without a reachable
//! PostgreSQL (and no `DATABASE_URL`) the proxy caches in memory, alone.
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:8080`), `--upstream URL`
//! (required, `http://host:port`), `--max-body-bytes N` (largest response
//! stored, default 512 KiB).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use c3::tower::C3CacheLayer;
use c3::{C3, MemoryServer};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceExt};

const FLAGS: [&str; 3] = ["--listen", "--upstream", "--max-body-bytes"];

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("reverse_proxy: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: reverse_proxy --upstream http://HOST:PORT [--listen 127.0.0.1:8080] [--max-body-bytes N]"
        );
        return Ok(());
    }
    let listen: SocketAddr = common::flag(&args, "--listen", &FLAGS, Some("127.0.0.1:8080"))?
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let upstream = common::flag(&args, "--upstream", &FLAGS, None)?
        .ok_or("--upstream http://HOST:PORT is required")?;
    let upstream: Uri = upstream
        .parse()
        .map_err(|e| format!("--upstream {upstream:?}: {e}"))?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err(format!("--upstream must be http://HOST[:PORT], got {upstream}").into());
    }
    let max_body: usize = common::flag(&args, "--max-body-bytes", &FLAGS, Some("524288"))?
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("--max-body-bytes: {e}"))?;

    let (c3, backend) = cache().await?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build::<_, Body>(connector);
    let cached = tower::ServiceBuilder::new()
        .layer(C3CacheLayer::new(c3.clone()).max_body_bytes(max_body))
        .service(client);

    let target = upstream.clone();
    let app = Router::new().fallback(move |req: Request| {
        let (svc, upstream) = (cached.clone(), target.clone());
        async move { forward(svc, &upstream, req).await }
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "reverse_proxy: listening on http://{} → {upstream} (cache: {backend}, node {})",
        listener.local_addr()?,
        c3.node_id()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(common::shutdown_signal())
        .await?;
    c3.shutdown().await;
    Ok(())
}

/// PostgreSQL when reachable (required if `DATABASE_URL` is set), else memory.
async fn cache() -> Result<(C3, String), c3::Error> {
    let (url, explicit) = common::database_url();
    let built = C3::builder()
        .postgres(&url)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .await;
    match built {
        Ok(c3) => Ok((c3, format!("PostgreSQL {}", common::redact(&url)))),
        Err(e) if explicit => Err(e),
        Err(e) => {
            eprintln!("reverse_proxy: PostgreSQL not reachable ({e}); caching in memory, alone");
            let c3 = C3::builder().memory(&MemoryServer::new()).build().await?;
            Ok((c3, "in-memory".into()))
        }
    }
}

/// Sends `req` to the upstream through the cache and returns its response.
async fn forward<S, B>(svc: S, upstream: &Uri, req: Request) -> Response
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Display,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut target = upstream.clone().into_parts();
    target.path_and_query = path.parse().ok();
    parts.uri = match Uri::from_parts(target) {
        Ok(u) => u,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("bad request target: {e}")).into_response();
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.append(header::VIA, via(parts.version));
    match svc.oneshot(Request::from_parts(parts, body)).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.append(header::VIA, via(parts.version));
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            [(header::VIA, via(http::Version::HTTP_11))],
            format!("upstream unavailable: {e}"),
        )
            .into_response(),
    }
}

fn via(version: http::Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        http::Version::HTTP_10 => "1.0 c3",
        http::Version::HTTP_2 => "2 c3",
        _ => "1.1 c3",
    })
}

/// Removes the headers that describe one connection, not the message
/// (RFC 9110 §7.6.1), including any that `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(n);
    }
}
