//! A cached sqlx repository on two nodes: reads through c3, writes that
//! invalidate in their own transaction, and a trigger for everyone else.
//!
//! ```text
//! cargo run --example repository
//! ```
//!
//! Needs PostgreSQL (`DATABASE_URL`, else the local default). It works in a
//! schema of its own, `c3_example_repository`, and drops it at the end.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use c3::C3;
use c3_sqlx::{Cached, Repository};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const SCHEMA: &str = "c3_example_repository";

#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize, Cached)]
#[c3(table = "users", key = "id", ttl = "10m", fail_safe = "1h")]
struct User {
    id: i64,
    email: String,
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _) = common::database_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
        .map_err(|e| format!("PostgreSQL at {}: {e}", common::redact(&url)))?;
    sqlx::raw_sql(
        "DROP SCHEMA IF EXISTS c3_example_repository CASCADE;
         CREATE SCHEMA c3_example_repository;
         CREATE TABLE c3_example_repository.users
             (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, name text NOT NULL);",
    )
    .execute(&admin)
    .await?;
    // Unqualified names (the entity's `users`) resolve in the example's schema.
    let opts = PgConnectOptions::from_str(&url)?.options([("search_path", SCHEMA)]);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await?;
    let node = || {
        C3::builder()
            .postgres(&url)
            .schema(SCHEMA)
            .channel("c3_example_repository")
            .build()
    };
    let (a, b) = (node().await?, node().await?);
    let users_a = Repository::<User>::new(a.clone(), pool.clone());
    let users_b = Repository::<User>::new(b.clone(), pool.clone());
    users_a.install_trigger().await?;
    println!(
        "cache key of user 42: {}",
        Repository::<User>::cache_key(&42)
    );

    let ada = User {
        id: 42,
        email: "ada@example.com".into(),
        name: "Ada".into(),
    };
    users_a.save(&ada).await?;
    println!("A  save  {ada:?}  (upsert + invalidation, one transaction)");
    for _ in 0..3 {
        let hits = b.stats().l1_hits;
        let t = Instant::now();
        let u = users_b.find(&42).await?;
        let from = if b.stats().l1_hits > hits {
            "L1"
        } else {
            "L2 or SELECT"
        };
        println!(
            "B  find  42 -> {:?}  ({from}, {:?})",
            u.map(|u| u.name),
            t.elapsed()
        );
    }

    // Any client, plain SQL: the trigger invalidates every node.
    sqlx::query("UPDATE users SET name = 'Ada Lovelace' WHERE id = 42")
        .execute(&pool)
        .await?;
    let t = Instant::now();
    while b.is_cached_locally(&Repository::<User>::cache_key(&42)) {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("B never heard of the UPDATE".into());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    println!("\nplain UPDATE  -> B invalidated after {:?}", t.elapsed());
    println!(
        "B  find  42 -> {:?}",
        users_b.find(&42).await?.map(|u| u.name)
    );

    users_a
        .save(&User {
            id: 7,
            email: "grace@example.com".into(),
            name: "Grace".into(),
        })
        .await?;
    let many = users_b.find_many(&[42, 7, 1]).await?;
    let names: Vec<_> = many
        .iter()
        .map(|u| u.as_ref().map(|u| u.name.as_str()))
        .collect();
    println!("B  find_many [42, 7, 1] -> {names:?}  (one SELECT for the misses)");
    let email = "grace@example.com";
    let by_email = users_b
        .find_by("email", email, |pool| async move {
            sqlx::query_as::<_, User>("SELECT id, email, name FROM users WHERE email = $1")
                .bind(email)
                .fetch_optional(&pool)
                .await
        })
        .await?;
    println!("B  find_by email {email} -> {:?}", by_email.map(|u| u.id));

    // Your own transaction: the business write and the invalidation commit together.
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE users SET name = 'Grace Hopper' WHERE id = 7")
        .execute(&mut *tx)
        .await?;
    let done =
        c3_sqlx::invalidate(&mut *tx, &a, &[&Repository::<User>::cache_key(&7)], &[]).await?;
    tx.commit().await?;
    done.apply_locally(&a);
    println!(
        "A  find  7 -> {:?}",
        users_a.find(&7).await?.map(|u| u.name)
    );

    users_a.delete(&42).await?;
    println!(
        "A  delete 42; A find 42 -> {:?}",
        users_a.find(&42).await?.map(|u| u.name)
    );

    a.shutdown().await;
    b.shutdown().await;
    sqlx::raw_sql("DROP SCHEMA c3_example_repository CASCADE")
        .execute(&admin)
        .await?;
    Ok(())
}
