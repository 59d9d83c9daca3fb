//! The SQL text of the PostgreSQL L2, built once per configured table with
//! validated, quoted names: the DDL, and every statement the store sends.

use tokio_postgres::types::Type;

use crate::ident::{qualified, quote_ident};
use crate::store::Durability;

/// One statement and the types of its parameters. It runs as a cached
/// prepared statement, or — behind a transaction pooler that cannot keep them
/// (PgBouncer before 1.21) — as one unnamed statement per call, which needs
/// the parameter types up front (`query_typed`: Parse, Bind and Execute in
/// one round trip, no session state).
pub(crate) struct Q {
    pub(crate) sql: String,
    pub(crate) types: &'static [Type],
}

impl Q {
    pub(crate) fn new(sql: impl Into<String>, types: &'static [Type]) -> Q {
        Q {
            sql: sql.into(),
            types,
        }
    }
}

pub(crate) static ADVISORY_XACT_LOCK: std::sync::LazyLock<Q> = std::sync::LazyLock::new(|| {
    Q::new("SELECT pg_advisory_xact_lock(hashtext($1))", &[Type::TEXT])
});
pub(crate) static TRY_ADVISORY_XACT_LOCK: std::sync::LazyLock<Q> = std::sync::LazyLock::new(|| {
    Q::new(
        "SELECT pg_try_advisory_xact_lock(hashtext($1))",
        &[Type::TEXT],
    )
});

/// How this table's writes announce themselves (PROTOCOL.md §3, §6): the
/// SQL every statement and function calls with `(channel, payload)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Announce {
    /// `pg_notify`, heard by LISTEN sessions.
    Notify,
    /// `<table>_announce`, which emits a transactional logical message for
    /// the relay (`pg_logical_emit_message(true, 'c3:' || channel, payload)`).
    Relay,
}

impl Announce {
    /// The transport the announce function's body implements.
    pub(crate) fn of_body(body: &str) -> Announce {
        if body.contains("pg_logical_emit_message") {
            Announce::Relay
        } else {
            Announce::Notify
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Announce::Notify => "LISTEN/NOTIFY",
            Announce::Relay => "the relay (logical decoding and NATS)",
        }
    }
}

/// The publication the relay's slot reads through: pgoutput needs one even
/// though c3 replicates no table, only logical messages.
pub(crate) const RELAY_PUBLICATION: &str = "c3_relay";

/// The SQL for one configured table, built once with validated, quoted names.
pub(crate) struct Sql {
    pub(crate) ddl: String,
    /// One notification per payload: `($1 channel, $2 payloads)`.
    pub(crate) notify: Q,
    pub(crate) get: Q,
    pub(crate) get_many: Q,
    pub(crate) set_one: Q,
    pub(crate) set_many: Q,
    pub(crate) set_many_notify: Q,
    pub(crate) delete: Q,
    pub(crate) clear: String,
    pub(crate) sweep_record: Q,
    pub(crate) sweep: Q,
    pub(crate) tags_replace: Q,
    pub(crate) tags_insert: Q,
    pub(crate) invalidate_tag: Q,
    pub(crate) get_for_load: Q,
    pub(crate) fence: Q,
    pub(crate) fill_records: Q,
    pub(crate) fill_lock: Q,
    pub(crate) fill: Q,
    pub(crate) record_deletes: Q,
    pub(crate) record_tag_deletes: Q,
    pub(crate) sweep_deleted: String,
}

/// The DDL c3 runs at start-up for `schema`.`table` (idempotent), for a DBA
/// or a migration tool when the application may not run DDL.
pub(crate) fn migration_sql(
    schema: &str,
    table: &str,
    durability: Durability,
    announce: Announce,
) -> String {
    Sql::new(schema, table, durability, announce).ddl
}

/// The quoted, schema-qualified name of the SQL function every write
/// announces through: `(channel text, payload text)`, `pg_notify` or a
/// logical message depending on the table's transport.
pub(crate) fn announce_function(schema: &str, table: &str) -> String {
    qualified(schema, &format!("{table}_announce"))
}

