//! [`Cached`]: what the derive generates for an entity, and its cache keys.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;

use crate::__private::PgQuery;

/// The SQL and settings of one cached entity, fixed at compile time by
/// `#[derive(Cached)]`. Identifiers in the SQL were validated and quoted.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Entity {
    /// Cache keys are `<namespace>:<key part>[:<key part>…]`.
    pub namespace: &'static str,
    /// The table, quoted (and schema-qualified if `schema` was given).
    pub table: &'static str,
    /// The key column(s), in key order.
    pub key_columns: &'static [&'static str],
    /// `SELECT … WHERE <key> = $1 …`.
    pub select_by_key: &'static str,
    /// `SELECT … WHERE <key> = ANY($1)` (or a composite `IN (unnest(…))`).
    pub select_by_keys: &'static str,
    /// `INSERT … ON CONFLICT (<key>) DO UPDATE SET …`.
    pub upsert: &'static str,
    /// `DELETE … WHERE <key> = $1 …`.
    pub delete: &'static str,
    /// The cache key as a SQL expression over `$ROW` (for triggers).
    pub trigger_key: &'static str,
    /// Freshness of cached rows (`None`: the cache's default TTL).
    pub ttl: Option<Duration>,
    /// How long past its TTL a row may be served while the database fails.
    pub fail_safe: Option<Duration>,
    /// How long "no such row" is cached (`None`: not cached).
    pub negative_ttl: Option<Duration>,
}

/// A struct cached row by row. Derive it: `#[derive(c3_sqlx::Cached)]` with
/// `#[c3(table = "...", key = "...")]` (see the crate docs for every option);
/// the methods are the derive's business, not the caller's.
pub trait Cached:
    Serialize + DeserializeOwned + for<'r> sqlx::FromRow<'r, PgRow> + Send + Sync + Unpin + 'static
{
    /// The key: the key column's type, or a tuple for a composite key.
    type Key: Clone + Send + Sync + 'static;

    /// The generated SQL and settings.
    const ENTITY: Entity;

    /// This row's key.
    fn key(&self) -> Self::Key;

    /// The key's parts as text (`Display`), in key order.
    fn key_parts(key: &Self::Key) -> Vec<String>;

    /// Binds `key` to [`Entity::select_by_key`] / [`Entity::delete`].
    fn bind_key<'q>(q: PgQuery<'q>, key: &Self::Key) -> PgQuery<'q>;

    /// Binds `keys` (one array per key column) to [`Entity::select_by_keys`].
    fn bind_keys<'q>(q: PgQuery<'q>, keys: &[Self::Key]) -> PgQuery<'q>;

    /// Binds this row to [`Entity::upsert`].
    fn bind_save<'q>(&self, q: PgQuery<'q>) -> PgQuery<'q>;

    /// The cache key of `key`: `<namespace>:<part>[:<part>…]`, each part
    /// escaped by [`key_part`]. Stable: other languages and the triggers
    /// build the same string.
    fn cache_key(key: &Self::Key) -> String {
        let mut out = String::from(Self::ENTITY.namespace);
        for part in Self::key_parts(key) {
            out.push(':');
            out.push_str(&key_part(&part));
        }
        out
    }
}

/// Escapes one key part so parts cannot run into each other: `%` becomes
/// `%25` and `:` becomes `%3A`; everything else is kept.
#[must_use]
pub fn key_part(text: &str) -> String {
    if !text.contains(['%', ':']) {
        return text.to_owned();
    }
    text.replace('%', "%25").replace(':', "%3A")
}

#[cfg(test)]
mod tests {
    use super::key_part;

    #[test]
    fn key_parts_are_escaped_reversibly() {
        assert_eq!(key_part("42"), "42");
        assert_eq!(key_part("a:b"), "a%3Ab");
        assert_eq!(key_part("50%:x"), "50%25%3Ax");
        assert_ne!(key_part("a:b"), key_part("a%3Ab"));
    }
}
