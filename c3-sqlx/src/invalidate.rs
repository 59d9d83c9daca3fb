//! Invalidation inside the caller's own transaction.

use c3_core::C3;
use sqlx::{Executor, Postgres};

use crate::Error;

/// What [`invalidate`] published, to hand to [`Invalidation::apply_locally`]
/// once the transaction has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "call apply_locally after commit so this node reads its own write at once"]
pub struct Invalidation {
    keys: Vec<String>,
    version: Option<u64>,
}

impl Invalidation {
    /// The version the invalidation was published at (`None`: nothing matched).
    #[must_use]
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// After commit: drops this node's older L1 copies now, instead of when
    /// the notification comes back (other nodes rely on the notification).
    /// Calling it after a rollback is harmless: it only drops L1 copies.
    pub fn apply_locally(&self, c3: &C3) {
        if let Some(v) = self.version {
            let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
            c3.note_external_write(&keys, v);
        }
    }
}

/// Deletes `keys` (and every entry tagged with one of `tags`) from c3's L2
/// and notifies every node — **as part of the transaction `executor` runs
/// in**: it commits or rolls back with the caller's own writes. Cached HTTP
/// responses whose surrogate keys name one of `keys` (e.g. `Surrogate-Key:
/// users:42`) go too ([`HTTP_TAG_PREFIX`](c3_core::HTTP_TAG_PREFIX)); so do
/// the repositories' `save`/`delete` and the installed trigger.
///
/// ```no_run
/// # async fn f(c3: c3_core::C3, pool: sqlx::PgPool) -> Result<(), c3_sqlx::Error> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE users SET name = 'Ada' WHERE id = 42").execute(&mut *tx).await?;
/// let done = c3_sqlx::invalidate(&mut *tx, &c3, &["users:42"], &[]).await?;
/// tx.commit().await?;
/// done.apply_locally(&c3);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// An invalid key or tag (checked before any I/O); a database error.
pub async fn invalidate<'c, E>(
    executor: E,
    c3: &C3,
    keys: &[&str],
    tags: &[&str],
) -> Result<Invalidation, Error>
where
    E: Executor<'c, Database = Postgres>,
{
    for k in keys.iter().chain(tags) {
        c3.validate_key(k)?;
    }
    // Each key is also an HTTP surrogate key: cached responses tagged with
    // it go too (one too long to be a tag was never stored as one).
    let mut all_tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
    all_tags.extend(
        keys.iter()
            .map(|k| format!("{}{k}", c3_core::HTTP_TAG_PREFIX))
            .filter(|t| c3.validate_key(t).is_ok()),
    );
    let names = c3.sql_names();
    let sql = format!(
        "SELECT {}($1, $2::text[], $3::text[])",
        names.invalidate_function
    );
    // The function name comes from validated, quoted identifiers.
    let version: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&names.channel)
        .bind(keys)
        .bind(&all_tags)
        .fetch_one(executor)
        .await?;
    Ok(Invalidation {
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        version: version.and_then(|v| u64::try_from(v).ok()),
    })
}
