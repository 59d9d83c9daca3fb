//! The PostgreSQL L2's operations: every write is a single transaction that
//! changes the table *and* calls `pg_notify`, so the invalidation is
//! published exactly when — and only if — the write commits. PostgreSQL
//! delivers notifications in commit order.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;

use super::session::{Session, begin_sql, commit_sql, first, millis, time_left};
use super::sql::{ADVISORY_XACT_LOCK, Announce, SHORT_KEY, Sql, TRY_ADVISORY_XACT_LOCK};
use crate::clock::unix_micros;
use crate::entry::{Row, WriteItem};
use crate::error::{Error, Result};
use crate::store::Durability;
use crate::store::{Call, Fence, HeldLock, LoadLock, Store};

/// The oldest fence a fill may be stored through: half the deletion
/// records' one-hour retention, so every deletion after the fence is still
/// recorded when the fill checks (a deleting transaction may stay open up
/// to the other half).
const FENCE_MAX_AGE_US: i64 = 30 * 60 * 1_000_000;

/// How long a fill waits for a deletion of its keys or tags in progress
/// before giving up (and storing nothing).
const FILL_LOCK_WAIT: Duration = Duration::from_millis(100);

/// The columns of a multi-row write, as the arrays `unnest` takes.
struct Columns<'a> {
    keys: Vec<&'a str>,
    values: Vec<&'a [u8]>,
    encodings: Vec<&'static str>,
    fresh: Vec<Option<SystemTime>>,
    stale: Vec<Option<SystemTime>>,
}

impl<'a> Columns<'a> {
    fn of(items: &'a [WriteItem]) -> Self {
        Columns {
            keys: items.iter().map(|i| i.key.as_str()).collect(),
            values: items.iter().map(|i| i.value.as_slice()).collect(),
            encodings: items.iter().map(|i| i.encoding).collect(),
            fresh: items.iter().map(|i| i.fresh_until).collect(),
            stale: items.iter().map(|i| i.stale_until).collect(),
        }
    }
}

/// The items' (tag, key) pairs as two arrays, for `unnest($tags, $keys)`.
fn tag_pairs(items: &[WriteItem]) -> (Vec<&str>, Vec<&str>) {
    items
        .iter()
        .flat_map(|i| i.tags.iter().map(move |t| (t.as_str(), i.key.as_str())))
        .unzip()
}

/// Each item's version, from `RETURNING key, version` rows.
fn versions_of(
    items: &[WriteItem],
    rows: &[tokio_postgres::Row],
    op: &'static str,
) -> Result<Vec<u64>> {
    let mut by_key = std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        let k: String = r.try_get(0).map_err(|e| Error::postgres(op, e))?;
        let v: i64 = r.try_get(1).map_err(|e| Error::postgres(op, e))?;
        by_key.insert(k, u64::try_from(v).unwrap_or(0));
    }
    Ok(items
        .iter()
        .map(|i| by_key.get(&i.key).copied().unwrap_or(0))
        .collect())
}

pub(crate) struct PgStore {
    pool: Pool,
    pub(crate) sql: Sql,
    channel: String,
    sweep_lock: String,
    load_lock: String,
    /// Whether c3 built the pool (then `shutdown` closes it) or the
    /// application lent it (then it stays open for the application).
    owns_pool: bool,
    /// The pool's `sslmode`, when c3 built it: TLS failures name it.
    ssl_mode: Option<crate::tls::SslMode>,
    /// Unnamed statements instead of cached prepared ones (see [`Q`]).
    unnamed: bool,
    /// How the tables are stored; `verify` checks it.
    pub(crate) durability: Durability,
    /// The oldest fence a fill may be stored through, µs (see
    /// [`FENCE_MAX_AGE_US`]; tests may shorten it).
    fence_max_age_us: i64,
}

