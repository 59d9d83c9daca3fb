//! The PostgreSQL L2: one table, one version sequence, one trigger.
//!
//! Every write is a single transaction that changes the table *and* calls
//! `pg_notify`, so the invalidation is published exactly when — and only if —
//! the write commits. PostgreSQL delivers notifications in commit order.

use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::{ToSql, Type};

use super::Durability;
use crate::clock::unix_micros;
use crate::entry::{Row, WriteItem};
use crate::error::{Error, Result};
use crate::key::{qualified, quote_ident};

/// Serialises schema creation across nodes that start at the same moment;
/// `CREATE … IF NOT EXISTS` alone races on the catalog's unique indexes.
const MIGRATE_LOCK: &str = "c3:migrate";

/// One statement and the types of its parameters. It runs as a cached
/// prepared statement, or — behind a transaction pooler that cannot keep them
/// (PgBouncer before 1.21) — as one unnamed statement per call, which needs
/// the parameter types up front (`query_typed`: Parse, Bind and Execute in
/// one round trip, no session state).
pub(crate) struct Q {
    sql: String,
    types: &'static [Type],
}

impl Q {
    fn new(sql: impl Into<String>, types: &'static [Type]) -> Q {
        Q {
            sql: sql.into(),
            types,
        }
    }
}

static ADVISORY_XACT_LOCK: std::sync::LazyLock<Q> = std::sync::LazyLock::new(|| {
    Q::new("SELECT pg_advisory_xact_lock(hashtext($1))", &[Type::TEXT])
});
static TRY_ADVISORY_XACT_LOCK: std::sync::LazyLock<Q> = std::sync::LazyLock::new(|| {
    Q::new(
        "SELECT pg_try_advisory_xact_lock(hashtext($1))",
        &[Type::TEXT],
    )
});

/// The least time an operation must have left for c3 to send anything:
/// below it, the server's bounds could not sit below the caller's deadline.
const LEAST_LEFT: Duration = Duration::from_millis(3);

/// How long a transaction may take when no deadline is in scope (only
/// start-up's schema step, which runs its own timeout).
const NO_DEADLINE: Duration = Duration::from_secs(60);

