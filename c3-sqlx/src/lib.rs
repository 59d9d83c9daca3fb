//! # c3-sqlx: cached repositories for sqlx on PostgreSQL
//!
//! Derive [`Cached`] on a `sqlx::FromRow` struct, build a [`Repository`], and
//! reads go through c3 (L1 → L2 → `SELECT`, with singleflight, circuit
//! breakers and fail-safe answers) while writes invalidate the row's cache
//! entry **in the same transaction** as the write itself.
//!
//! ```no_run
//! use c3_sqlx::{Cached, Repository};
//!
//! #[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cached)]
//! #[c3(table = "users", key = "id", ttl = "10m", fail_safe = "1h")]
//! struct User {
//!     id: i64,
//!     email: String,
//!     name: String,
//! }
//!
//! # async fn demo(c3: c3_core::C3, pool: sqlx::PgPool) -> Result<(), c3_sqlx::Error> {
//! let users = Repository::<User>::new(c3.clone(), pool.clone());
//! users.install_trigger().await?;                 // writes from any client invalidate too
//!
//! let u: Option<User> = users.find(&42).await?;  // L1 → L2 → SELECT
//! let many = users.find_many(&[1, 2, 3]).await?;  // one SELECT for the misses
//! users.save(&User { id: 42, email: "ada@example.com".into(), name: "Ada".into() }).await?;
//! users.delete(&42).await?;
//! let by_email = users
//!     .find_by("email", "ada@example.com", |pool| async move {
//!         sqlx::query_as::<_, User>("SELECT id, email, name FROM users WHERE email = $1")
//!             .bind("ada@example.com")
//!             .fetch_optional(&pool)
//!             .await
//!     })
//!     .await?;
//!
//! // Your own transaction, your own write, the same atomic invalidation:
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE users SET name = 'Ada L.' WHERE id = 42").execute(&mut *tx).await?;
//! let done = c3_sqlx::invalidate(&mut *tx, &c3, &[&Repository::<User>::cache_key(&42)], &[]).await?;
//! tx.commit().await?;
//! done.apply_locally(&c3);
//! # let _ = (u, many, by_email);
//! # Ok(()) }
//! ```
//!
//! ## `#[c3(...)]`
//!
//! | attribute | meaning |
//! |---|---|
//! | `table = "users"` | the table (required) |
//! | `schema = "app"` | its schema (default: the connection's `search_path`) |
//! | `key = "id"` / `key = "org_id, id"` | the key column(s) (required); a composite key is a tuple |
//! | `namespace = "user"` | cache key prefix (default: the table name) |
//! | `ttl = "10m"` | freshness (`ms`, `s`, `m`, `h`, `d`; default: the cache's TTL) |
//! | `fail_safe = "1h"` | serve the last value this long past its TTL while the database fails |
//! | `negative_ttl = "30s"` | cache "no such row" this long |
//! | `crate = "my_c3::sqlx"` | where c3-sqlx is (default: `::c3_sqlx` when it is a dependency, else `::c3::sqlx` through the facade; read from the crate's `Cargo.toml`) |
//! | `save = "email, name"` | the columns `save` writes besides the key (default: all) |
//!
//! Columns are the field names (or `#[sqlx(rename = "...")]`); every name is
//! checked at compile time and double-quoted in the generated SQL. A missing
//! key, an unknown column or a bad duration is a compile error pointing at
//! the attribute.
//!
//! ## Cache keys
//!
//! `<namespace>:<key>` — `users:42` — and for composite keys
//! `<namespace>:<part>:<part>` — `members:7:42`. Each part is the column's
//! text form with `%` written `%25` and `:` written `%3A` ([`key_part`]).
//! The triggers build the same strings in SQL.
//!
//! ## Layout
//!
//! * `entity` — [`Cached`], [`Entity`], [`key_part`].
//! * `repository` — [`Repository`].
//! * `invalidate` — [`invalidate`] and [`Invalidation`].
//! * `trigger` — the SQL of the per-table invalidation trigger.
//! * `error` — [`Error`].

mod entity;
mod error;
mod invalidate;
mod repository;
mod trigger;

pub use c3_sqlx_derive::Cached;
pub use entity::{Cached, Entity, key_part};
pub use error::Error;
pub use invalidate::{Invalidation, invalidate};
pub use repository::Repository;

/// Used by the code `#[derive(Cached)]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::time::Duration;

    /// A query on PostgreSQL with its arguments.
    pub type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

    /// What `#[derive(Cached)]` knows of an entity, as an
    /// [`Entity`](crate::Entity) (which other crates cannot build field by
    /// field: it is `#[non_exhaustive]`). `sql` is `[select_by_key,
    /// select_by_keys, upsert, delete, trigger_key]`, `lifetimes` is `[ttl,
    /// fail_safe, negative_ttl]`.
    #[must_use]
    pub const fn entity(
        (namespace, table, key_columns): (&'static str, &'static str, &'static [&'static str]),
        sql: [&'static str; 5],
        lifetimes: [Option<Duration>; 3],
    ) -> crate::Entity {
        let [select_by_key, select_by_keys, upsert, delete, trigger_key] = sql;
        let [ttl, fail_safe, negative_ttl] = lifetimes;
        crate::Entity {
            namespace,
            table,
            key_columns,
            select_by_key,
            select_by_keys,
            upsert,
            delete,
            trigger_key,
            ttl,
            fail_safe,
            negative_ttl,
        }
    }
}