/// Settings the pool is built with.
pub(crate) struct PoolSettings {
    pub(crate) max_size: usize,
    pub(crate) wait_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

pub(crate) fn build_pool(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    s: &PoolSettings,
) -> Result<Pool> {
    let mgr = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(s.max_size)
        .wait_timeout(Some(s.wait_timeout))
        .create_timeout(Some(s.connect_timeout))
        .recycle_timeout(Some(s.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::config(format!("could not build the connection pool: {e}")))
}

/// A held cross-node load lock: an open transaction on a pooled connection.
///
/// Released by [`release`](Self::release) (commit). If dropped instead (the
/// load was cancelled or panicked) its session closes the connection, which
/// ends the transaction and frees the lock — it must never go back to the
/// pool mid-transaction.
struct SessionLock {
    session: Session,
}

impl HeldLock for SessionLock {
    fn release(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if self.session.batch_execute("COMMIT").await.is_ok() {
                self.session.done();
            }
        })
    }
}

fn time_us(t: Option<SystemTime>) -> Option<u64> {
    t.map(unix_micros)
}

fn row_from(r: &tokio_postgres::Row, offset: usize) -> Result<Row> {
    let get = |i: usize| i + offset;
    let version: i64 = r
        .try_get(get(2))
        .map_err(|e| Error::postgres("decode row", e))?;
    Ok(Row {
        value: r
            .try_get(get(0))
            .map_err(|e| Error::postgres("decode row", e))?,
        encoding: r
            .try_get(get(1))
            .map_err(|e| Error::postgres("decode row", e))?,
        version: u64::try_from(version).unwrap_or(0),
        fresh_until_us: time_us(
            r.try_get(get(3))
                .map_err(|e| Error::postgres("decode row", e))?,
        ),
        stale_until_us: time_us(
            r.try_get(get(4))
                .map_err(|e| Error::postgres("decode row", e))?,
        ),
    })
}

impl PgStore {
    pub(crate) fn new(
        pool: Pool,
        ssl_mode: Option<crate::tls::SslMode>,
        unnamed: bool,
        names: (&str, &str, &str),
        (durability, announce): (Durability, Announce),
        fence_max_age: Duration,
    ) -> Self {
        let (schema, table, channel) = names;
        PgStore {
            fence_max_age_us: i64::try_from(fence_max_age.as_micros()).unwrap_or(FENCE_MAX_AGE_US),
            pool,
            owns_pool: ssl_mode.is_some(),
            ssl_mode,
            unnamed,
            sql: Sql::new(schema, table, durability, announce),
            durability,
            channel: channel.to_owned(),
            sweep_lock: format!("c3:sweep:{schema}.{table}"),
            load_lock: format!("c3:load:{schema}.{table}:"),
        }
    }

    /// Closes the pool if c3 built it: idle connections end now, busy ones
    /// when they are returned.
    pub(crate) fn close(&self) {
        if self.owns_pool {
            self.pool.close();
        }
    }

