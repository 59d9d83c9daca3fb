//! The PostgreSQL L2's schema: created or upgraded at start-up (`migrate`),
//! or checked without changing anything (`verify`, for `migrate(false)`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::types::Type;

use super::sql::{ADVISORY_XACT_LOCK, Announce, Q, announce_function};
use super::store::PgStore;
use crate::error::{Error, Result};
use crate::ident::qualified;
use crate::store::Durability;
use crate::store::bounded;

/// Serialises schema creation across nodes that start at the same moment;
/// `CREATE … IF NOT EXISTS` alone races on the catalog's unique indexes.
const MIGRATE_LOCK: &str = "c3:migrate";

impl PgStore {
    /// Checks, without changing anything, that every object c3 needs exists
    /// with the expected shape; returns what is missing or outdated.
    pub(crate) async fn verify(&self, schema: &str, table: &str) -> Result<Vec<String>> {
        let s = self.session("verify").await?;
        let q = |n: &str| qualified(schema, n);
        let t = q(table);
        let mut missing = Vec::new();
        let relations = [
            (t.clone(), "table"),
            (q(&format!("{table}_tags")), "table"),
            (q(&format!("{table}_deleted")), "table"),
            (q(&format!("{table}_deleted_tags")), "table"),
            (q(&format!("{table}_version_seq")), "sequence"),
        ];
        let functions = [
            format!("{}()", q(&format!("{table}_bump_version"))),
            format!(
                "{}(text, text[], text[])",
                q(&format!("{table}_invalidate"))
            ),
            format!("{}(text, text)", announce_function(schema, table)),
        ];
        let pg = |e| Error::postgres("verify", e);
        let check = Q::new(
            "SELECT (SELECT array_agg(r) FROM unnest($1::text[]) AS r WHERE to_regclass(r) IS NULL),              (SELECT array_agg(f) FROM unnest($2::text[]) AS f WHERE to_regprocedure(f) IS NULL),              (SELECT array_agg(c) FROM unnest(ARRAY['key', 'value', 'encoding', 'version', 'expires_at',                 'stale_until', 'updated_at', 'xid']) AS c WHERE to_regclass($3) IS NOT NULL AND NOT EXISTS                 (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($3) AND attname = c AND NOT attisdropped)),              EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($3) AND tgname = $4),              coalesce((SELECT prosrc LIKE '%pg_current_xact_id%' FROM pg_proc WHERE oid = to_regprocedure($5)), true)",
            &[
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
            ],
        );
        let rel_names: Vec<&str> = relations.iter().map(|(n, _)| n.as_str()).collect();
        let trigger = format!("{table}_bump_version");
        let row = s
            .one(
                &check,
                &[&rel_names, &functions.to_vec(), &t, &trigger, &functions[0]],
                "verify",
            )
            .await?;
        let rels: Option<Vec<String>> = row.try_get(0).map_err(pg)?;
        for r in rels.unwrap_or_default() {
            let kind = relations
                .iter()
                .find(|(n, _)| *n == r)
                .map_or("table", |(_, k)| *k);
            missing.push(format!("{kind} {r}"));
        }
        let funcs: Option<Vec<String>> = row.try_get(1).map_err(pg)?;
        missing.extend(
            funcs
                .unwrap_or_default()
                .into_iter()
                .map(|f| format!("function {f}")),
        );
        let cols: Option<Vec<String>> = row.try_get(2).map_err(pg)?;
        missing.extend(
            cols.unwrap_or_default()
                .into_iter()
                .map(|c| format!("column {t}.{c}")),
        );
        let has_trigger: bool = row.try_get(3).map_err(pg)?;
        if !has_trigger {
            missing.push(format!("trigger {trigger} on {t}"));
        }
        let current: bool = row.try_get(4).map_err(pg)?;
        if !current {
            missing.push(format!(
                "function {} is from an older c3 (it does not set xid)",
                functions[0]
            ));
        }
        missing.extend(self.wrong_persistence(&s, &rel_names[..4]).await?);
        s.done();
        Ok(missing)
    }

