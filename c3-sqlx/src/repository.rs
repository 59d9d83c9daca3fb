//! [`Repository`]: cache-aside reads and transactional writes for one entity.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// The invalidation function needs each statement to see what committed
/// before it (PROTOCOL.md, "Isolation"); say so whatever the database's or
/// role's default isolation is.
const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

use c3_core::{C3, LoadOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::entity::{Cached, key_part};
use crate::invalidate::invalidate;
use crate::{Error, trigger};

/// Reads through c3 and writes with transactional invalidation, for one
/// [`Cached`] entity. Cheap to clone.
///
/// Reads (`find`) go L1 → L2 → `SELECT`, with c3's singleflight, circuit
/// breakers and fail-safe answers; writes (`save`, `delete`) change the row
/// and invalidate its cache entry in one transaction.
pub struct Repository<T> {
    c3: C3,
    pool: PgPool,
    opts: LoadOptions,
    ttl: Option<Duration>,
    _entity: PhantomData<fn() -> T>,
}

impl<T> Clone for Repository<T> {
    fn clone(&self) -> Self {
        Repository {
            c3: self.c3.clone(),
            pool: self.pool.clone(),
            opts: self.opts.clone(),
            ttl: self.ttl,
            _entity: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Repository<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("entity", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Cached> Repository<T> {
    /// A repository reading through `c3` from `pool`, with the TTL, fail-safe
    /// window and negative caching given in `#[c3(...)]`. Loads of this
    /// entity share one circuit breaker, named after its namespace.
    #[must_use]
    pub fn new(c3: C3, pool: PgPool) -> Self {
        let e = T::ENTITY;
        let ttl = e.ttl.or(c3.default_ttl());
        let mut opts = LoadOptions::new().source(e.namespace).ttl(ttl);
        if let Some(w) = e.fail_safe {
            opts = opts.fail_safe(w);
        }
        if let Some(n) = e.negative_ttl {
            opts = opts.negative_ttl(n);
        }
        Repository {
            c3,
            pool,
            opts,
            ttl,
            _entity: PhantomData,
        }
    }

    /// Replaces the load options (timeouts, eager refresh, cluster lock…)
    /// used by [`find`](Self::find).
    #[must_use]
    pub fn load_options(mut self, opts: LoadOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The cache key of `key` (see [`Cached::cache_key`]).
    #[must_use]
    pub fn cache_key(key: &T::Key) -> String {
        T::cache_key(key)
    }

    /// The row with `key`, as an `Arc` shared with L1 (no copy on a hit).
    ///
    /// # Concurrent calls on the same key
    ///
    /// One `SELECT` per node however many callers miss at once.
    ///
    /// # Errors
    ///
    /// [`Error::Cache`]: an invalid key, or the `SELECT` failed (or its
    /// breaker is open) with no value within the fail-safe window.
    pub async fn find_arc(&self, key: &T::Key) -> Result<Option<Arc<T>>, Error> {
        let ck = T::cache_key(key);
        let (pool, key) = (self.pool.clone(), key.clone());
        let found = self
            .c3
            .get_or_load(&ck, &self.opts, move || async move {
                let row = T::bind_key(sqlx::query(T::ENTITY.select_by_key), &key)
                    .fetch_optional(&pool)
                    .await?;
                row.map(|r| T::from_row(&r)).transpose()
            })
            .await?;
        Ok(found)
    }

    /// The rows with `keys`, in order (`None` where there is no such row).
    /// Cached rows come from L1/L2; the others from **one** `SELECT`, and
    /// are cached unless a write invalidated them meanwhile.
    ///
    /// # Errors
    ///
    /// An invalid key; [`Error::Database`] if the `SELECT` fails.
    pub async fn find_many(&self, keys: &[T::Key]) -> Result<Vec<Option<T>>, Error>
    where
        T: Clone,
    {
        let cks: Vec<String> = keys.iter().map(T::cache_key).collect();
        let refs: Vec<&str> = cks.iter().map(String::as_str).collect();
        for k in &refs {
            self.c3.validate_key(k)?;
        }
        let mut out: Vec<Option<Arc<T>>> = match self.c3.get_many::<T>(&refs).await {
            Ok(v) => v,
            Err(e) => {
                // L2 trouble is not the caller's: the database answers instead.
                tracing::debug!(target: "c3::sqlx", error = %e, "cache read failed; querying the table");
                vec![None; keys.len()]
            }
        };
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out.into_iter().map(|v| v.map(|v| (*v).clone())).collect());
        }
        let wanted: Vec<T::Key> = missing.iter().map(|&i| keys[i].clone()).collect();
        // The fence comes before the SELECT: a save committed after it (on
        // any node, heard of here or not) keeps its row's older version out
        // of the cache.
        let missing_keys: Vec<&str> = missing.iter().map(|&i| refs[i]).collect();
        let fill = self.c3.begin_fill(&missing_keys).await?;
        let rows = T::bind_keys(sqlx::query(T::ENTITY.select_by_keys), &wanted)
            .fetch_all(&self.pool)
            .await?;
        let mut loaded: HashMap<String, T> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let v = T::from_row(r)?;
            loaded.insert(T::cache_key(&v.key()), v);
        }
        let found: Vec<(&str, T)> = missing
            .iter()
            .filter_map(|&i| loaded.get(&cks[i]).map(|v| (refs[i], v.clone())))
            .collect();
        if let Err(e) = fill.store_many(&found, self.ttl).await {
            tracing::debug!(target: "c3::sqlx", error = %e, "could not cache loaded rows");
        }
        for &i in &missing {
            out[i] = loaded.get(&cks[i]).cloned().map(Arc::new);
        }
        Ok(out.into_iter().map(|v| v.map(|v| (*v).clone())).collect())
    }

    /// [`find_arc`](Self::find_arc), cloned out of the cache.
    ///
    /// # Errors
    ///
    /// As for [`find_arc`](Self::find_arc).
    pub async fn find(&self, key: &T::Key) -> Result<Option<T>, Error>
    where
        T: Clone,
    {
        Ok(self.find_arc(key).await?.map(|v| (*v).clone()))
    }

    /// A lookup by another column: `query` finds the row (e.g. `SELECT …
    /// WHERE email = $1`) on a miss. The cache remembers which key the value
    /// led to, and every hit is checked against the row itself (whose cache
    /// entry is coherent), so a changed column is never answered from an old
    /// mapping.
    ///
    /// # Errors
    ///
    /// An invalid key; whatever `query` or [`find_arc`](Self::find_arc) fail with.
    pub async fn find_by<V, F, Fut>(
        &self,
        column: &str,
        value: &V,
        query: F,
    ) -> Result<Option<T>, Error>
    where
        T: Clone,
        T::Key: Serialize + DeserializeOwned,
        V: Display + ?Sized,
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
    {
        let text = value.to_string();
        let sk = format!(
            "{}:by:{}:{}",
            T::ENTITY.namespace,
            key_part(column),
            key_part(&text)
        );
        self.c3.validate_key(&sk)?;
        if let Ok(Some(key)) = self.c3.get::<T::Key>(&sk).await {
            if let Some(v) = self.find_arc(&key).await?
                && column_matches(&*v, column, &text)
            {
                return Ok(Some((*v).clone()));
            }
            // The row changed or went: the mapping is stale.
            let _ = self.c3.delete(&sk).await;
        }
        // A mapping read from the table is a fill: fenced before the query.
        let fill = self.c3.begin_fill(&[&sk]).await?;
        let found = query(self.pool.clone()).await?;
        if let Some(v) = &found {
            let ck = T::cache_key(&v.key());
            // Tagged with the row's key, so writes to the row drop it too.
            if let Err(e) = fill.store(&sk, &v.key(), self.ttl, &[&ck]).await {
                tracing::debug!(target: "c3::sqlx", error = %e, "could not cache a secondary key");
            }
        }
        Ok(found)
    }

    /// Inserts or updates the row and invalidates its cache entry (on every
    /// node) in one transaction: both happen, or neither.
    ///
    /// # Errors
    ///
    /// An invalid key; [`Error::Database`].
    pub async fn save(&self, value: &T) -> Result<(), Error> {
        let ck = T::cache_key(&value.key());
        self.c3.validate_key(&ck)?;
        let mut tx = self.pool.begin_with(BEGIN).await?;
        value
            .bind_save(sqlx::query(T::ENTITY.upsert))
            .execute(&mut *tx)
            .await?;
        let done = invalidate(&mut *tx, &self.c3, &[&ck], &[&ck]).await?;
        tx.commit().await?;
        done.apply_locally(&self.c3);
        Ok(())
    }

    /// Deletes the row and invalidates its cache entry in one transaction.
    /// Returns whether a row was deleted.
    ///
    /// # Errors
    ///
    /// An invalid key; [`Error::Database`].
    pub async fn delete(&self, key: &T::Key) -> Result<bool, Error> {
        let ck = T::cache_key(key);
        self.c3.validate_key(&ck)?;
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let n = T::bind_key(sqlx::query(T::ENTITY.delete), key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let done = invalidate(&mut *tx, &self.c3, &[&ck], &[&ck]).await?;
        tx.commit().await?;
        done.apply_locally(&self.c3);
        Ok(n > 0)
    }

    /// SQL that installs a trigger on the entity's table which invalidates a
    /// row's cache entry on every INSERT, UPDATE and DELETE, from any client.
    /// Idempotent; for migrations. [`install_trigger`](Self::install_trigger) runs it.
    #[must_use]
    pub fn trigger_sql(&self) -> String {
        trigger::install_sql(&T::ENTITY, self.c3.sql_names())
    }

    /// Installs (or replaces) the invalidation trigger (see
    /// [`trigger_sql`](Self::trigger_sql)). Idempotent, and safe when every
    /// replica calls it at start: one transaction under an advisory lock.
    ///
    /// # Errors
    ///
    /// [`Error::Database`], e.g. when the table does not exist.
    pub async fn install_trigger(&self) -> Result<(), Error> {
        // Serialised: concurrent CREATE OR REPLACE FUNCTION can fail with
        // "tuple concurrently updated" when several nodes start together.
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtext('c3:trigger'));\n{}",
            self.trigger_sql()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes the trigger and its function. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub async fn drop_trigger(&self) -> Result<(), Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(trigger::drop_sql(&T::ENTITY)))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Whether the row's serialised `column` still reads `text`. A column the
/// serialised form does not show cannot be checked, so it never matches and
/// the lookup goes to the database.
fn column_matches<T: Serialize>(row: &T, column: &str, text: &str) -> bool {
    match serde_json::to_value(row)
        .ok()
        .and_then(|v| v.get(column).cloned())
    {
        Some(serde_json::Value::String(s)) => s == text,
        Some(serde_json::Value::Null) | None => false,
        Some(other) => serde_json::to_string(&other).is_ok_and(|s| s == text),
    }
}