    /// A pooled connection for one operation (see [`Session`]).
    pub(crate) async fn session(&self, op: &'static str) -> Result<Session> {
        let conn = self.pool.get().await.map_err(|e| {
            let tls = self
                .ssl_mode
                .and_then(|mode| crate::tls::describe("the pool connection", mode, &e));
            let refused = matches!(
                &e,
                deadpool_postgres::PoolError::Backend(pg)
                    if pg.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS)
            );
            match tls {
                Some(detail) => Error::tls(detail),
                None if refused => Error::config(format!(
                    "PostgreSQL refused a connection for `{op}`: too many clients (max_connections). \
                     Each c3 node holds up to pool_size + 1 connections (the pool, default 4, and its \
                     LISTEN connection); count every replica and every application pool against \
                     max_connections, or put the pool behind PgBouncer ({e})"
                )),
                None => Error::pool(op, e),
            }
        })?;
        Ok(Session::new(conn, self.unnamed))
    }

    /// The last round trip of a transaction: its notifications (if any)
    /// and its COMMIT, bounded by the time left (see [`commit_sql`]).
    async fn notify_and_commit(
        &self,
        s: &Session,
        payloads: &[String],
        op: &'static str,
    ) -> Result<()> {
        let pg = |e| Error::postgres(op, e);
        let commit = commit_sql(op)?;
        if payloads.is_empty() {
            return s.batch_execute(&commit).await.map_err(pg);
        }
        let r = s.ready(&self.sql.notify).await.map_err(pg)?;
        let params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads];
        let (n, c) = tokio::join!(biased; s.run(&r, &params), s.batch_execute(&commit));
        n.map_err(pg)?;
        c.map_err(pg)
    }

    pub(crate) async fn get(&self, key: &str, now: SystemTime) -> Result<Option<Row>> {
        let s = self.session("get").await?;
        let rows = s
            .rows(&self.sql.get, &[&key, &now])
            .await
            .map_err(|e| Error::postgres("get", e))?;
        s.done();
        rows.first().map(|r| row_from(r, 0)).transpose()
    }

    pub(crate) async fn get_many(
        &self,
        keys: &[&str],
        now: SystemTime,
    ) -> Result<Vec<(String, Row)>> {
        let s = self.session("get_many").await?;
        let rows = s
            .rows(&self.sql.get_many, &[&keys, &now])
            .await
            .map_err(|e| Error::postgres("get_many", e))?;
        s.done();
        rows.iter()
            .map(|r| {
                let key: String = r.try_get(0).map_err(|e| Error::postgres("get_many", e))?;
                Ok((key, row_from(r, 1)?))
            })
            .collect()
    }

    pub(crate) async fn set(&self, items: &[WriteItem], header: &str) -> Result<Vec<u64>> {
        if let [item] = items
            && item.tags.is_empty()
            && !item.push
        {
            return self.set_one(item, header).await.map(|v| vec![v]);
        }
        // Lines of at most SHORT_KEY + 21 bytes fill each 7000-byte group to
        // under 7000 + SHORT_KEY + 21 bytes, which with the header stays
        // under the 8000-byte payload limit.
        if items
            .iter()
            .all(|i| i.tags.is_empty() && !i.push && i.key.len() <= SHORT_KEY)
            && header.len() < 500
        {
            return self.set_many_notify(items, header).await;
        }
        let op = "set_many";
        let pg = |e| Error::postgres(op, e);
        let s = self.session(op).await?;
        let begin = begin_sql(op, None)?;
        let upsert = s.ready(&self.sql.set_many).await.map_err(pg)?;
        let c = Columns::of(items);
        let params: [&(dyn ToSql + Sync); 5] =
            [&c.keys, &c.values, &c.encodings, &c.fresh, &c.stale];
        let (b, rows) = tokio::join!(biased; s.batch_execute(&begin), s.run(&upsert, &params));
        b.map_err(pg)?;
        let versions = versions_of(items, &rows.map_err(pg)?, op)?;
        if items.iter().any(|i| !i.tags.is_empty()) {
            // A write replaces the entry's tags along with its value.
            let (tags, tag_keys) = tag_pairs(items);
            let (replace, insert) = (
                s.ready(&self.sql.tags_replace).await.map_err(pg)?,
                s.ready(&self.sql.tags_insert).await.map_err(pg)?,
            );
            let (by_key, pairs): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 2]) =
                ([&c.keys], [&tags, &tag_keys]);
            let (r, i) = tokio::join!(
                biased;
                s.run(&replace, &by_key),
                s.run(&insert, &pairs),
            );
            r.map_err(pg)?;
            i.map_err(pg)?;
        }
        let payloads = crate::protocol::write_payloads(header, items, &versions);
        self.notify_and_commit(&s, &payloads, op).await?;
        s.done();
        Ok(versions)
    }

    async fn set_many_notify(&self, items: &[WriteItem], header: &str) -> Result<Vec<u64>> {
        let s = self.session("set_many").await?;
        let c = Columns::of(items);
        let rows = s
            .one_trip(
                &self.sql.set_many_notify,
                &[
                    &c.keys,
                    &c.values,
                    &c.encodings,
                    &c.fresh,
                    &c.stale,
                    &self.channel,
                    &header,
                ],
                "set_many",
            )
            .await?;
        s.done();
        versions_of(items, &rows, "set_many")
    }

    /// Reads `key` for a load: the row if live, and the fence taken with
    /// the read (its snapshot), which the loaded value is stored through.
    pub(crate) async fn get_for_load(
        &self,
        key: &str,
        now: SystemTime,
    ) -> Result<(Option<Row>, Fence)> {
        let s = self.session("get").await?;
        let pg = |e| Error::postgres("get", e);
        let r = s.one(&self.sql.get_for_load, &[&key], "get").await?;
        s.done();
        let fence = Fence {
            snapshot: r.try_get(0).map_err(pg)?,
            started: r.try_get(6).map_err(pg)?,
            taken_us: r.try_get(7).map_err(pg)?,
        };
        let version: Option<i64> = r.try_get(3).map_err(pg)?;
        if version.is_none() {
            return Ok((None, fence));
        }
        let row = row_from(&r, 1)?;
        let now_us = crate::clock::unix_micros(now);
        let live = row
            .stale_until_us
            .or(row.fresh_until_us)
            .is_none_or(|until| until > now_us);
        Ok((live.then_some(row), fence))
    }

    /// Takes a fence: the snapshot of the moment before a source is read.
    pub(crate) async fn fence(&self) -> Result<Fence> {
        let s = self.session("fence").await?;
        let r = s.one(&self.sql.fence, &[], "fence").await?;
        s.done();
        Ok(Fence {
            snapshot: r.try_get(0).map_err(|e| Error::postgres("fence", e))?,
            started: r.try_get(1).map_err(|e| Error::postgres("fence", e))?,
            taken_us: r.try_get(2).map_err(|e| Error::postgres("fence", e))?,
        })
    }

    /// Stores fills through `fence` (see `Sql::fill`); one slot per item:
    /// its new version, or `None` where the fence refused it.
    ///
    /// Three round trips: the bounds with statements 1 and 2 (the records
    /// and their share locks, waiting at most [`FILL_LOCK_WAIT`] for a
    /// deletion in progress); statement 3 (the fenced upsert, which takes
    /// the rows' locks — as late as the argument allows); the notification
    /// with the COMMIT. Nothing in it waits longer than the bounds of
    /// [`begin_sql`], so a fill whose node froze mid-transaction holds its
    /// locks at most a third of its caller's time.
    pub(crate) async fn fill(
        &self,
        items: &[WriteItem],
        header: &str,
        fence: &Fence,
    ) -> Result<Vec<Option<u64>>> {
        let s = self.session("fill").await?;
        let pg = |e| Error::postgres("fill", e);
        let upsert = s.ready(&self.sql.fill).await.map_err(pg)?;
        if !self.fence_holds(&s, items, fence).await? {
            // Refused: end the transaction (its records stay as they were).
            s.batch_execute("ROLLBACK").await.map_err(pg)?;
            s.done();
            return Ok(vec![None; items.len()]);
        }
        let c = Columns::of(items);
        let (tags, tag_keys) = tag_pairs(items);
        // The short wait was for deletions in progress only; the upsert may
        // wait for a writer of the same row as any write does, within the
        // transaction's bound.
        let relock = format!(
            "SET LOCAL lock_timeout = '{}ms'",
            millis(time_left("fill")? / 3)
        );
        let params: [&(dyn ToSql + Sync); 8] = [
            &c.keys,
            &c.values,
            &c.encodings,
            &c.fresh,
            &c.stale,
            &fence.snapshot,
            &tags,
            &tag_keys,
        ];
        let (l, rows) = tokio::join!(biased; s.batch_execute(&relock), s.run(&upsert, &params));
        l.map_err(pg)?;
        let rows = rows.map_err(pg)?;
        let mut by_key = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let k: String = r.try_get(0).map_err(pg)?;
            let v: i64 = r.try_get(1).map_err(pg)?;
            by_key.insert(k, u64::try_from(v).unwrap_or(0));
        }
        let stored: Vec<Option<u64>> = items.iter().map(|i| by_key.get(&i.key).copied()).collect();
        let (kept, versions): (Vec<WriteItem>, Vec<u64>) = items
            .iter()
            .zip(&stored)
            .filter_map(|(i, v)| v.map(|v| (i.clone(), v)))
            .unzip();
        let payloads = if kept.is_empty() {
            Vec::new()
        } else {
            crate::protocol::write_payloads(header, &kept, &versions)
        };
        self.notify_and_commit(&s, &payloads, "fill").await?;
        s.done();
        Ok(stored)
    }

    /// A fill's first step: begin, then lock the deletion records of its
    /// keys and tags (a deletion in progress refuses the fill; one starting
    /// later waits for it) and check the fence still holds. `false`: store
    /// nothing (the transaction is still open).
    async fn fence_holds(&self, s: &Session, items: &[WriteItem], fence: &Fence) -> Result<bool> {
        let pg = |e| Error::postgres("fill", e);
        let mut keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        let mut all_tags: Vec<&str> = items
            .iter()
            .flat_map(|i| i.tags.iter().map(String::as_str))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        all_tags.sort_unstable();
        all_tags.dedup();
        let begin = begin_sql("fill", Some(FILL_LOCK_WAIT))?;
        let (records, lock) = (
            s.ready(&self.sql.fill_records).await.map_err(pg)?,
            s.ready(&self.sql.fill_lock).await.map_err(pg)?,
        );
        // The deletion records, then their share locks, in two statements
        // (see `Sql::fill_lock` for why two), pipelined behind the bounds:
        // one round trip. The fill statement after them takes a newer
        // snapshot still, so it sees every deletion that committed while
        // they waited.
        let params: [&(dyn ToSql + Sync); 2] = [&keys, &all_tags];
        let (b, records, locked) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            s.run(&records, &params),
            s.run(&lock, &params),
        );
        b.map_err(pg)?;
        let (locked, started, now_us) = match records.and(locked) {
            Ok(rows) => rows.first().map_or((0, None, None), |r| {
                (
                    r.try_get::<_, i64>(0).unwrap_or(0),
                    r.try_get::<_, Option<String>>(1).ok().flatten(),
                    r.try_get::<_, i64>(2).ok(),
                )
            }),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                // A deletion of one of these keys or tags is in progress:
                // it may be of data this fill read before. Store nothing.
                return Ok(false);
            }
            Err(e) => return Err(pg(e)),
        };
        if usize::try_from(locked).unwrap_or(0) < keys.len() + all_tags.len() {
            // A record was swept between the two statements: a deletion
            // starting now would not wait for this fill. Store nothing.
            return Ok(false);
        }
        if let (Some(taken), Some(now)) = (fence.taken_us, now_us)
            && now.saturating_sub(taken) > self.fence_max_age_us
        {
            // The source was read so long ago that a deletion after it may
            // have been recorded and swept since: nothing proves it fresh.
            return Ok(false);
        }
        if fence.started.is_some() && started != fence.started {
            // The server restarted since the fence: after a crash, unlogged
            // tables come back empty, deletion records included, so a write
            // that committed after the fence may have left no trace. Store
            // nothing.
            return Ok(false);
        }
        Ok(true)
    }

    async fn set_one(&self, item: &WriteItem, header: &str) -> Result<u64> {
        let s = self.session("set").await?;
        let params: [&(dyn ToSql + Sync); 7] = [
            &item.key,
            &item.value,
            &item.encoding,
            &item.fresh_until,
            &item.stale_until,
            &self.channel,
            &header,
        ];
        let rows = s.one_trip(&self.sql.set_one, &params, "set").await?;
        s.done();
        let v: i64 = first(rows, "set")?
            .try_get(0)
            .map_err(|e| Error::postgres("set", e))?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// Deletes `keys`: records them (a statement of its own, so it waits for
    /// fills of them in progress), deletes them and draws the version in a
    /// later one — the bounds and both pipelined — then notifies and
    /// commits.
    pub(crate) async fn delete(&self, keys: &[&str], header: &str) -> Result<u64> {
        let op = "delete";
        let pg = |e| Error::postgres(op, e);
        let s = self.session(op).await?;
        let begin = begin_sql(op, None)?;
        let (record, delete) = (
            s.ready(&self.sql.record_deletes).await.map_err(pg)?,
            s.ready(&self.sql.delete).await.map_err(pg)?,
        );
        let no_tags: &[&str] = &[];
        let (both, just_keys): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 1]) =
            ([&keys, &no_tags], [&keys]);
        let (b, r, d) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            s.run(&record, &both),
            s.run(&delete, &just_keys),
        );
        b.map_err(pg)?;
        r.map_err(pg)?;
        let v: i64 = first(d.map_err(pg)?, op)?.try_get(0).map_err(pg)?;
        let version = u64::try_from(v).unwrap_or(0);
        let payloads = crate::protocol::pack(header, keys.iter().map(|k| format!("{version} {k}")));
        self.notify_and_commit(&s, &payloads, op).await?;
        s.done();
        Ok(version)
    }

    /// Deletes every entry tagged `tag`, publishing one version for all of
    /// them; returns the keys deleted and that version.
    ///
    /// In this order, each a statement of its own (pipelined): the tag's
    /// record (waits for fills carrying the tag), the records of the keys
    /// tagged now (waits for fills of those keys), then the DELETE, which
    /// records every key it removes from its own `RETURNING` — a key a
    /// writer tagged after the second statement is deleted *and* recorded.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        header: &str,
    ) -> Result<(Vec<String>, u64)> {
        let op = "invalidate_tag";
        let pg = |e| Error::postgres(op, e);
        let s = self.session(op).await?;
        let begin = begin_sql(op, None)?;
        let (record_tag, record_keys, delete) = (
            s.ready(&self.sql.record_tag_deletes).await.map_err(pg)?,
            s.ready(&self.sql.record_deletes).await.map_err(pg)?,
            s.ready(&self.sql.invalidate_tag).await.map_err(pg)?,
        );
        let (tags, no_keys): (&[&str], &[&str]) = (&[tag], &[]);
        let p_tag: [&(dyn ToSql + Sync); 1] = [&tags];
        let p_keys: [&(dyn ToSql + Sync); 2] = [&no_keys, &tags];
        let p_delete: [&(dyn ToSql + Sync); 1] = [&tag];
        let (b, rt, rk, d) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            s.run(&record_tag, &p_tag),
            s.run(&record_keys, &p_keys),
            s.run(&delete, &p_delete),
        );
        b.map_err(pg)?;
        rt.map_err(pg)?;
        rk.map_err(pg)?;
        let row = first(d.map_err(pg)?, op)?;
        let keys: Vec<String> = row.try_get(0).map_err(pg)?;
        let v: i64 = row.try_get(1).map_err(pg)?;
        let version = u64::try_from(v).unwrap_or(0);
        let payloads = crate::protocol::pack(header, keys.iter().map(|k| format!("{version} {k}")));
        self.notify_and_commit(&s, &payloads, op).await?;
        s.done();
        Ok((keys, version))
    }

    /// Records the keys' deletions (waiting for fills of them in progress,
    /// making later ones wait), then notifies and commits — a bounded
    /// transaction, like `delete` without its DELETE.
    pub(crate) async fn invalidate(&self, keys: &[&str], payloads: &[String]) -> Result<()> {
        let op = "invalidate";
        let pg = |e| Error::postgres(op, e);
        let s = self.session(op).await?;
        let begin = begin_sql(op, None)?;
        let record = s.ready(&self.sql.record_deletes).await.map_err(pg)?;
        let no_tags: &[&str] = &[];
        let params: [&(dyn ToSql + Sync); 2] = [&keys, &no_tags];
        let (b, r) = tokio::join!(biased; s.batch_execute(&begin), s.run(&record, &params));
        b.map_err(pg)?;
        r.map_err(pg)?;
        self.notify_and_commit(&s, payloads, op).await?;
        s.done();
        Ok(())
    }

    pub(crate) async fn publish(&self, payloads: &[String]) -> Result<()> {
        let s = self.session("publish").await?;
        let pg = |e| Error::postgres("publish", e);
        s.rows(&self.sql.notify, &[&self.channel, &payloads])
            .await
            .map_err(pg)?;
        s.done();
        Ok(())
    }

    /// Deletes every row and records the clear (see `Sql::clear`), and
    /// announces it: one round trip.
    pub(crate) async fn clear(&self, payload: &str) -> Result<()> {
        let op = "clear";
        let pg = |e| Error::postgres(op, e);
        let s = self.session(op).await?;
        let begin = begin_sql(op, None)?;
        let notify = s.ready(&self.sql.notify).await.map_err(pg)?;
        let payloads = [payload.to_owned()];
        let params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads.as_slice()];
        let (b, c, n, done) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            s.batch_execute(&self.sql.clear),
            s.run(&notify, &params),
            s.batch_execute("COMMIT"),
        );
        b.map_err(pg)?;
        c.map_err(pg)?;
        n.map_err(pg)?;
        done.map_err(pg)?;
        s.done();
        Ok(())
    }

    /// Takes a transaction-scoped advisory lock on `key`, waiting at most
    /// `wait`. `Ok(None)` means the wait ran out: the caller loads by itself.
    pub(crate) async fn load_lock(
        &self,
        key: &str,
        wait: Duration,
        hold: Duration,
    ) -> Result<Option<LoadLock>> {
        let s = self.session("load_lock").await?;
        let pg = |e| Error::postgres("load_lock", e);
        let ms = millis(wait);
        // SET LOCAL cannot take a parameter; the values are integers we
        // formatted. The transaction holds only the advisory lock, for as
        // long as the load runs; it writes nothing. Idle (the load runs on
        // this node meanwhile), it is ended by the server after `hold` —
        // longer than any load may take — so a node that froze or lost its
        // link while loading does not hold the key's lock for the other
        // nodes until TCP gives up, hours later.
        let hold = millis(hold);
        s.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{ms}ms'; \
             SET LOCAL idle_in_transaction_session_timeout = '{hold}ms'"
        ))
        .await
        .map_err(pg)?;
        let name = format!("{}{key}", self.load_lock);
        let got = s.rows(&ADVISORY_XACT_LOCK, &[&name]).await;
        match got {
            Ok(_) => Ok(Some(LoadLock::new(SessionLock { session: s }))),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                s.batch_execute("ROLLBACK").await.map_err(pg)?;
                s.done();
                Ok(None)
            }
            Err(e) => Err(pg(e)),
        }
    }

    /// Deletes expired rows in batches, on one node at a time: the advisory
    /// lock is *tried*, so other nodes skip this round instead of queueing.
    ///
    /// Expiry is a deletion like any other: each batch first records the
    /// keys it is about to remove (waiting for fills of them in progress),
    /// then deletes those of them still expired. A node that missed a
    /// short-lived write while disconnected finds its key in the records at
    /// replay, and a fill fenced before that write is refused after the
    /// sweep as before it.
    pub(crate) async fn sweep(&self, now: SystemTime, batch: i64) -> Result<u64> {
        let op = "sweep";
        let pg = |e| Error::postgres(op, e);
        let s = self.session(op).await?;
        let begin = begin_sql(op, None)?;
        let lock = s.ready(&TRY_ADVISORY_XACT_LOCK).await.map_err(pg)?;
        let name: [&(dyn ToSql + Sync); 1] = [&self.sweep_lock];
        let (b, got) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            s.run(&lock, &name),
        );
        b.map_err(pg)?;
        let got: bool = first(got.map_err(pg)?, op)?.try_get(0).map_err(pg)?;
        let mut total = 0;
        if got {
            s.batch_execute(&self.sql.sweep_deleted).await.map_err(pg)?;
            let (record, delete) = (
                s.ready(&self.sql.sweep_record).await.map_err(pg)?,
                s.ready(&self.sql.sweep).await.map_err(pg)?,
            );
            // A bounded number of batches per round keeps the transaction
            // short.
            for _ in 0..10 {
                let keys: Vec<String> = s
                    .run(&record, &[&now, &batch])
                    .await
                    .map_err(pg)?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(pg)?;
                if keys.is_empty() {
                    break;
                }
                // RETURNING 1 per row: the count of deleted rows.
                total += s.run(&delete, &[&keys, &now]).await.map_err(pg)?.len() as u64;
                if (keys.len() as i64) < batch {
                    break;
                }
            }
        }
        s.batch_execute(&commit_sql(op)?).await.map_err(pg)?;
        s.done();
        Ok(total)
    }
}

