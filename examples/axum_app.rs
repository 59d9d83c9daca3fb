//! A small users API on PostgreSQL with c3's HTTP cache layer in front.
//!
//! ```text
//! cargo run --example axum_app -- --listen 127.0.0.1:3000
//! curl -s -XPUT localhost:3000/users/1 -H 'content-type: application/json' -d '{"name":"Ada"}'
//! curl -si localhost:3000/users/1      # cache-status: c3; fwd=uri-miss; stored
//! curl -si localhost:3000/users/1      # cache-status: c3; hit; ttl=59; detail=l1
//! ```
//!
//! Start it twice on two ports with the same `DATABASE_URL` (default: the
//! local PostgreSQL) and the two replicas form one cache: a `GET` cached by
//! one is served by both, and a `PUT`/`DELETE` on either invalidates the
//! user's URI and the `users` list on both before it answers. A write that
//! does not come through the API — `psql`, another service, a migration —
//! purges the same responses: a trigger on the users table invalidates
//! their tags in the writing transaction.
//!
//! | route | |
//! |---|---|
//! | `GET /users` | all users, cached 60 s, tagged `users` |
//! | `GET /users/{id}` | one user (404 if none), cached 60 s, tagged `user:{id}` and `users` |
//! | `POST /users` `{"name"}` | creates, `201` with `Location` |
//! | `PUT /users/{id}` `{"name"}` | creates or replaces |
//! | `DELETE /users/{id}` | `204`, or `404` |
//! | `GET /health` | `200` while the node listens for invalidations, `503` otherwise |
//! | `/admin/cache/...` | stats and invalidation, if `C3_ADMIN_TOKEN` is set (bearer token) |
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:3000`), `--name HOST` (the
//! name all replicas are served under, which keys the cache; default
//! `users.c3.local`), `--ttl SECONDS` (default 60).
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set (e.g. `http://localhost:4318`), it
//! exports its spans and c3's metrics over OTLP (`OTEL_EXPORTER_OTLP_PROTOCOL`
//! `http/protobuf` or `grpc`) and continues callers' `traceparent` headers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use c3::C3;
use c3::axum::{C3CacheLayer, CacheTags, InvalidateTags};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};

const FLAGS: [&str; 3] = ["--listen", "--name", "--ttl"];
const TABLE: &str = "c3_example_users";

#[derive(Clone)]
struct App {
    db: Pool,
    c3: C3,
    cache_control: HeaderValue,
}

impl axum::extract::FromRef<App> for C3 {
    fn from_ref(app: &App) -> C3 {
        app.c3.clone()
    }
}

#[derive(Debug, Serialize)]
struct User {
    id: i64,
    name: String,
}

#[derive(Debug, Deserialize)]
struct NewUser {
    name: String,
}

/// Every handler failure: logged, answered with a status and a short text.
struct AppError(StatusCode, String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl<E: std::error::Error> From<E> for AppError {
    fn from(e: E) -> Self {
        let mut msg = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            msg = format!("{msg}: {c}");
            cause = c.source();
        }
        eprintln!("axum_app: {msg}");
        AppError(
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable".into(),
        )
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("axum_app: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: axum_app [--listen 127.0.0.1:3000] [--name users.c3.local] [--ttl 60]");
        return Ok(());
    }
    let listen: SocketAddr = common::flag(&args, "--listen", &FLAGS, Some("127.0.0.1:3000"))?
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let name = common::flag(&args, "--name", &FLAGS, Some("users.c3.local"))?.unwrap_or_default();
    let ttl: u64 = common::flag(&args, "--ttl", &FLAGS, Some("60"))?
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("--ttl: {e}"))?;

    // Before the cache is built: it takes its meter from the global provider.
    let otel = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let mut otlp = c3::core::otlp::Otlp::from_env()?;
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                otlp = otlp.service_name("c3-axum-app");
            }
            let otel = otlp.install()?;
            tracing_subscriber::registry()
                .with(otel.layer())
                .try_init()?;
            Some(otel)
        }
        _ => None,
    };

    let (url, _) = common::database_url();
    // The URL's sslmode/sslrootcert decide TLS, as for c3's own connections.
    let (pg, tls) =
        c3::core::tls::connect_config(&url).map_err(|e| format!("DATABASE_URL: {e}"))?;
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let db = Pool::builder(manager)
        .max_size(16)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?;
    create_table(&db)
        .await
        .map_err(|e| format!("PostgreSQL at {}: {e}", common::redact(&url)))?;
    // The cache shares the application's pool for L2; LISTEN gets its own
    // connection from the URL.
    let c3 = C3::builder()
        .pool(db.clone())
        .postgres(&url)
        .build()
        .await?;
    install_purge_trigger(&db, c3.sql_names())
        .await
        .map_err(|e| format!("PostgreSQL at {}: {e}", common::redact(&url)))?;

    let app = App {
        db,
        c3: c3.clone(),
        cache_control: HeaderValue::from_str(&format!("public, max-age={ttl}"))?,
    };
    let mut router = Router::new()
        .route("/users", get(list).post(create))
        .route("/users/{id}", get(show).put(replace).delete(remove))
        .layer(
            C3CacheLayer::new(c3.clone())
                .fixed_authority(&name)
                .propagate_trace_context(otel.is_some()),
        )
        .route("/health", get(c3::axum::health));
    match std::env::var("C3_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => {
            router = router.nest("/admin/cache", c3::axum::admin_router(c3.clone(), token));
        }
        _ => {}
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "axum_app: listening on http://{} as {name} (node {}, PostgreSQL {})",
        listener.local_addr()?,
        c3.node_id(),
        common::redact(&url)
    );
    axum::serve(listener, router.with_state(app))
        .with_graceful_shutdown(common::shutdown_signal())
        .await?;
    c3.shutdown().await;
    // A collector that is down costs the last batch, not the exit code.
    if let Some(otel) = otel
        && let Err(e) = otel.shutdown().await
    {
        tracing::warn!(error = %e, "telemetry not flushed at shutdown");
    }
    Ok(())
}

