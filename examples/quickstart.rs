//! Two c3 nodes staying coherent through a write.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Uses PostgreSQL when `DATABASE_URL` is set or the local default
//! (`postgres://postgres@127.0.0.1:5432/postgres`) answers; otherwise the
//! embedded in-memory backend, which has the same semantics.

use std::time::{Duration, Instant};

use c3::{C3, MemoryServer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (a, b, backend) = two_nodes().await?;
    println!("backend: {backend}");
    println!("node A = {}, node B = {}\n", a.node_id(), b.node_id());

    let ada = User {
        id: 42,
        name: "Ada".into(),
    };
    a.set("user:42", &ada).await?;
    println!("A  set  user:42 = {:?}", ada.name);

    let t = Instant::now();
    let got = b.get::<User>("user:42").await?.expect("present");
    println!(
        "B  get  user:42 = {:?}  (L2 hit, {:?})",
        got.name,
        t.elapsed()
    );
    let t = Instant::now();
    let got = b.get::<User>("user:42").await?.expect("present");
    println!(
        "B  get  user:42 = {:?}  (L1 hit, {:?})",
        got.name,
        t.elapsed()
    );

    let renamed = User {
        id: 42,
        name: "Ada Lovelace".into(),
    };
    let t = Instant::now();
    a.set("user:42", &renamed).await?;
    println!(
        "\nA  set  user:42 = {:?}  (upsert + NOTIFY in one transaction)",
        renamed.name
    );

    // B drops its copy when A's notification arrives.
    while b.is_cached_locally("user:42") {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("B never received the invalidation".into());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    println!("B  invalidated after {:?}", t.elapsed());
    let got = b.get::<User>("user:42").await?.expect("present");
    println!("B  get  user:42 = {:?}  (coherent)", got.name);
    assert_eq!(got.name, "Ada Lovelace");

    a.delete("user:42").await?;
    println!("\nA  delete user:42");
    let t = Instant::now();
    while b.get::<User>("user:42").await?.is_some() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("B still sees a deleted key".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("B  get  user:42 = None");

    let s = b.stats();
    println!(
        "\nB stats: l1_hits={} l2_hits={} invalidations_received={}",
        s.l1_hits, s.l2_hits, s.invalidations_received
    );
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

async fn two_nodes() -> Result<(C3, C3, String), c3::Error> {
    let var = |name: &str| std::env::var(name).ok().filter(|u| !u.is_empty());
    let explicit = var("C3_DATABASE_URL").or_else(|| var("DATABASE_URL"));
    let url = explicit
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    // The documented `C3_*` variables apply here too (behind PgBouncer:
    // `C3_LISTEN_DATABASE_URL`, `C3_PREPARED_STATEMENTS=false`, …).
    let pg = |url: &str| {
        C3::builder()
            .postgres(url)
            .table("c3_quickstart")
            .connect_timeout(Duration::from_secs(2))
            .from_env()
    };
    match pg(&url).build().await {
        Ok(a) => {
            let b = pg(&url).build().await?;
            let tls = match tls_version(&url).await {
                Some(v) => format!("over TLS ({v})"),
                None => "without TLS".to_owned(),
            };
            Ok((a, b, format!("PostgreSQL ({}), {tls}", redact(&url))))
        }
        // A database the user named must work: no silent fallback.
        Err(e) if explicit.is_some() => Err(e),
        Err(e) => {
            println!("PostgreSQL not reachable ({e}); using the in-memory backend");
            let db = MemoryServer::new();
            let a = C3::builder().memory(&db).build().await?;
            let b = C3::builder().memory(&db).build().await?;
            Ok((a, b, "in-memory".into()))
        }
    }
}

/// The TLS version of a connection made the way c3 makes them (the URL's
/// `sslmode`/`sslrootcert`), as PostgreSQL reports it; `None` for plaintext.
async fn tls_version(url: &str) -> Option<String> {
    let (config, tls) = c3::core::tls::connect_config(url).ok()?;
    let (client, conn) = config.connect(tls).await.ok()?;
    tokio::spawn(conn);
    let row = client
        .query_opt(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .await
        .ok()??;
    row.try_get(0).ok()
}

fn redact(url: &str) -> String {
    // Never print a password.
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
