//! Warm reconnect: after a lost LISTEN connection, drop only what changed.
//!
//! PostgreSQL queues nothing for a listener that is not connected, so a node
//! that lost its connection cannot know from notifications what it missed.
//! The L2 table can tell it: every row carries the `xid8` of the transaction
//! that wrote it, and every deletion is recorded with the deleting
//! transaction's (the records fills already need, PROTOCOL.md §2 "Fills").
//! What a node needs is a **mark**: a snapshot whose every transaction it has
//! provably heard of. Then "what did I miss?" is one query: the keys of rows
//! and deletion records written by transactions not visible in the mark.
//!
//! # The mark (PROTOCOL.md §4.1 has the argument in full)
//!
//! Each heartbeat is `SELECT pg_current_snapshot(), pg_notify(<own channel>,
//! <nonce>)`: one transaction, whose snapshot `S` is taken before it commits.
//! Every transaction visible in `S` committed before `S` was taken, so it
//! queued its notifications before the heartbeat queued its own — and
//! PostgreSQL delivers a listener's notifications in queue order. When the
//! heartbeat's echo arrives, every notifying transaction visible in `S` has
//! been delivered (or was accounted for when this session began): `S` is the
//! new mark.
//!
//! # WarmReconnect
//!
//! While disconnected the node keeps L1's entries but does not use them (nor
//! add to them), and voids every fill in flight. After LISTEN is back and its
//! probe has echoed — so every transaction committing from now on will be
//! delivered — one statement takes a snapshot `R` and lists the keys changed
//! by transactions not visible in the mark. Those are dropped, and L1 is used
//! again, with `R` as the next mark: what is visible in `R` was either heard
//! before the loss, or replayed.
//!
//! When the log cannot prove it is complete, the node purges L1 as before:
//! no mark yet, a gap longer than the window the deletion records are kept
//! for, another cluster or timeline (a failover may have lost transactions
//! this node heard of), a restarted server with an `UNLOGGED` table (a crash
//! empties it, log included), a clear, more changes than are worth listing,
//! or a replay query that failed. Notifications that leave nothing in the
//! table (bare keys, `i` messages from foreign clients) cannot be replayed:
//! warm reconnect is opt-in, for deployments whose every invalidator goes
//! through the table or the invalidation function.

use std::time::Duration;

use crate::ident::qualified;

/// How a node replays the change log, when warm reconnect is on.
#[derive(Clone, Debug)]
pub(crate) struct WarmReconnect {
    /// The statement (see `postgres::replay_sql`).
    pub(crate) sql: String,
    /// The table's qualified name, for its persistence.
    pub(crate) table: String,
    /// The longest gap replayed: well inside the deletion records' retention.
    pub(crate) window: Duration,
    /// More changed keys than this and a purge is cheaper than the list.
    pub(crate) max_keys: usize,
    /// Bound on the replay statement.
    pub(crate) timeout: Duration,
}

/// How long deletion records are kept (the sweeper's retention, in
/// `postgres::store`), and the longest gap a node replays: half of it, so
/// a transaction may stay open for up to half an hour between recording a
/// deletion and committing without its record being swept before a replay.
pub(crate) const WINDOW: Duration = Duration::from_secs(30 * 60);

/// Who answered: a replay is only valid against the same history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Server {
    system: String,
    timeline: String,
    started: String,
    unlogged: bool,
}

/// A snapshot whose every transaction this node has heard of, and when
/// (the server's clock, µs since the Unix epoch).
#[derive(Clone, Debug)]
pub(crate) struct Mark {
    pub(crate) snapshot: String,
    pub(crate) at_us: i64,
    pub(crate) server: Server,
}

/// What the replay statement saw.
#[derive(Debug)]
pub(crate) struct Observed {
    pub(crate) snapshot: String,
    pub(crate) server: Server,
    /// Keys changed since the mark given (`None`: no mark was given).
    pub(crate) changed: Option<Vec<String>>,
    /// The version sequence's last value.
    pub(crate) sequence: u64,
    /// The server's clock when the statement ran (µs since the epoch).
    pub(crate) now_us: i64,
}

/// What to do with L1 after a reconnect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Drop these keys and use L1 again.
    Warm(Vec<String>),
    /// Drop all of L1, for this reason.
    Purge(&'static str),
}

/// Runs the replay statement on the (new) LISTEN connection.
pub(crate) async fn observe(
    client: &tokio_postgres::Client,
    replay: &WarmReconnect,
    mark: Option<&Mark>,
) -> Result<Observed, String> {
    let limit = i64::try_from(replay.max_keys.saturating_add(1)).unwrap_or(i64::MAX);
    let snapshot = mark.map(|m| m.snapshot.as_str());
    let row = tokio::time::timeout(
        replay.timeout,
        client.query_one(&replay.sql, &[&snapshot, &limit, &replay.table]),
    )
    .await
    .map_err(|_| format!("the replay query timed out after {:?}", replay.timeout))?
    .map_err(|e| format!("the replay query failed: {e}"))?;
    let text = |i: usize| -> Result<String, String> {
        row.try_get::<_, Option<String>>(i)
            .map_err(|e| format!("the replay query's column {i}: {e}"))
            .map(Option::unwrap_or_default)
    };
    Ok(Observed {
        snapshot: text(0)?,
        server: Server {
            system: text(1)?,
            timeline: text(2)?,
            started: text(3)?,
            unlogged: text(4)? == "u",
        },
        changed: row
            .try_get(5)
            .map_err(|e| format!("the replay query's keys: {e}"))?,
        sequence: text(6)?.parse().unwrap_or(0),
        now_us: text(7)?
            .parse()
            .map_err(|e| format!("the replay query's clock: {e}"))?,
    })
}

