//! The `Cached` derive for [c3-sqlx](https://docs.rs/c3-sqlx). Use it through
//! `c3_sqlx::Cached` (or `c3::sqlx::Cached`); the generated code names only
//! c3-sqlx's `Cached`, `Entity` and `__private`.
//!
//! ## Layout
//!
//! * `attrs` — parsing `#[c3(...)]` and the fields' column names.
//! * `expand` — the SQL and the `Cached` impl generated from them.
//! * `krate` — where the generated code finds c3-sqlx.

mod attrs;
mod expand;
mod krate;

use proc_macro::TokenStream;

/// Derives `c3_sqlx::Cached` for a struct mapped to one table.
///
/// ```ignore
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, Clone, c3_sqlx::Cached)]
/// #[c3(table = "users", key = "id", ttl = "10m")]
/// struct User { id: i64, email: String, name: String }
/// ```
///
/// | attribute | meaning |
/// |---|---|
/// | `table = "users"` | the table (required) |
/// | `schema = "app"` | its schema (default: the connection's `search_path`) |
/// | `key = "id"` / `key = "org_id, id"` | the key column(s) (required) |
/// | `namespace = "user"` | cache key prefix (default: the table name) |
/// | `ttl = "10m"` | freshness of cached rows (`ms`, `s`, `m`, `h`, `d`) |
/// | `fail_safe = "1h"` | serve the last value this long past its TTL while the database fails |
/// | `negative_ttl = "30s"` | cache "no such row" this long |
/// | `crate = "my_c3::sqlx"` | where c3-sqlx is (default: `::c3_sqlx` when it is a dependency, else `::c3::sqlx` through the facade; read from the crate's `Cargo.toml`) |
/// | `save = "email, name"` | the columns `save` writes besides the key (default: all) |
///
/// Column names are the field names, or `#[sqlx(rename = "...")]`.
#[proc_macro_derive(Cached, attributes(c3))]
pub fn derive_cached(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