/// The engine's view: each call is the inherent method of the same name.
impl Store for PgStore {
    fn system(&self) -> &'static str {
        "postgresql"
    }

    fn combines_writes(&self) -> bool {
        true
    }

    fn close(&self) {
        PgStore::close(self);
    }

    fn get<'a>(&'a self, key: &'a str, now: SystemTime) -> Call<'a, Option<Row>> {
        Box::pin(PgStore::get(self, key, now))
    }

    fn get_for_load<'a>(&'a self, key: &'a str, now: SystemTime) -> Call<'a, (Option<Row>, Fence)> {
        Box::pin(PgStore::get_for_load(self, key, now))
    }

    fn fence(&self) -> Call<'_, Fence> {
        Box::pin(PgStore::fence(self))
    }

    fn fill<'a>(
        &'a self,
        items: &'a [WriteItem],
        header: &'a str,
        fence: &'a Fence,
    ) -> Call<'a, Vec<Option<u64>>> {
        Box::pin(PgStore::fill(self, items, header, fence))
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
        now: SystemTime,
    ) -> Call<'a, Vec<(String, Row)>> {
        Box::pin(PgStore::get_many(self, keys, now))
    }

    fn set<'a>(&'a self, items: &'a [WriteItem], header: &'a str) -> Call<'a, Vec<u64>> {
        Box::pin(PgStore::set(self, items, header))
    }

    fn delete<'a>(&'a self, keys: &'a [&'a str], header: &'a str) -> Call<'a, u64> {
        Box::pin(PgStore::delete(self, keys, header))
    }

    fn invalidate_tag<'a>(&'a self, tag: &'a str, header: &'a str) -> Call<'a, (Vec<String>, u64)> {
        Box::pin(PgStore::invalidate_tag(self, tag, header))
    }

    fn publish<'a>(&'a self, payloads: &'a [String]) -> Call<'a, ()> {
        Box::pin(PgStore::publish(self, payloads))
    }

    fn invalidate<'a>(&'a self, keys: &'a [&'a str], payloads: &'a [String]) -> Call<'a, ()> {
        Box::pin(PgStore::invalidate(self, keys, payloads))
    }

    fn clear<'a>(&'a self, payload: &'a str) -> Call<'a, ()> {
        Box::pin(PgStore::clear(self, payload))
    }

    fn load_lock<'a>(
        &'a self,
        key: &'a str,
        wait: Duration,
        hold: Duration,
    ) -> Call<'a, Option<LoadLock>> {
        Box::pin(PgStore::load_lock(self, key, wait, hold))
    }

    fn sweep(&self, now: SystemTime, batch: i64) -> Call<'_, u64> {
        Box::pin(PgStore::sweep(self, now, batch))
    }
}
