//! The examples as users run them: separate processes, real TCP, one
//! PostgreSQL database of their own (created and dropped by the test).
//!
//! `cargo test` builds the examples before it runs tests; running this file
//! alone needs `cargo build --examples` first.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::{DELIVERY, connect, database_url, free_port, wait_until};
use tokio::process::{Child, Command};

/// A database of the test's own, so the examples' fixed table and channel
/// names cannot meet another test's.
struct OwnDatabase {
    name: String,
    url: String,
}

impl OwnDatabase {
    async fn new(test: &str) -> OwnDatabase {
        let admin = connect(&database_url()).await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("c3t_{test}_{:x}{nanos:x}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let base = database_url();
        let (prefix, _) = base.rsplit_once('/').expect("DATABASE_URL has a path");
        let url = format!("{prefix}/{name}");
        OwnDatabase { name, url }
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        support::run_cleanup(&database_url(), move |client| async move {
            let _ = client.batch_execute(&drop).await;
        });
    }
}

fn example(name: &str) -> PathBuf {
    // target/debug/deps/examples-… → target/debug/examples/NAME
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` (cargo test builds them)",
        path.display()
    );
    path
}

/// Starts an example and waits until it accepts connections.
async fn start(name: &str, args: &[&str], database: &str, port: u16) -> Child {
    start_with(name, args, &[("DATABASE_URL", database)], port).await
}

/// [`start`] with more environment.
async fn start_with(name: &str, args: &[&str], env: &[(&str, &str)], port: u16) -> Child {
    let child = Command::new(example(name))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn example");
    wait_until(&format!("{name} listens on {port}"), DELIVERY, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    child
}

async fn fetch(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let r = client.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    (status, cache, r.text().await.unwrap())
}

async fn put(client: &reqwest::Client, url: &str, body: &str) -> u16 {
    client
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("PUT")
        .status()
        .as_u16()
}

#[tokio::test]
async fn two_axum_app_replicas_stay_coherent() {
    let db = OwnDatabase::new("axum_app").await;
    let (pa, pb) = (free_port(), free_port());
    let (la, lb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let _a = start("axum_app", &["--listen", &la], &db.url, pa).await;
    let _b = start("axum_app", &["--listen", &lb], &db.url, pb).await;
    let (a, b) = (
        format!("http://{la}/users/1"),
        format!("http://{lb}/users/1"),
    );
    let client = reqwest::Client::new();

    assert_eq!(put(&client, &a, r#"{"name":"Ada"}"#).await, 200);
    let (status, _, body) = fetch(&client, &a).await;
    assert_eq!((status, body.as_str()), (200, r#"{"id":1,"name":"Ada"}"#));
    wait_until("A serves user 1 from its cache", DELIVERY, || async {
        fetch(&client, &a).await.1.contains("hit")
    })
    .await;
    let (_, cache, body) = fetch(&client, &b).await;
    assert!(cache.contains("hit; ttl"), "B serves A's entry: {cache}");
    assert!(body.contains("Ada"));

    assert_eq!(put(&client, &b, r#"{"name":"Grace"}"#).await, 200);
    wait_until("A serves the name written through B", DELIVERY, || async {
        fetch(&client, &a).await.2.contains("Grace")
    })
    .await;

    // A write that does not come through the API (psql, another service):
    // once both replicas hold the response in L1, an UPDATE purges it on
    // both, through the example's trigger.
    for url in [&a, &b] {
        wait_until("the replica serves user 1 from L1", DELIVERY, || async {
            fetch(&client, url).await.1.contains("detail=l1")
        })
        .await;
    }
    connect(&db.url)
        .await
        .execute(
            "UPDATE c3_example_users SET name = 'Hopper' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    for url in [&a, &b] {
        wait_until(
            "the replica serves the name written by SQL",
            DELIVERY,
            || async { fetch(&client, url).await.2.contains("Hopper") },
        )
        .await;
    }
}

#[tokio::test]
async fn reverse_proxies_forward_faithfully_and_share_one_cache() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let db = OwnDatabase::new("proxy").await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/doc"))
        .and(header("x-request-id", "r-1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=600")
                .insert_header("x-origin", "wiremock")
                .insert_header("etag", "\"v1\"")
                .set_body_string("document"),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("PUT"))
        .and(path("/doc"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&upstream)
        .await;
    let (p1, p2) = (free_port(), free_port());
    let (l1, l2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let up = upstream.uri();
    let _x = start(
        "reverse_proxy",
        &["--listen", &l1, "--upstream", &up],
        &db.url,
        p1,
    )
    .await;
    let _y = start(
        "reverse_proxy",
        &["--listen", &l2, "--upstream", &up],
        &db.url,
        p2,
    )
    .await;
    let client = reqwest::Client::new();
    let get = |base: &str| {
        client
            .get(format!("http://{base}/doc"))
            .header("x-request-id", "r-1")
            .send()
    };

    let r = get(&l1).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-origin"], "wiremock");
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.headers()["via"], "1.1 c3");
    assert_eq!(r.text().await.unwrap(), "document");
    wait_until("proxy 1 has stored the response", DELIVERY, || async {
        let r = get(&l1).await.unwrap();
        r.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    })
    .await;
    let r = get(&l2).await.unwrap();
    let status = r.headers()["cache-status"].to_str().unwrap();
    assert!(
        status.contains("hit"),
        "proxy 2 serves proxy 1's entry: {status}"
    );
    let requests = upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "one upstream request for both proxies");
    assert_eq!(requests[0].headers["x-request-id"], "r-1");

    // A write through proxy 2 invalidates the entry on proxy 1.
    let r = client
        .put(format!("http://{l2}/doc"))
        .body("new")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Judged from outside: proxy 1 asks the upstream again (its entry is
    // gone), not by what its Cache-Status says.
    let upstream_gets = || async {
        upstream
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == "GET")
            .count()
    };
    let before = upstream_gets().await;
    wait_until(
        "proxy 1 no longer serves the old entry: it asks upstream",
        DELIVERY,
        || async {
            let r = get(&l1).await.unwrap();
            assert_eq!(r.status(), 200);
            upstream_gets().await > before
        },
    )
    .await;
    let puts = upstream.received_requests().await.unwrap();
    assert!(
        puts.iter()
            .any(|r| r.method.as_str() == "PUT" && r.body == b"new")
    );
}

#[tokio::test]
async fn the_proxy_rejects_bad_flags_with_a_message() {
    for args in [
        &["--listen", "127.0.0.1:1"][..],
        &["--upstream", "ftp://x"][..],
        &["--bogus", "1"][..],
        &["--upstream", "http://127.0.0.1:1", "--listen", "nonsense"][..],
    ] {
        let out = Command::new(example("reverse_proxy"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("reverse_proxy: "),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn the_axum_app_exports_over_otlp_and_continues_the_callers_trace() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&collector)
        .await;
    let db = OwnDatabase::new("axum_otlp").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let endpoint = collector.uri();
    let mut app = start_with(
        "axum_app",
        &["--listen", &listen],
        &[
            ("DATABASE_URL", &db.url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
        port,
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/users/7");
    assert_eq!(put(&client, &url, r#"{"name":"Ada"}"#).await, 200);
    let r = client
        .get(&url)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A clean stop flushes what is buffered.
    let pid = app.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DELIVERY, app.wait())
        .await
        .expect("the app stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    let got = collector.received_requests().await.unwrap();
    let traces: Vec<u8> = got
        .iter()
        .filter(|r| r.url.path() == "/v1/traces")
        .flat_map(|r| r.body.clone())
        .collect();
    let metrics = got.iter().any(|r| r.url.path() == "/v1/metrics");
    assert!(metrics, "no metrics export");
    // The caller's trace id, as the 16 raw bytes protobuf carries.
    let trace_id: Vec<u8> = (0..16)
        .map(|i| {
            u8::from_str_radix(&"0af7651916cd43dd8448eb211c80319c"[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    assert!(
        traces.windows(16).any(|w| w == trace_id.as_slice()),
        "the request's spans joined the caller's trace"
    );
    assert!(traces.windows(7).any(|w| w == b"c3.http"));
}

/// The quickstart honours the README's `C3_*` variables: behind a real
/// PgBouncer in transaction mode, with LISTEN direct and unnamed
/// statements, it runs to the end (it used to send LISTEN through the
/// pooler and prepare named statements regardless).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_behind_pgbouncer_with_the_readmes_variables() {
    let db = OwnDatabase::new("quickstart_pgb").await;
    let bouncer = support::pgbouncer::PgBouncer::start(&support::database_addr(), 2);
    let out = Command::new(example("quickstart"))
        .env("DATABASE_URL", bouncer.url(&db.url))
        .env("C3_LISTEN_DATABASE_URL", &db.url)
        .env("C3_PREPARED_STATEMENTS", "false")
        .env_remove("C3_DATABASE_URL")
        .output()
        .await
        .expect("run the quickstart");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PostgreSQL"),
        "it used PostgreSQL: {stdout}"
    );
}