/// The time the running L2 operation has left (see `backend::deadline`);
/// an error, and nothing sent, when it has none.
fn time_left(op: &'static str) -> Result<Duration> {
    let Some(deadline) = super::deadline() else {
        return Ok(NO_DEADLINE);
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left < LEAST_LEFT {
        return Err(Error::timeout(op, left));
    }
    Ok(left)
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// The server-side bounds of one c3 transaction (PROTOCOL.md §2, "Bounded
/// transactions"). A transaction begun at `t` with `left` to its caller's
/// deadline runs every statement — its lock waits included — for at most
/// `left / 3`, and is ended by the server if it sits idle (its client
/// frozen or gone) for `left / 3`. A transaction sent in one round trip
/// (statements then COMMIT, pipelined) therefore commits by `t + 2·left/3`
/// or never; one of several round trips re-bounds its COMMIT to half the
/// time left when it sends it (`commit_sql`), and sends none when no time
/// is left. The caller is told "timed out" at its deadline: by then the
/// transaction has committed, or it never will.
///
/// Isolation is explicit: every "a later statement sees what committed
/// meanwhile" step of the protocol needs READ COMMITTED, whatever the
/// database's or role's `default_transaction_isolation` says.
fn begin_sql(op: &'static str, lock_wait: Option<Duration>) -> Result<String> {
    let each = time_left(op)? / 3;
    let lock = lock_wait.map_or(each, |l| l.min(each));
    Ok(format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; \
SET LOCAL statement_timeout = '{}ms'; SET LOCAL lock_timeout = '{}ms'; \
SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
        millis(each),
        millis(lock),
        millis(each)
    ))
}

/// The COMMIT of a transaction of several round trips, bounded by the time
/// its caller has left now; an error (and no COMMIT: the session is then
/// closed, which rolls the transaction back) when none is left.
fn commit_sql(op: &'static str) -> Result<String> {
    let left = time_left(op)?;
    Ok(format!(
        "SET LOCAL statement_timeout = '{}ms'; COMMIT",
        millis(left / 2)
    ))
}

/// One operation's pooled connection.
///
/// It goes back to the pool only through [`done`](Self::done). Dropped
/// before that — the caller timed out or was cancelled while a statement
/// ran, or a statement failed mid-transaction — it is detached from the
/// pool and closed: a connection with a request in flight must not serve
/// anyone else, and closing is how c3 cancels what its caller left
/// running (the server rolls back a transaction whose client is gone when
/// it next reads from it, or when the transaction's own bounds fire,
/// whichever comes first).
struct Session {
    conn: Option<deadpool_postgres::Object>,
}

impl Session {
    /// The operation is over and the connection is idle, outside any
    /// transaction: it may serve the next one.
    fn done(mut self) {
        drop(self.conn.take());
    }
}

impl std::ops::Deref for Session {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &Self::Target {
        self.conn.as_ref().expect("present until done or drop")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Detached, the client is dropped here, and with it the task
            // driving its socket: the connection closes now.
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

/// A statement ready to send: prepared on this session already (so that
/// sending it takes no round trip of its own and pipelined statements go
/// out in the order given), or unnamed (see [`Q`]).
struct Ready<'a> {
    q: &'a Q,
    stmt: Option<tokio_postgres::Statement>,
}

/// `pg_notify` for each payload.
static NOTIFY_Q: std::sync::LazyLock<Q> =
    std::sync::LazyLock::new(|| Q::new(NOTIFY, &[Type::TEXT, Type::TEXT_ARRAY]));

/// The SQL for one configured table, built once with validated, quoted names.
struct Sql {
    ddl: String,
    get: Q,
    get_many: Q,
    set_one: Q,
    set_many: Q,
    set_many_notify: Q,
    delete: Q,
    clear: String,
    sweep_record: Q,
    sweep: Q,
    tags_replace: Q,
    tags_insert: Q,
    invalidate_tag: Q,
    get_for_load: Q,
    fence: Q,
    fill_records: Q,
    fill_lock: Q,
    fill: Q,
    record_deletes: Q,
    record_tag_deletes: Q,
    sweep_deleted: String,
}

/// The DDL c3 runs at start-up for `schema`.`table` (idempotent), for a DBA
/// or a migration tool when the application may not run DDL.
pub(crate) fn migration_sql(schema: &str, table: &str, durability: Durability) -> String {
    Sql::new(schema, table, durability).ddl
}

/// The change-log query a reconnecting node runs on its LISTEN connection
/// (see `crate::replay`): in one statement, so one snapshot, the server's
/// identity and every key changed by a transaction not visible in `$1` (the
/// node's mark; NULL: identity only) — rows written (their `xid`) and
/// deletions recorded (`''`: a clear) — at most `$2` of them. `$3` is the
/// table's qualified name, for its persistence.
///
/// The timeline is the live one — the first eight hex digits of the name
/// of the WAL segment being written — not `pg_control_checkpoint()`'s,
/// which keeps the old timeline until the first checkpoint after a
/// promotion. The version sequence's last value comes last: below a
/// version this node has seen, it is another history.
pub(crate) fn replay_sql(schema: &str, table: &str) -> String {
    let q = |name: &str| qualified(schema, name);
    let (t, deleted) = (q(table), q(&format!("{table}_deleted")));
    let seq = q(&format!("{table}_version_seq"));
    format!(
        "SELECT pg_current_snapshot()::text, \
(SELECT system_identifier::text FROM pg_control_system()), \
substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
pg_postmaster_start_time()::text, \
(SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($3)), \
CASE WHEN $1::text IS NULL THEN NULL ELSE ARRAY(\
SELECT key FROM {t} WHERE xid IS NOT NULL AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot) \
UNION SELECT key FROM {deleted} WHERE NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot) \
LIMIT $2) END, \
coalesce(pg_sequence_last_value(to_regclass('{seq}')), 0)::text, \
(extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text"
    )
}

/// The quoted, schema-qualified name of the SQL function that deletes keys
/// (and tagged keys) and announces it, inside the caller's transaction.
pub(crate) fn invalidate_function(schema: &str, table: &str) -> String {
    qualified(schema, &format!("{table}_invalidate"))
}

/// Keys up to this long take the one-statement batch write.
const SHORT_KEY: usize = 200;

/// The server's clock in µs since the Unix epoch, as SQL.
const CLOCK_US: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// The oldest fence a fill may be stored through: half the deletion
/// records' one-hour retention, so every deletion after the fence is still
/// recorded when the fill checks (a deleting transaction may stay open up
/// to the other half).
const FENCE_MAX_AGE_US: i64 = 30 * 60 * 1_000_000;

/// How long a fill waits for a deletion of its keys or tags in progress
/// before giving up (and storing nothing).
const FILL_LOCK_WAIT: Duration = Duration::from_millis(100);

pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";

impl Sql {
    fn new(schema: &str, table: &str, durability: Durability) -> Sql {
        let t = qualified(schema, table);
        let seq = qualified(schema, &format!("{table}_version_seq"));
        let func = qualified(schema, &format!("{table}_bump_version"));
        let trigger = quote_ident(&format!("{table}_bump_version"));
        let index = quote_ident(&format!("{table}_expiry_idx"));
        let tags = qualified(schema, &format!("{table}_tags"));
        let tags_idx = quote_ident(&format!("{table}_tags_key_idx"));
        let inv = invalidate_function(schema, table);
        let deleted = qualified(schema, &format!("{table}_deleted"));
        let deleted_tags = qualified(schema, &format!("{table}_deleted_tags"));
        let create_schema = if schema == "public" {
            String::new()
        } else {
            format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(schema))
        };
        // Durability: new tables are created so; existing ones are switched
        // (a rewrite under an exclusive lock, once). An unlogged table may
        // reference a logged one but not the reverse, so the tags table goes
        // unlogged first and logged last. The sequence stays logged in both
        // modes: versions must never go backwards, not even after a crash.
        let (unlogged, switch) = {
            let (want, set, order) = match durability {
                Durability::Logged => ("p", "LOGGED", [&t, &tags, &deleted, &deleted_tags]),
                Durability::Unlogged => ("u", "UNLOGGED", [&tags, &t, &deleted, &deleted_tags]),
            };
            let alters: String = order
                .iter()
                .map(|r| {
                    format!(
                        "    IF (SELECT relpersistence FROM pg_class WHERE oid = '{r}'::regclass) <> '{want}' THEN\n\
        ALTER TABLE {r} SET {set};\n    END IF;\n"
                    )
                })
                .collect();
            (
                if durability == Durability::Unlogged {
                    "UNLOGGED "
                } else {
                    ""
                },
                format!("DO $c3$\nBEGIN\n{alters}END\n$c3$;"),
            )
        };
        // The sequence name is embedded in a string literal for nextval(); the
        // identifiers were validated to [a-z0-9_], so no quote can appear in it.
        let ddl = format!(
            "{create_schema}\
CREATE SEQUENCE IF NOT EXISTS {seq};
CREATE {unlogged}TABLE IF NOT EXISTS {t} (
    key         text PRIMARY KEY,
    value       bytea NOT NULL,
    encoding    text NOT NULL DEFAULT 'json',
    version     bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz,
    stale_until timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS encoding text NOT NULL DEFAULT 'json';
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS stale_until timestamptz;
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS xid xid8;
CREATE INDEX IF NOT EXISTS {index} ON {t} ((coalesce(stale_until, expires_at)))
    WHERE expires_at IS NOT NULL OR stale_until IS NOT NULL;
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $c3$
BEGIN
    NEW.version := nextval('{seq}');
    NEW.updated_at := now();
    NEW.xid := pg_current_xact_id();
    RETURN NEW;
END
$c3$;
CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {t}
    FOR EACH ROW EXECUTE FUNCTION {func}();
CREATE {unlogged}TABLE IF NOT EXISTS {tags} (
    tag text NOT NULL,
    key text NOT NULL REFERENCES {t} (key) ON DELETE CASCADE,
    PRIMARY KEY (tag, key)
);
CREATE INDEX IF NOT EXISTS {tags_idx} ON {tags} (key);
CREATE {unlogged}TABLE IF NOT EXISTS {deleted} (
    key text PRIMARY KEY,
    xid xid8 NOT NULL,
    at  timestamptz NOT NULL DEFAULT now()
);
CREATE {unlogged}TABLE IF NOT EXISTS {deleted_tags} (
    tag text PRIMARY KEY,
    xid xid8 NOT NULL,
    at  timestamptz NOT NULL DEFAULT now()
);
{switch}
CREATE OR REPLACE FUNCTION {inv}(channel text, keys text[], tags text[] DEFAULT '{{}}')
RETURNS bigint LANGUAGE plpgsql AS $c3$
DECLARE
    ks text[];
    gone text[];
    v bigint;
    head text := 'c3|1|-|' || floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint || '|';
    msg text;
    k text;
    line text;
BEGIN
    -- Each step below must see what committed while the one before waited:
    -- READ COMMITTED. On one snapshot for the whole transaction (REPEATABLE
    -- READ, SERIALIZABLE) the DELETE would miss a row a fill committed
    -- meanwhile and leave an old value in L2 — refuse instead.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'c3: {inv} must run in a READ COMMITTED transaction, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = '25000',
                  HINT = 'Begin the writing transaction with BEGIN ISOLATION LEVEL READ COMMITTED (docs/PROTOCOL.md, section Isolation).';
    END IF;
    -- 1. The tags' records, in a statement of their own: this waits for
    --    every fill carrying one of them that is in progress, and makes
    --    fills that start later wait for us (PROTOCOL.md, Fills).
    INSERT INTO {deleted_tags} (tag, xid, at)
        SELECT x, pg_current_xact_id(), clock_timestamp()
        FROM (SELECT DISTINCT unnest(coalesce(tags, '{{}}'))) AS u (x) WHERE x IS NOT NULL
        ON CONFLICT (tag) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at;
    -- 2. Only now resolve the tags to keys: this statement sees the rows
    --    those fills committed while step 1 waited for them.
    SELECT coalesce(array_agg(DISTINCT x), '{{}}') INTO ks FROM (
        SELECT unnest(coalesce(keys, '{{}}')) AS x
        UNION SELECT key FROM {tags} WHERE tag = ANY(coalesce(tags, '{{}}'))) AS s
    WHERE x IS NOT NULL;
    -- 3. The keys' records: waits for fills of these keys in progress.
    INSERT INTO {deleted} (key, xid, at) SELECT unnest(ks), pg_current_xact_id(), clock_timestamp()
        ON CONFLICT (key) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at;
    -- 4. Delete (a later statement: it sees every fill that committed while
    --    3 waited) the keys and whatever carries the tags now, and record
    --    what it removed: a key a writer tagged after step 2 is recorded
    --    too. The version is drawn after the rows are locked.
    WITH d AS (DELETE FROM {t} WHERE key = ANY(ks)
                   OR key IN (SELECT key FROM {tags} WHERE tag = ANY(coalesce(tags, '{{}}')))
               RETURNING key),
         r AS (INSERT INTO {deleted} (key, xid, at)
               SELECT key, pg_current_xact_id(), clock_timestamp() FROM d
               ON CONFLICT (key) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at)
        SELECT coalesce(array_agg(key), '{{}}'), nextval('{seq}') INTO gone, v FROM d;
    SELECT coalesce(array_agg(DISTINCT x), '{{}}') INTO ks FROM unnest(ks || gone) AS x;
    IF cardinality(ks) = 0 THEN
        RETURN NULL;
    END IF;
    msg := head || 'k';
    FOREACH k IN ARRAY ks LOOP
        IF k = '' OR octet_length(k) > 7000 OR left(k, 3) = 'c3|' OR k ~ '[\\x01-\\x1f\\x7f-\\x9f]' THEN
            -- No node could read this key in a message: drop every L1 instead.
            PERFORM pg_notify(channel, head || 'c');
            CONTINUE;
        END IF;
        line := v || ' ' || k;
        IF msg <> head || 'k' AND octet_length(msg) + 1 + octet_length(line) > 7999 THEN
            PERFORM pg_notify(channel, msg);
            msg := head || 'k';
        END IF;
        msg := msg || E'\\n' || line;
    END LOOP;
    IF msg <> head || 'k' THEN
        PERFORM pg_notify(channel, msg);
    END IF;
    RETURN v;
END
$c3$;
COMMENT ON TABLE {t} IS 'c3 cache (protocol 1): see docs/PROTOCOL.md';"
        );
        let live =
            "(coalesce(stale_until, expires_at) IS NULL OR coalesce(stale_until, expires_at) > $2)";
        let upsert_set = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
encoding = EXCLUDED.encoding, expires_at = EXCLUDED.expires_at, stale_until = EXCLUDED.stale_until";
        Sql {
            ddl,
            get: Q::new(
                format!(
                    "SELECT value, encoding, version, expires_at, stale_until FROM {t} WHERE key = $1 AND {live}"
                ),
                &[Type::TEXT, Type::TIMESTAMPTZ],
            ),
            get_many: Q::new(
                format!(
                    "SELECT key, value, encoding, version, expires_at, stale_until FROM {t} \
WHERE key = ANY($1) AND {live}"
                ),
                &[Type::TEXT_ARRAY, Type::TIMESTAMPTZ],
            ),
            // One statement, hence one implicit transaction and one round trip:
            // the upsert and its notification commit together.
            set_one: Q::new(
                format!(
                    "WITH up AS (INSERT INTO {t} (key, value, encoding, expires_at, stale_until) \
VALUES ($1, $2, $3, $4, $5) {upsert_set} RETURNING version) \
SELECT version, pg_notify($6, $7 || E'\\n' || version || ' ' || $1) FROM up"
                ),
                &[
                    Type::TEXT,
                    Type::BYTEA,
                    Type::TEXT,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::TEXT,
                    Type::TEXT,
                ],
            ),
            // The batch and its notifications in one statement — one round
            // trip, one implicit transaction. Lines are grouped into payloads
            // by cumulative length; with keys of at most SHORT_KEY bytes no
            // group can pass the NOTIFY limit (see `set`).
            set_many_notify: Q::new(
                format!(
                    "WITH up AS (INSERT INTO {t} (key, value, encoding, expires_at, stale_until) \
SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::timestamptz[], $5::timestamptz[]) \
{upsert_set} RETURNING key, version), \
lines AS (SELECT version || ' ' || key AS line, \
sum(octet_length(key) + 21) OVER (ORDER BY version, key) AS pos FROM up), \
sent AS (SELECT pg_notify($6, $7 || E'\\n' || string_agg(line, E'\\n' ORDER BY pos)) AS x \
FROM lines GROUP BY pos / 7000) \
SELECT key, version, (SELECT count(*) FROM sent) FROM up"
                ),
                &[
                    Type::TEXT_ARRAY,
                    Type::BYTEA_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::TEXT,
                    Type::TEXT,
                ],
            ),
            set_many: Q::new(
                format!(
                    "INSERT INTO {t} (key, value, encoding, expires_at, stale_until) \
SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::timestamptz[], $5::timestamptz[]) \
{upsert_set} RETURNING key, version"
                ),
                &[
                    Type::TEXT_ARRAY,
                    Type::BYTEA_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                ],
            ),
            // The version is drawn *after* the DELETE has locked the rows (the
            // count(*) forces that order), so it is newer than any version a
            // concurrent writer of the same key obtained before us. It runs
            // after `record_deletes` (see there).
            delete: Q::new(
                format!(
                    "WITH d AS (DELETE FROM {t} WHERE key = ANY($1) RETURNING 1) \
SELECT nextval('{seq}') FROM (SELECT count(*) FROM d) AS x"
                ),
                &[Type::TEXT_ARRAY],
            ),
            // Deletions are recorded (key, deleting transaction) *before* the
            // rows are deleted, in a statement of their own: upserting a
            // record waits for fills of the key in progress (they hold it
            // FOR SHARE) and makes later fills wait for this transaction;
            // the DELETE that follows, with a newer snapshot, then sees every
            // fill that committed first. A fill that read before this
            // transaction cannot write its older value back (see `fill`).
            record_deletes: Q::new(
                format!(
                    "INSERT INTO {deleted} (key, xid, at) SELECT k, pg_current_xact_id(), clock_timestamp() FROM \
(SELECT unnest($1::text[]) UNION SELECT key FROM {tags} WHERE tag = ANY($2::text[])) AS u (k) \
ON CONFLICT (key) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at"
                ),
                &[Type::TEXT_ARRAY, Type::TEXT_ARRAY],
            ),
            record_tag_deletes: Q::new(
                format!(
                    "INSERT INTO {deleted_tags} (tag, xid, at) SELECT t, pg_current_xact_id(), clock_timestamp() FROM \
(SELECT DISTINCT unnest($1::text[])) AS u (t) ON CONFLICT (tag) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at"
                ),
                &[Type::TEXT_ARRAY],
            ),
            // The empty key (never a valid key) records "everything". The
            // table lock waits for fills (and writes) in progress and holds
            // off new ones until the clear commits.
            clear: format!(
                "LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE; DELETE FROM {t}; \
INSERT INTO {deleted} (key, xid, at) VALUES ('', pg_current_xact_id(), clock_timestamp()) \
ON CONFLICT (key) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at"
            ),
            get_for_load: Q::new(
                format!(
                    "SELECT s.snap, r.value, r.encoding, r.version, r.expires_at, r.stale_until, s.started, s.taken \
FROM (SELECT pg_current_snapshot()::text AS snap, pg_postmaster_start_time()::text AS started, \
{CLOCK_US} AS taken) AS s \
LEFT JOIN {t} AS r ON r.key = $1"
                ),
                &[Type::TEXT],
            ),
            // The fence: the snapshot, and the server's start time (a fill
            // across a restart is refused: see `fill`).
            fence: Q::new(
                format!(
                    "SELECT pg_current_snapshot()::text, pg_postmaster_start_time()::text, {CLOCK_US}"
                ),
                &[],
            ),
            // A fill's first statement (after `lock_timeout`): make sure a
            // deletion record exists for each of its keys and tags (xid 0:
            // "never deleted", visible in every snapshot). Inserting one that
            // another transaction is inserting or updating waits for it.
            fill_records: Q::new(
                format!(
                    "WITH k AS (INSERT INTO {deleted} (key, xid) SELECT DISTINCT n, '0'::xid8 FROM unnest($1::text[]) AS n \
ON CONFLICT DO NOTHING) \
INSERT INTO {deleted_tags} (tag, xid) SELECT DISTINCT n, '0'::xid8 FROM unnest($2::text[]) AS n \
ON CONFLICT DO NOTHING"
                ),
                &[Type::TEXT_ARRAY, Type::TEXT_ARRAY],
            ),
            // The second, a statement of its own: share-lock every record.
            // Its own snapshot matters: a record another fill inserted while
            // the first statement waited for it is invisible to that
            // statement, and `FOR SHARE` there would lock nothing — a
            // deletion could then run its DELETE before this fill commits
            // and miss what it stores (the differential HTTP test's anomaly:
            // two replicas' first fills of one URI tag). A deletion in
            // progress holds its records, so this waits for it (and the fill
            // is then refused by the check below); a deletion that starts
            // later waits for the fill to commit, and then deletes what it
            // stored. It counts what it locked: fewer than asked (a record
            // swept meanwhile) and the fill stores nothing.
            fill_lock: Q::new(
                format!(
                    "SELECT (SELECT count(*) FROM (SELECT 1 FROM {deleted} WHERE key = ANY($1) FOR SHARE) AS a) \
+ (SELECT count(*) FROM (SELECT 1 FROM {deleted_tags} WHERE tag = ANY($2) FOR SHARE) AS b), \
pg_postmaster_start_time()::text, {CLOCK_US}"
                ),
                &[Type::TEXT_ARRAY, Type::TEXT_ARRAY],
            ),
            // A fill is stored only if nothing that invalidates its key or
            // one of its tags committed outside the snapshot taken before the
            // source was read: no deletion record of the key, of `''` (a
            // clear) or of a tag, and no row written by such a transaction.
            // Tags are replaced by exactly the fill's own.
            fill: Q::new(
                format!(
                    "WITH r AS (SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::timestamptz[], \
$5::timestamptz[]) AS r (key, value, encoding, expires_at, stale_until)), \
g AS (SELECT * FROM unnest($7::text[], $8::text[]) AS g (tag, key)), \
ok AS (SELECT r.* FROM r WHERE NOT EXISTS (SELECT 1 FROM {deleted} AS d WHERE d.key IN (r.key, '') \
AND NOT pg_visible_in_snapshot(d.xid, $6::text::pg_snapshot)) \
AND NOT EXISTS (SELECT 1 FROM g JOIN {deleted_tags} AS dt ON dt.tag = g.tag WHERE g.key = r.key \
AND NOT pg_visible_in_snapshot(dt.xid, $6::text::pg_snapshot))), \
up AS (INSERT INTO {t} (key, value, encoding, expires_at, stale_until) SELECT * FROM ok \
{upsert_set} WHERE coalesce(pg_visible_in_snapshot({t}.xid, $6::text::pg_snapshot), true) \
RETURNING key, version), \
dt AS (DELETE FROM {tags} AS x USING up WHERE x.key = up.key \
AND NOT EXISTS (SELECT 1 FROM g WHERE g.key = x.key AND g.tag = x.tag)), \
it AS (INSERT INTO {tags} (tag, key) SELECT g.tag, g.key FROM g JOIN up ON up.key = g.key \
ON CONFLICT DO NOTHING) \
SELECT key, version FROM up"
                ),
                &[
                    Type::TEXT_ARRAY,
                    Type::BYTEA_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::TEXT,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                ],
            ),
            sweep_deleted: format!(
                "DELETE FROM {deleted} WHERE at < now() - interval '1 hour'; \
DELETE FROM {deleted_tags} WHERE at < now() - interval '1 hour'"
            ),
            tags_replace: Q::new(
                format!("DELETE FROM {tags} WHERE key = ANY($1)"),
                &[Type::TEXT_ARRAY],
            ),
            tags_insert: Q::new(
                format!(
                    "INSERT INTO {tags} (tag, key) SELECT * FROM unnest($1::text[], $2::text[]) \
ON CONFLICT DO NOTHING"
                ),
                &[Type::TEXT_ARRAY, Type::TEXT_ARRAY],
            ),
            // The tag rows go with their cache rows (ON DELETE CASCADE). The
            // version is drawn after the delete, as for a plain delete.
            // After `record_tag_deletes` and `record_deletes` (see there);
            // what it deletes it records again, from its own RETURNING: a
            // key a writer tagged after `record_deletes` ran is deleted here
            // and must not go unrecorded (a replay would miss it).
            invalidate_tag: Q::new(
                format!(
                    "WITH d AS (DELETE FROM {t} WHERE key IN (SELECT key FROM {tags} WHERE tag = $1) RETURNING key), \
r AS (INSERT INTO {deleted} (key, xid, at) SELECT key, pg_current_xact_id(), clock_timestamp() FROM d \
ON CONFLICT (key) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at) \
SELECT coalesce(array_agg(key), '{{}}'), nextval('{seq}') FROM d"
                ),
                &[Type::TEXT],
            ),
            // Expiry is a deletion: the sweeper records the keys it is about
            // to remove first (a statement of its own, as every deleter),
            // then removes those still expired. A key refreshed in between
            // keeps its row and a record it did not need: a fill fenced
            // before is refused, a replay drops it — never a wrong answer.
            sweep_record: Q::new(
                format!(
                    "INSERT INTO {deleted} (key, xid, at) SELECT key, pg_current_xact_id(), clock_timestamp() \
FROM {t} WHERE coalesce(stale_until, expires_at) < $1 LIMIT $2 \
ON CONFLICT (key) DO UPDATE SET xid = EXCLUDED.xid, at = EXCLUDED.at RETURNING key"
                ),
                &[Type::TIMESTAMPTZ, Type::INT8],
            ),
            sweep: Q::new(
                format!(
                    "DELETE FROM {t} WHERE key = ANY($1) AND coalesce(stale_until, expires_at) < $2 RETURNING 1"
                ),
                &[Type::TEXT_ARRAY, Type::TIMESTAMPTZ],
            ),
        }
    }
}

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

pub(crate) struct PgBackend {
    pool: Pool,
    sql: Sql,
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
    durability: Durability,
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
pub(crate) struct LoadLock {
    session: Session,
}

impl LoadLock {
    fn holding(session: Session) -> Self {
        LoadLock { session }
    }

    pub(crate) async fn release(self) {
        if self.session.batch_execute("COMMIT").await.is_ok() {
            self.session.done();
        }
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

impl PgBackend {
    pub(crate) fn new(
        pool: Pool,
        ssl_mode: Option<crate::tls::SslMode>,
        unnamed: bool,
        names: (&str, &str, &str),
        durability: Durability,
    ) -> Self {
        let (schema, table, channel) = names;
        PgBackend {
            pool,
            owns_pool: ssl_mode.is_some(),
            ssl_mode,
            unnamed,
            sql: Sql::new(schema, table, durability),
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
    async fn session(&self, op: &'static str) -> Result<Session> {
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
        Ok(Session { conn: Some(conn) })
    }

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
        let row = self
            .one(
                &s,
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
    async fn wrong_persistence(&self, s: &Session, tables: &[&str]) -> Result<Vec<String>> {
        let (want, set) = match self.durability {
            Durability::Logged => ("p", "LOGGED"),
            Durability::Unlogged => ("u", "UNLOGGED"),
        };
        let persistence = Q::new(
            "SELECT coalesce(array_agg(r), '{}') FROM unnest($1::text[]) AS r \
             WHERE (SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass(r)) <> $2",
            &[Type::TEXT_ARRAY, Type::TEXT],
        );
        let wrong: Vec<String> = self
            .one(s, &persistence, &[&tables, &want], "verify")
            .await?
            .try_get(0)
            .map_err(|e| Error::postgres("verify", e))?;
        Ok(wrong
            .into_iter()
            .map(|r| format!("ALTER TABLE {r} SET {set} (the durability asked for)"))
            .collect())
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
        self.rows(&s, &ADVISORY_XACT_LOCK, &[&MIGRATE_LOCK])
            .await
            .map_err(pg)?;
        s.batch_execute(&self.sql.ddl).await.map_err(pg)?;
        s.batch_execute("COMMIT").await.map_err(pg)?;
        s.done();
        Ok(())
    }

    /// Prepares `q` on `s` (cached per connection), unless statements are
    /// unnamed (see [`Q`]). Pipelined statements must be ready first: a
    /// statement still being prepared would be sent after the ones polled
    /// behind it.
    async fn ready<'q>(
        &self,
        s: &Session,
        q: &'q Q,
    ) -> std::result::Result<Ready<'q>, tokio_postgres::Error> {
        let stmt = if self.unnamed {
            None
        } else {
            Some(s.prepare_cached(&q.sql).await?)
        };
        Ok(Ready { q, stmt })
    }

    /// Sends a ready statement; its request leaves on the first poll.
    async fn run(
        &self,
        s: &Session,
        r: &Ready<'_>,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        match &r.stmt {
            Some(stmt) => s.query(stmt, params).await,
            None => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                    .iter()
                    .copied()
                    .zip(r.q.types.iter().cloned())
                    .collect();
                s.query_typed(&r.q.sql, &typed).await
            }
        }
    }

    /// Runs `q` on `s`, outside any pipeline.
    async fn rows(
        &self,
        s: &Session,
        q: &Q,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let r = self.ready(s, q).await?;
        self.run(s, &r, params).await
    }

    /// [`rows`](Self::rows) for a statement that returns exactly one row.
    async fn one(
        &self,
        s: &Session,
        q: &Q,
        params: &[&(dyn ToSql + Sync)],
        op: &'static str,
    ) -> Result<tokio_postgres::Row> {
        first(
            self.rows(s, q, params)
                .await
                .map_err(|e| Error::postgres(op, e))?,
            op,
        )
    }

    /// One transaction in one round trip: the bounds, `q`, COMMIT, sent
    /// together (see [`begin_sql`]). Returns `q`'s rows.
    async fn one_trip(
        &self,
        s: &Session,
        q: &Q,
        params: &[&(dyn ToSql + Sync)],
        op: &'static str,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let pg = |e| Error::postgres(op, e);
        let begin = begin_sql(op, None)?;
        let r = self.ready(s, q).await.map_err(pg)?;
        // `biased`: polled, hence sent, in this order. Should the statement
        // fail, the COMMIT behind it answers ROLLBACK.
        let (b, rows, c) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            self.run(s, &r, params),
            s.batch_execute("COMMIT"),
        );
        b.map_err(pg)?;
        let rows = rows.map_err(pg)?;
        c.map_err(pg)?;
        Ok(rows)
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
        let r = self.ready(s, &NOTIFY_Q).await.map_err(pg)?;
        let params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads];
        let (n, c) = tokio::join!(biased; self.run(s, &r, &params), s.batch_execute(&commit));
        n.map_err(pg)?;
        c.map_err(pg)
    }

    pub(crate) async fn get(&self, key: &str, now: SystemTime) -> Result<Option<Row>> {
        let s = self.session("get").await?;
        let rows = self
            .rows(&s, &self.sql.get, &[&key, &now])
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
        let rows = self
            .rows(&s, &self.sql.get_many, &[&keys, &now])
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
        let upsert = self.ready(&s, &self.sql.set_many).await.map_err(pg)?;
        let c = Columns::of(items);
        let params: [&(dyn ToSql + Sync); 5] =
            [&c.keys, &c.values, &c.encodings, &c.fresh, &c.stale];
        let (b, rows) =
            tokio::join!(biased; s.batch_execute(&begin), self.run(&s, &upsert, &params));
        b.map_err(pg)?;
        let versions = versions_of(items, &rows.map_err(pg)?, op)?;
        if items.iter().any(|i| !i.tags.is_empty()) {
            // A write replaces the entry's tags along with its value.
            let (tags, tag_keys) = tag_pairs(items);
            let (replace, insert) = (
                self.ready(&s, &self.sql.tags_replace).await.map_err(pg)?,
                self.ready(&s, &self.sql.tags_insert).await.map_err(pg)?,
            );
            let (by_key, pairs): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 2]) =
                ([&c.keys], [&tags, &tag_keys]);
            let (r, i) = tokio::join!(
                biased;
                self.run(&s, &replace, &by_key),
                self.run(&s, &insert, &pairs),
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
        let rows = self
            .one_trip(
                &s,
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
    ) -> Result<(Option<Row>, super::Fence)> {
        let s = self.session("get").await?;
        let pg = |e| Error::postgres("get", e);
        let r = self.one(&s, &self.sql.get_for_load, &[&key], "get").await?;
        s.done();
        let fence = super::Fence {
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
    pub(crate) async fn fence(&self) -> Result<super::Fence> {
        let s = self.session("fence").await?;
        let r = self.one(&s, &self.sql.fence, &[], "fence").await?;
        s.done();
        Ok(super::Fence {
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
        fence: &super::Fence,
    ) -> Result<Vec<Option<u64>>> {
        let s = self.session("fill").await?;
        let pg = |e| Error::postgres("fill", e);
        let upsert = self.ready(&s, &self.sql.fill).await.map_err(pg)?;
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
        let (l, rows) =
            tokio::join!(biased; s.batch_execute(&relock), self.run(&s, &upsert, &params));
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
    async fn fence_holds(
        &self,
        s: &Session,
        items: &[WriteItem],
        fence: &super::Fence,
    ) -> Result<bool> {
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
            self.ready(s, &self.sql.fill_records).await.map_err(pg)?,
            self.ready(s, &self.sql.fill_lock).await.map_err(pg)?,
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
            self.run(s, &records, &params),
            self.run(s, &lock, &params),
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
            && now.saturating_sub(taken) > FENCE_MAX_AGE_US
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
        let rows = self.one_trip(&s, &self.sql.set_one, &params, "set").await?;
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
            self.ready(&s, &self.sql.record_deletes).await.map_err(pg)?,
            self.ready(&s, &self.sql.delete).await.map_err(pg)?,
        );
        let no_tags: &[&str] = &[];
        let (both, just_keys): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 1]) =
            ([&keys, &no_tags], [&keys]);
        let (b, r, d) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            self.run(&s, &record, &both),
            self.run(&s, &delete, &just_keys),
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
            self.ready(&s, &self.sql.record_tag_deletes)
                .await
                .map_err(pg)?,
            self.ready(&s, &self.sql.record_deletes).await.map_err(pg)?,
            self.ready(&s, &self.sql.invalidate_tag).await.map_err(pg)?,
        );
        let (tags, no_keys): (&[&str], &[&str]) = (&[tag], &[]);
        let p_tag: [&(dyn ToSql + Sync); 1] = [&tags];
        let p_keys: [&(dyn ToSql + Sync); 2] = [&no_keys, &tags];
        let p_delete: [&(dyn ToSql + Sync); 1] = [&tag];
        let (b, rt, rk, d) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            self.run(&s, &record_tag, &p_tag),
            self.run(&s, &record_keys, &p_keys),
            self.run(&s, &delete, &p_delete),
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

    pub(crate) async fn publish(&self, payloads: &[String]) -> Result<()> {
        let s = self.session("publish").await?;
        let pg = |e| Error::postgres("publish", e);
        self.rows(&s, &NOTIFY_Q, &[&self.channel, &payloads])
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
        let notify = self.ready(&s, &NOTIFY_Q).await.map_err(pg)?;
        let payloads = [payload.to_owned()];
        let params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads.as_slice()];
        let (b, c, n, done) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            s.batch_execute(&self.sql.clear),
            self.run(&s, &notify, &params),
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
    pub(crate) async fn load_lock(&self, key: &str, wait: Duration) -> Result<Option<LoadLock>> {
        let s = self.session("load_lock").await?;
        let pg = |e| Error::postgres("load_lock", e);
        let ms = millis(wait);
        // SET LOCAL cannot take a parameter; `ms` is an integer we formatted.
        // The transaction holds only the advisory lock, for as long as the
        // load runs; it writes nothing.
        s.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{ms}ms'"
        ))
        .await
        .map_err(pg)?;
        let name = format!("{}{key}", self.load_lock);
        let got = self.rows(&s, &ADVISORY_XACT_LOCK, &[&name]).await;
        match got {
            Ok(_) => Ok(Some(LoadLock::holding(s))),
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
        let lock = self.ready(&s, &TRY_ADVISORY_XACT_LOCK).await.map_err(pg)?;
        let name: [&(dyn ToSql + Sync); 1] = [&self.sweep_lock];
        let (b, got) = tokio::join!(
            biased;
            s.batch_execute(&begin),
            self.run(&s, &lock, &name),
        );
        b.map_err(pg)?;
        let got: bool = first(got.map_err(pg)?, op)?.try_get(0).map_err(pg)?;
        let mut total = 0;
        if got {
            s.batch_execute(&self.sql.sweep_deleted).await.map_err(pg)?;
            let (record, delete) = (
                self.ready(&s, &self.sql.sweep_record).await.map_err(pg)?,
                self.ready(&s, &self.sql.sweep).await.map_err(pg)?,
            );
            // A bounded number of batches per round keeps the transaction
            // short.
            for _ in 0..10 {
                let keys: Vec<String> = self
                    .run(&s, &record, &[&now, &batch])
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
                total += self
                    .run(&s, &delete, &[&keys, &now])
                    .await
                    .map_err(pg)?
                    .len() as u64;
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

/// The one row a statement returns.
fn first(rows: Vec<tokio_postgres::Row>, op: &'static str) -> Result<tokio_postgres::Row> {
    rows.into_iter()
        .next()
        .ok_or_else(|| Error::unexpected(op, "no row where one was expected"))
}
