//! Every Rust block of README.md, verbatim, in code that compiles — so the
//! README cannot drift from the API. `tests/readme.rs` checks that each
//! block appears here line for line; CI builds this file with the other
//! examples. Running it does a short tour against `DATABASE_URL` (else the
//! local default): `cargo run --example readme`.

use std::error::Error;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;

type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
struct Account {
    id: i64,
    email: String,
    name: String,
}

/// The source of truth `get_or_load` reads in the README's first block.
async fn load_user(id: i64) -> Result<Option<Account>, sqlx::Error> {
    Ok(Some(Account {
        id,
        email: "ada@example.com".into(),
        name: "Ada".into(),
    }))
}

// Compiled, not run by `main`: these need a `users` table and a real user.

/// "Using it": the cache's core calls.
#[allow(dead_code, unused_variables)]
#[rustfmt::skip] // the README's layout, verbatim
async fn using_it(user: Account) -> Result<(), BoxError> {
    type User = Account;
    // README block: using it
    use c3::C3;

    let cache = C3::builder()
        .postgres("postgres://app@db/app")     // or .pool(existing_deadpool_pool).postgres(url)
        .l1_max_bytes(256 * 1024 * 1024)        // L1 capacity in bytes
        .default_ttl(Some(std::time::Duration::from_secs(600)))
        .build()
        .await?;                               // creates the table if needed

    cache.set("user:42", &user).await?;         // upsert + NOTIFY, one transaction
    let u: Option<std::sync::Arc<User>> = cache.get("user:42").await?;  // L1, else L2
    cache.delete("user:42").await?;             // gone from L2 and every L1
    cache.invalidate("user:42").await?;         // drop every L1 copy, keep L2

    // Cache-aside: one load per key per node however many callers miss at once;
    // the last value keeps being served (fail-safe) while the source is down.
    // The loader returns `Result<Option<T>, E>` — `Ok(None)`: not found (cached
    // only with `negative_ttl`); `Err(e)`: the source failed. Here:
    // `async fn load_user(id: i64) -> Result<Option<User>, sqlx::Error>`.
    let opts = c3::core::LoadOptions::new().fail_safe(std::time::Duration::from_secs(3600));
    let u = cache.get_or_load("user:42", &opts, || async { load_user(42).await }).await?;
    // end of block
    println!("loaded: {u:?}");
    Ok(())
}

/// "Writers set, fillers fill".
#[allow(dead_code)]
#[rustfmt::skip] // the README's layout, verbatim
async fn fillers_fill(cache: &c3::C3, db: sqlx::PgPool) -> Result<(), BoxError> {
    type User = Account;
    let ttl = Duration::from_secs(60);
    // README block: fillers fill
    let fill = cache.begin_fill(&["user:42"]).await?;           // before the SELECT
    let user = sqlx::query_as::<_, User>("SELECT …").fetch_one(&db).await?;
    let cached = fill.store("user:42", &user, Some(ttl), &["team:7"]).await?;
    // false: something invalidated user:42 or team:7 after the fence; not cached
    // end of block
    println!("cached: {cached}");
    Ok(())
}

async fn show(Path(id): Path<i64>) -> (c3::axum::CacheTags, String) {
    (
        c3::axum::CacheTags::new([format!("users:{id}")]),
        format!("user {id}"),
    )
}

async fn update(Path(id): Path<i64>) -> (c3::axum::InvalidateTags, String) {
    (
        c3::axum::InvalidateTags::new([format!("users:{id}")]),
        format!("updated {id}"),
    )
}

/// "HTTP response caching".
#[rustfmt::skip] // the README's layout, verbatim
fn http_caching(cache: c3::C3, token: String) -> Router {
    // README block: HTTP response caching
    use c3::axum::{C3CacheLayer, CacheTags, InvalidateTags};

    let app = Router::new()
        .route("/users/{id}", get(show).put(update))       // show answers with Cache-Control
        .layer(C3CacheLayer::new(cache.clone()))           // or .route_layer(...)
        .route("/health", get(c3::axum::health))           // 503 while L1 is bypassed
        .nest("/admin/cache", c3::axum::admin_router(cache.clone(), token));
    // end of block
    let _tags: Option<(CacheTags, InvalidateTags)> = None;
    app.with_state(cache)
}

/// "Cached repositories for sqlx".
#[allow(dead_code)]
#[rustfmt::skip] // the README's layout, verbatim
async fn repositories(cache: c3::C3, pool: sqlx::PgPool) -> Result<(), BoxError> {
    // README block: repositories
    #[derive(Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, c3::sqlx::Cached)]
    #[c3(table = "users", key = "id", ttl = "10m", fail_safe = "1h")]
    struct User { id: i64, email: String, name: String }

    let users = c3::sqlx::Repository::<User>::new(cache.clone(), pool.clone());
    users.install_trigger().await?;          // psql, other services: every write invalidates
    let u = users.find(&42).await?;          // L1 → L2 → SELECT, one SELECT per node per miss
    users.save(&u.unwrap()).await?;          // upsert + invalidation in one transaction
    // end of block
    Ok(())
}

/// "Observing c3".
#[rustfmt::skip] // the README's layout, verbatim
async fn observing(url: String) -> Result<(), BoxError> {
    // README block: observing
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let otel = c3::core::otlp::install()?;              // OTEL_EXPORTER_OTLP_* decide where and how
    tracing_subscriber::registry()
        .with(otel.layer())
        .with(tracing_subscriber::fmt::layer())           // console logs beside it, if you want them
        .init();
    let cache = c3::C3::builder().postgres(&url).build().await?;   // after install: takes the global meter
    let layer = c3::tower::C3CacheLayer::new(cache.clone()).propagate_trace_context(true);
    // ... serve ...
    // Flushes what is buffered. A collector that is down is reported, not fatal:
    if let Err(e) = otel.shutdown().await {
        eprintln!("telemetry not flushed at shutdown: {e}");
    }
    // end of block
    drop((layer, cache));
    Ok(())
}

/// "More than a few dozen replicas" (compiled, not run: it needs NATS and
/// `wal_level = logical`; `examples/relay_fleet.rs` runs a relay-mode fleet).
#[rustfmt::skip] // the README's layout, verbatim
async fn relay_mode(url: String) -> Result<(), BoxError> {
    use c3::C3;
    // README block: relay mode
    use c3::core::relay::{Nats, Relay};
    let cache = C3::builder()
        .postgres(&url)
        .relay(Nats::new("nats://nats:4222"))          // this node hears through NATS
        .embedded_relay(Relay::builder())              // and runs a relay (one leads)
        .build()
        .await?;
    // end of block
    drop(cache);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // Compiled only: relay mode needs NATS and a logical-decoding server.
    let _ = relay_mode;
    // A short tour of the parts that need nothing but PostgreSQL.
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let cache = c3::C3::builder().postgres(&url).build().await?;
    let router = http_caching(cache.clone(), "secret".into());
    drop(router);
    observing(url.clone()).await?;
    println!("the README's code compiles; see tests/readme.rs");
    Ok(())
}
