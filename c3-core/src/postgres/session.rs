//! One operation's connection: a pooled session that is closed, never
//! returned, when the operation does not finish — and the bounds every c3
//! transaction begins with (PROTOCOL.md §2, "Bounded transactions").

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use super::sql::Q;
use crate::error::{Error, Result};

/// The least time an operation must have left for c3 to send anything:
/// below it, the server's bounds could not sit below the caller's deadline.
const LEAST_LEFT: Duration = Duration::from_millis(3);

/// How long a transaction may take when no deadline is in scope (only
/// start-up's schema step, which runs its own timeout).
const NO_DEADLINE: Duration = Duration::from_secs(60);

/// The time the running L2 operation has left (see `crate::store::deadline`);
/// an error, and nothing sent, when it has none.
pub(crate) fn time_left(op: &'static str) -> Result<Duration> {
    let Some(deadline) = crate::store::deadline() else {
        return Ok(NO_DEADLINE);
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left < LEAST_LEFT {
        return Err(Error::timeout(op, left));
    }
    Ok(left)
}

pub(crate) fn millis(d: Duration) -> u128 {
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
pub(crate) fn begin_sql(op: &'static str, lock_wait: Option<Duration>) -> Result<String> {
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
pub(crate) fn commit_sql(op: &'static str) -> Result<String> {
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
pub(crate) struct Session {
    conn: Option<deadpool_postgres::Object>,
    /// Unnamed statements instead of cached prepared ones (see [`Q`]).
    unnamed: bool,
}

impl Session {
    pub(crate) fn new(conn: deadpool_postgres::Object, unnamed: bool) -> Self {
        Session {
            conn: Some(conn),
            unnamed,
        }
    }

    /// The operation is over and the connection is idle, outside any
    /// transaction: it may serve the next one.
    pub(crate) fn done(mut self) {
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
pub(crate) struct Ready<'a> {
    q: &'a Q,
    stmt: Option<tokio_postgres::Statement>,
}

impl Session {
    /// Prepares `q` on `s` (cached per connection), unless statements are
    /// unnamed (see [`Q`]). Pipelined statements must be ready first: a
    /// statement still being prepared would be sent after the ones polled
    /// behind it.
    pub(crate) async fn ready<'q>(
        &self,
        q: &'q Q,
    ) -> std::result::Result<Ready<'q>, tokio_postgres::Error> {
        let stmt = if self.unnamed {
            None
        } else {
            Some(self.prepare_cached(&q.sql).await?)
        };
        Ok(Ready { q, stmt })
    }

    /// Sends a ready statement; its request leaves on the first poll.
    pub(crate) async fn run(
        &self,
        r: &Ready<'_>,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        match &r.stmt {
            Some(stmt) => self.query(stmt, params).await,
            None => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                    .iter()
                    .copied()
                    .zip(r.q.types.iter().cloned())
                    .collect();
                self.query_typed(&r.q.sql, &typed).await
            }
        }
    }

    /// Runs `q` on `s`, outside any pipeline.
    pub(crate) async fn rows(
        &self,
        q: &Q,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let r = self.ready(q).await?;
        self.run(&r, params).await
    }

    /// [`rows`](Self::rows) for a statement that returns exactly one row.
    pub(crate) async fn one(
        &self,
        q: &Q,
        params: &[&(dyn ToSql + Sync)],
        op: &'static str,
    ) -> Result<tokio_postgres::Row> {
        first(
            self.rows(q, params)
                .await
                .map_err(|e| Error::postgres(op, e))?,
            op,
        )
    }

    /// One transaction in one round trip: the bounds, `q`, COMMIT, sent
    /// together (see [`begin_sql`]). Returns `q`'s rows.
    pub(crate) async fn one_trip(
        &self,
        q: &Q,
        params: &[&(dyn ToSql + Sync)],
        op: &'static str,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let pg = |e| Error::postgres(op, e);
        let begin = begin_sql(op, None)?;
        let r = self.ready(q).await.map_err(pg)?;
        // `biased`: polled, hence sent, in this order. Should the statement
        // fail, the COMMIT behind it answers ROLLBACK.
        let (b, rows, c) = tokio::join!(
            biased;
            self.batch_execute(&begin),
            self.run(&r, params),
            self.batch_execute("COMMIT"),
        );
        b.map_err(pg)?;
        let rows = rows.map_err(pg)?;
        c.map_err(pg)?;
        Ok(rows)
    }
}

/// The one row a statement returns.
pub(crate) fn first(
    rows: Vec<tokio_postgres::Row>,
    op: &'static str,
) -> Result<tokio_postgres::Row> {
    rows.into_iter()
        .next()
        .ok_or_else(|| Error::unexpected(op, "no row where one was expected"))
}