/// The quoted, schema-qualified name of the SQL function that deletes keys
/// (and tagged keys) and announces it, inside the caller's transaction.
pub(crate) fn invalidate_function(schema: &str, table: &str) -> String {
    qualified(schema, &format!("{table}_invalidate"))
}

/// Keys up to this long take the one-statement batch write.
pub(crate) const SHORT_KEY: usize = 200;

/// The server's clock in µs since the Unix epoch, as SQL.
pub(crate) const CLOCK_US: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// The announce function's DDL: created when absent, never replaced — its
/// body *is* the table's transport, chosen by whoever created it, and
/// changed only deliberately (README, "More than a few dozen replicas").
/// In relay mode it runs as its owner (SECURITY DEFINER), so writers need no
/// right to emit logical messages themselves; a superuser migration also
/// revokes that right from PUBLIC.
fn announce_ddl(ann: &str, announce: Announce) -> String {
    let (body, security, extra) = match announce {
        Announce::Notify => ("PERFORM pg_notify(channel, payload);", "", String::new()),
        Announce::Relay => (
            // The same limit as pg_notify's, with its error code: a payload
            // a NOTIFY table would refuse is refused here too.
            "IF octet_length(payload) >= 8000 THEN \
                RAISE EXCEPTION 'c3: payload too long (% bytes; under 8000)', octet_length(payload) \
                USING ERRCODE = '22023'; \
             END IF; \
             PERFORM pg_logical_emit_message(true, 'c3:' || channel, payload);",
            " SECURITY DEFINER SET search_path = pg_catalog, pg_temp",
            format!(
                "    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '{RELAY_PUBLICATION}') THEN
        CREATE PUBLICATION {RELAY_PUBLICATION};
    END IF;
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) FROM PUBLIC;
        REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC;
    END IF;
"
            ),
        ),
    };
    // The name is validated to [a-z0-9_] and quoted: it can sit in a literal.
    format!(
        "DO $c3$
BEGIN
    IF to_regprocedure('{ann}(text, text)') IS NULL THEN
        CREATE FUNCTION {ann}(channel text, payload text) RETURNS void LANGUAGE plpgsql{security}
            AS $f$ BEGIN {body} END $f$;
    END IF;
{extra}END
$c3$;
"
    )
}

impl Sql {
    pub(crate) fn new(
        schema: &str,
        table: &str,
        durability: Durability,
        announce: Announce,
    ) -> Sql {
        let t = qualified(schema, table);
        let ann = announce_function(schema, table);
        let announce_ddl = announce_ddl(&ann, announce);
        // What the statements below call per payload: LISTEN's tables call
        // pg_notify directly (the function would only add a call), relay
        // tables their announce function.
        let notify = match announce {
            Announce::Notify => "pg_notify".to_owned(),
            Announce::Relay => ann.clone(),
        };
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
{announce_ddl}CREATE OR REPLACE FUNCTION {inv}(channel text, keys text[], tags text[] DEFAULT '{{}}')
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
            PERFORM {ann}(channel, head || 'c');
            CONTINUE;
        END IF;
        line := v || ' ' || k;
        IF msg <> head || 'k' AND octet_length(msg) + 1 + octet_length(line) > 7999 THEN
            PERFORM {ann}(channel, msg);
            msg := head || 'k';
        END IF;
        msg := msg || E'\\n' || line;
    END LOOP;
    IF msg <> head || 'k' THEN
        PERFORM {ann}(channel, msg);
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
            notify: Q::new(
                format!("SELECT {notify}($1, p) FROM unnest($2::text[]) AS p"),
                &[Type::TEXT, Type::TEXT_ARRAY],
            ),
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
SELECT version, {notify}($6, $7 || E'\\n' || version || ' ' || $1) FROM up"
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
sent AS (SELECT {notify}($6, $7 || E'\\n' || string_agg(line, E'\\n' ORDER BY pos)) AS x \
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