    /// Persistence: an unlogged table where `Logged` was asked would lose
    /// every entry in a crash the node does not expect; the reverse pays
    /// for durability it was told not to.
    async fn wrong_persistence(
        &self,
        s: &super::session::Session,
        tables: &[&str],
    ) -> Result<Vec<String>> {
        let (want, set) = match self.durability {
            Durability::Logged => ("p", "LOGGED"),
            Durability::Unlogged => ("u", "UNLOGGED"),
        };
        let persistence = Q::new(
            "SELECT coalesce(array_agg(r), '{}') FROM unnest($1::text[]) AS r \
             WHERE (SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass(r)) <> $2",
            &[Type::TEXT_ARRAY, Type::TEXT],
        );
        let wrong: Vec<String> = s
            .one(&persistence, &[&tables, &want], "verify")
            .await?
            .try_get(0)
            .map_err(|e| Error::postgres("verify", e))?;
        Ok(wrong
            .into_iter()
            .map(|r| format!("ALTER TABLE {r} SET {set} (the durability asked for)"))
            .collect())
    }

    /// The transport the table announces through, as its announce
    /// function's body says (`None`: no such function yet).
    pub(crate) async fn announce(&self, schema: &str, table: &str) -> Result<Option<Announce>> {
        let s = self.session("verify").await?;
        let q = Q::new(
            "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1)",
            &[Type::TEXT],
        );
        let f = format!("{}(text, text)", announce_function(schema, table));
        let rows = s
            .rows(&q, &[&f])
            .await
            .map_err(|e| Error::postgres("verify", e))?;
        s.done();
        Ok(rows
            .first()
            .and_then(|r| r.try_get::<_, String>(0).ok())
            .map(|body| Announce::of_body(&body)))
    }

    /// Creates or upgrades the schema; safe to run from many nodes at once.
    pub(crate) async fn migrate(&self) -> Result<()> {
        let pg = |e| Error::postgres("migrate", e);
        let s = self.session("migrate").await?;
        // `IF NOT EXISTS` on objects that exist says so in a NOTICE each;
        // an idempotent migration at every start should not log eight lines.
        s.batch_execute(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL client_min_messages = warning",
        )
        .await
        .map_err(pg)?;
        s.rows(&ADVISORY_XACT_LOCK, &[&MIGRATE_LOCK])
            .await
            .map_err(pg)?;
        s.batch_execute(&self.sql.ddl).await.map_err(pg)?;
        s.batch_execute("COMMIT").await.map_err(pg)?;
        s.done();
        Ok(())
    }
}

/// Start-up's schema step: migrate, or — with `migrate(false)` — check.
/// A node that started degraded retries it until PostgreSQL answers; until
/// then L2 calls fail and L1 stays off (the listener has not connected
/// either), so nothing can be served stale.
pub(crate) struct SchemaStep {
    pub(crate) migrate: bool,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) timeout: Duration,
    pub(crate) backoff: (Duration, Duration),
    /// The transport this node is configured for; the table must announce
    /// through the same.
    pub(crate) announce: Announce,
}

impl SchemaStep {
    pub(crate) async fn once(&self, pg: &PgStore) -> Result<()> {
        self.schema_ready(pg).await?;
        let found = bounded(
            "verify",
            self.timeout,
            pg.announce(&self.schema, &self.table),
        )
        .await?;
        match found {
            Some(found) if found != self.announce => Err(Error::config(format!(
                "the cache table {}.{} announces writes through {}, but this node is configured \
                 for {}: every node of a table must use one transport. Switching is a fleet-wide \
                 step (README, \"More than a few dozen replicas\")",
                self.schema,
                self.table,
                found.as_str(),
                self.announce.as_str()
            ))),
            _ => Ok(()),
        }
    }

    async fn schema_ready(&self, pg: &PgStore) -> Result<()> {
        if self.migrate {
            return bounded("migrate", self.timeout, pg.migrate()).await;
        }
        let missing = bounded("verify", self.timeout, pg.verify(&self.schema, &self.table)).await?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::config(format!(
            "migrate(false) (C3_MIGRATE=false): the L2 schema is incomplete; missing: {}. \
             Apply C3Builder::migration_sql (or `cargo run --bin c3-sql`) with a role that may run DDL",
            missing.join(", ")
        )))
    }

    pub(crate) async fn retry(self, pg: Arc<PgStore>, mut shutdown: watch::Receiver<bool>) {
        let mut delay = self.backoff.0;
        loop {
            match self.once(&pg).await {
                Ok(()) => {
                    tracing::info!(target: "c3::start", "PostgreSQL answers; the L2 schema is ready");
                    return;
                }
                Err(e) => {
                    tracing::debug!(target: "c3::start", error = %e, "L2 schema not ready yet")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(self.backoff.1);
        }
    }
}