/// Creates the users table once, also when several replicas start together.
async fn create_table(db: &Pool) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    // Concurrent CREATE TABLE IF NOT EXISTS can still collide on the catalog;
    // the lock makes the replicas take turns.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&TABLE])
        .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, name text NOT NULL)"
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A trigger that purges the HTTP responses about a user — tagged
/// `user:{id}` and `users` — whenever the users table changes, whoever
/// writes it, through c3's invalidation function: in the writing
/// transaction, on every replica. (c3-sqlx's `Repository::install_trigger`
/// does the same for entity keys.)
async fn install_purge_trigger(
    db: &Pool,
    names: &c3::core::SqlNames,
) -> Result<(), Box<dyn std::error::Error>> {
    // The channel is a validated identifier ([a-z0-9_]): safe in a literal.
    let (function, channel, tag) = (
        &names.invalidate_function,
        &names.channel,
        c3::core::HTTP_TAG_PREFIX,
    );
    let purge = |row: &str| {
        format!(
            "PERFORM {function}('{channel}', '{{}}'::text[], \
             ARRAY['{tag}user:' || {row}.id, '{tag}users']);"
        )
    };
    let (new, old) = (purge("NEW"), purge("OLD"));
    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&TABLE])
        .await?;
    tx.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION {TABLE}_purge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN {new} END IF;
    IF TG_OP <> 'INSERT' THEN {old} END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER {TABLE}_purge AFTER INSERT OR UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION {TABLE}_purge();"
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}

fn cached(app: &App) -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, app.cache_control.clone())]
}

async fn list(State(app): State<App>) -> Result<Response, AppError> {
    let rows = app
        .db
        .get()
        .await?
        .query(&format!("SELECT id, name FROM {TABLE} ORDER BY id"), &[])
        .await?;
    let users: Vec<User> = rows
        .iter()
        .map(|r| User {
            id: r.get(0),
            name: r.get(1),
        })
        .collect();
    Ok((cached(&app), CacheTags::new(["users"]), Json(users)).into_response())
}

async fn show(State(app): State<App>, Path(id): Path<i64>) -> Result<Response, AppError> {
    let row = app
        .db
        .get()
        .await?
        .query_opt(
            &format!("SELECT id, name FROM {TABLE} WHERE id = $1"),
            &[&id],
        )
        .await?;
    let tags = CacheTags::new([format!("user:{id}"), "users".into()]);
    Ok(match row {
        Some(r) => (
            cached(&app),
            tags,
            Json(User {
                id: r.get(0),
                name: r.get(1),
            }),
        )
            .into_response(),
        // Misses are cached briefly too (same tags), so a burst of lookups of
        // a missing id does not reach the database; creating it invalidates.
        None => (StatusCode::NOT_FOUND, cached(&app), tags, "no such user").into_response(),
    })
}

async fn create(State(app): State<App>, Json(new): Json<NewUser>) -> Result<Response, AppError> {
    let row = app
        .db
        .get()
        .await?
        .query_one(
            &format!("INSERT INTO {TABLE} (name) VALUES ($1) RETURNING id"),
            &[&new.name],
        )
        .await?;
    let id: i64 = row.get(0);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/users/{id}"))],
        InvalidateTags::new(["users"]),
        Json(User { id, name: new.name }),
    )
        .into_response())
}

async fn replace(
    State(app): State<App>,
    Path(id): Path<i64>,
    Json(new): Json<NewUser>,
) -> Result<Response, AppError> {
    let conn = app.db.get().await?;
    conn.execute(
        &format!(
            "INSERT INTO {TABLE} (id, name) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"
        ),
        &[&id, &new.name],
    )
    .await?;
    // An explicit id must not collide with the ids POST will hand out later.
    conn.execute(
        &format!(
            "SELECT setval(pg_get_serial_sequence('{TABLE}', 'id'), $1) \
             WHERE $1 > (SELECT last_value FROM {TABLE}_id_seq)"
        ),
        &[&id],
    )
    .await?;
    // The layer invalidates /users/{id} itself; the list is a separate URI.
    Ok((
        InvalidateTags::new(["users"]),
        Json(User { id, name: new.name }),
    )
        .into_response())
}

async fn remove(State(app): State<App>, Path(id): Path<i64>) -> Result<Response, AppError> {
    let n = app
        .db
        .get()
        .await?
        .execute(&format!("DELETE FROM {TABLE} WHERE id = $1"), &[&id])
        .await?;
    Ok(if n == 0 {
        (StatusCode::NOT_FOUND, "no such user").into_response()
    } else {
        (StatusCode::NO_CONTENT, InvalidateTags::new(["users"]), ()).into_response()
    })
}
