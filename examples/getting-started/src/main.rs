//! The products service README.md's "Using it" builds, written from the README
//! alone: c3 through the facade (`c3-cache`), a `#[derive(Cached)]`
//! repository, the HTTP cache layer, health with an application state.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run -p c3-getting-started -- --listen 127.0.0.1:3001   # and :3002
//! curl -si -XPUT localhost:3001/products/1 -H 'content-type: application/json' \
//!   -d '{"name":"Lamp","price_cents":1200}'
//! curl -si localhost:3002/products/1     # the other replica: the same product
//! psql -c "UPDATE products SET price_cents = 900 WHERE id = 1"   # both replicas purge
//! ```
//!
//! Two replicas on two ports share one cache: a response stored by one is
//! served by both, a `PUT` on either purges it on both before it answers, and a
//! write that does not come through the API (psql, another service) purges it
//! too — the repository's trigger invalidates the product's cache key, which
//! tags the response.
//!
//! `DATABASE_URL` (default: the local PostgreSQL) and the `C3_*` variables
//! configure the cache; `--listen ADDR` (default `127.0.0.1:3000`).

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use c3::C3;
use c3::axum::{C3CacheLayer, CacheTags};
use c3::sqlx::{Cached, Repository};

#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cached)]
#[c3(table = "products", key = "id", ttl = "10m", fail_safe = "1h")]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
}

#[derive(serde::Deserialize)]
struct NewProduct {
    name: String,
    price_cents: i64,
}

#[derive(Clone)]
struct AppState {
    cache: C3,
    products: Repository<Product>,
}

// The glue `health` and the `Cache` extractor need (README, "HTTP response caching").
impl FromRef<AppState> for C3 {
    fn from_ref(state: &AppState) -> C3 {
        state.cache.clone()
    }
}

/// One error type for the handlers, and an axum response as it is: a
/// repository error already carries the cache's (`c3::sqlx::Error::Cache`);
/// it answers 503 when the cache's store or the database cannot be reached,
/// 500 otherwise, and logs the error (target `c3::axum`).
type AppError = c3::sqlx::Error;

/// `GET /products/{id}`: cached 60 s by every replica, tagged with the
/// product's cache key so any write to its row purges it everywhere. A 404 is
/// tagged too: creating the product purges it.
async fn show(State(app): State<AppState>, Path(id): Path<i64>) -> Result<Response, AppError> {
    let tags = CacheTags::new([Repository::<Product>::cache_key(&id)]);
    let cache_control = [("cache-control", "max-age=60")];
    Ok(match app.products.find_arc(&id).await? {
        Some(product) => (tags, cache_control, Json(product)).into_response(),
        None => (StatusCode::NOT_FOUND, tags, cache_control).into_response(),
    })
}

/// `PUT /products/{id}`: the upsert and its invalidation commit together; the
/// layer purges the URI on every replica before the answer leaves.
async fn update(
    State(app): State<AppState>,
    Path(id): Path<i64>,
    Json(new): Json<NewProduct>,
) -> Result<Json<Arc<Product>>, AppError> {
    let product = Product {
        id,
        name: new.name,
        price_cents: new.price_cents,
    };
    app.products.save(&product).await?;
    Ok(Json(Arc::new(product)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:3000".to_owned();
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => {
                return Err(
                    format!("usage: c3-getting-started [--listen ADDR]; got {flag}").into(),
                );
            }
        }
    }
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());

    let cache = C3::builder().postgres(&url).from_env().build().await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    create_schema(&pool).await?;
    let products = Repository::<Product>::new(cache.clone(), pool.clone());
    // psql, other services, migrations: every write to `products` purges.
    products.install_trigger().await?;

    let state = AppState {
        cache: cache.clone(),
        products,
    };
    let app = Router::new()
        .route("/products/{id}", get(show).put(update))
        // Replicas are reached at different addresses (each its own
        // host:port): one name keys the cache for all of them.
        .layer(C3CacheLayer::new(cache).fixed_authority("products.example.com"))
        .route("/health", get(c3::axum::health))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The products table and the trigger, once, however many replicas start at
/// the same moment (an advisory lock serialises them).
async fn create_schema(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('c3-getting-started schema'))")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS products \
         (id bigint PRIMARY KEY, name text NOT NULL, price_cents bigint NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