/// Whether the log proves what this node missed since `mark`; `highest`
/// is the highest version this node has applied.
pub(crate) fn decide(
    mark: Option<&Mark>,
    seen: &Observed,
    replay: &WarmReconnect,
    highest: u64,
) -> Decision {
    let Some(mark) = mark else {
        return Decision::Purge("no mark yet");
    };
    let window_us = i64::try_from(replay.window.as_micros()).unwrap_or(i64::MAX);
    if seen.now_us.saturating_sub(mark.at_us) > window_us {
        return Decision::Purge("disconnected longer than the change log's window");
    }
    if mark.server.system != seen.server.system || mark.server.timeline != seen.server.timeline {
        return Decision::Purge("another cluster or timeline (a failover?)");
    }
    if seen.sequence < highest {
        // The server hands out versions this node has already seen: it
        // lost commits this node heard of (a failover with asynchronous
        // replication). Later writes would look older than L1's copies.
        return Decision::Purge("the version sequence is behind this node (another history)");
    }
    if seen.server.unlogged && mark.server.started != seen.server.started {
        return Decision::Purge("the server restarted and the table is unlogged");
    }
    let Some(changed) = &seen.changed else {
        return Decision::Purge("no change list");
    };
    if changed.len() > replay.max_keys {
        return Decision::Purge("more changes than worth replaying");
    }
    if changed.iter().any(String::is_empty) {
        return Decision::Purge("the cache was cleared");
    }
    Decision::Warm(changed.clone())
}

impl Mark {
    /// The mark a replay (or the first connection) leaves: its own snapshot.
    pub(crate) fn from_observed(seen: &Observed) -> Mark {
        Mark {
            snapshot: seen.snapshot.clone(),
            at_us: seen.now_us,
            server: seen.server.clone(),
        }
    }
}

/// The change-log query a reconnecting node runs on its LISTEN connection
/// (see `crate::postgres::warm_reconnect`): in one statement, so one snapshot, the server's
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server(system: &str, timeline: &str, started: &str, unlogged: bool) -> Server {
        Server {
            system: system.into(),
            timeline: timeline.into(),
            started: started.into(),
            unlogged,
        }
    }

    fn replay() -> WarmReconnect {
        WarmReconnect {
            sql: String::new(),
            table: String::new(),
            window: Duration::from_secs(60),
            max_keys: 3,
            timeout: Duration::from_secs(1),
        }
    }

    fn seen(server: Server, changed: &[&str]) -> Observed {
        Observed {
            snapshot: "10:10:".into(),
            server,
            changed: Some(changed.iter().map(|s| (*s).to_owned()).collect()),
            sequence: 100,
            now_us: 1_000_000_000,
        }
    }

    /// `decide` for a node whose highest version seen is 100.
    fn dec(mark: Option<&Mark>, seen: &Observed, replay: &WarmReconnect) -> Decision {
        decide(mark, seen, replay, 100)
    }

    #[test]
    fn a_sequence_behind_what_the_node_has_seen_purges() {
        let s = server("1", "1", "t0", false);
        let mut behind = seen(s.clone(), &["a"]);
        behind.sequence = 99;
        assert!(matches!(
            dec(Some(&mark(s)), &behind, &replay()),
            Decision::Purge(_)
        ));
    }

    fn mark(server: Server) -> Mark {
        Mark {
            snapshot: "5:5:".into(),
            at_us: 1_000_000_000,
            server,
        }
    }

    #[test]
    fn the_same_history_replays_exactly_the_changed_keys() {
        let s = server("1", "1", "t0", false);
        let d = dec(Some(&mark(s.clone())), &seen(s, &["a", "b"]), &replay());
        assert_eq!(d, Decision::Warm(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn a_logged_table_survives_a_restart() {
        let d = dec(
            Some(&mark(server("1", "1", "t0", false))),
            &seen(server("1", "1", "t1", false), &["a"]),
            &replay(),
        );
        assert_eq!(d, Decision::Warm(vec!["a".into()]));
    }

    #[test]
    fn whatever_the_log_cannot_prove_purges() {
        let s = server("1", "1", "t0", false);
        let r = replay();
        let purged = |d: Decision| matches!(d, Decision::Purge(_));
        assert!(purged(dec(None, &seen(s.clone(), &[]), &r)));
        assert!(purged(dec(
            Some(&mark(s.clone())),
            &seen(server("2", "1", "t0", false), &[]),
            &r
        )));
        assert!(purged(dec(
            Some(&mark(s.clone())),
            &seen(server("1", "2", "t0", false), &[]),
            &r
        )));
        let unlogged = server("1", "1", "t0", true);
        assert!(purged(dec(
            Some(&mark(unlogged)),
            &seen(server("1", "1", "t1", true), &[]),
            &r
        )));
        assert!(purged(dec(
            Some(&mark(s.clone())),
            &seen(s.clone(), &["a", "b", "c", "d"]),
            &r
        )));
        assert!(purged(dec(
            Some(&mark(s.clone())),
            &seen(s.clone(), &["a", ""]),
            &r
        )));
        // Older than the window on the server's clock (61 s of a 60 s one).
        let mut old = mark(s.clone());
        old.at_us -= 61_000_000;
        assert!(purged(dec(Some(&old), &seen(s, &[]), &r)));
    }
}
