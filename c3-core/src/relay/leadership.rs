//! One active relay per slot. The leader holds `pg_try_advisory_lock` on a
//! session of its own, keyed by the slot's name; the others keep their
//! session open and try again every few hundred milliseconds (hot standby).
//! The leader streams only while that session answers: a relay that lost
//! it stops publishing at once, because another may already lead.
//!
//! PostgreSQL releases the lock when the session ends; a leader cut off by
//! the network is noticed by the server's TCP keepalives and user timeout,
//! which this session sets short. Its walsender lingers until
//! `wal_sender_timeout`; the next leader retries the slot meanwhile
//! ("replication slot … is active for PID", 55006).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::sleep;
use tracing::info;

use super::settings::{RelayStatus, Settings};

/// The leadership: the session holding the slot's advisory lock, and
/// whether it still answers.
pub(crate) struct Leadership {
    pub(crate) client: Arc<tokio_postgres::Client>,
    lost: watch::Receiver<Option<String>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the session stopped answering, with why.
    pub(crate) async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the leadership watcher stopped".to_owned(),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The lock's key: one leader per slot.
fn lock_key(slot: &str) -> String {
    format!("c3:relay:{slot}")
}

/// Connects and waits for the lock. `Ok(None)`: stopped while waiting.
pub(crate) async fn acquire(
    settings: &Settings,
    status: &Arc<watch::Sender<RelayStatus>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Leadership>, String> {
    let (client, connection) = tokio::time::timeout(
        settings.connect_timeout,
        settings
            .postgres
            .config
            .connect(settings.postgres.tls.clone()),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| format!("connecting: {}", crate::error::with_causes(&e)))?;
    let (lost_tx, lost) = watch::channel(None);
    let driver = tokio::spawn(async move {
        match connection.await {
            Ok(()) => "the leadership session closed".to_owned(),
            Err(e) => format!(
                "the leadership session failed: {}",
                crate::error::with_causes(&e)
            ),
        }
    });
    // The server must notice a leader that vanished quickly, or the lock
    // (and the next leader) waits for the OS's hours-long TCP timeouts.
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; \
             SET tcp_keepalives_count = 3; SET tcp_user_timeout = 5000",
        )
        .await
        .map_err(|e| format!("session settings: {e}"))?;
    let key = lock_key(&settings.slot);
    let mut waiting_logged = false;
    loop {
        let row = tokio::time::timeout(
            settings.connect_timeout,
            client.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key]),
        )
        .await
        .map_err(|_| "the lock query timed out".to_owned())?
        .map_err(|e| format!("the lock query: {e}"))?;
        if row.get::<_, bool>(0) {
            break;
        }
        if !waiting_logged {
            info!(target: "c3::relay", slot = %settings.slot, "another relay leads this slot; standing by");
            waiting_logged = true;
            status.send_modify(|s| s.leader = false);
        }
        tokio::select! {
            _ = sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return Ok(None),
        }
    }
    let client = Arc::new(client);
    let watcher = tokio::spawn(watch_session(
        Arc::clone(&client),
        driver,
        lost_tx,
        settings.slot.clone(),
        Arc::clone(status),
    ));
    Ok(Some(Leadership {
        client,
        lost,
        watcher,
    }))
}

/// Checks every second that the leadership session answers, and reads the
/// slot's lag meanwhile, in bytes and in time. Reports on `lost` when it
/// does not.
async fn watch_session(
    client: Arc<tokio_postgres::Client>,
    mut driver: tokio::task::JoinHandle<String>,
    lost: watch::Sender<Option<String>>,
    slot: String,
    status: Arc<watch::Sender<RelayStatus>>,
) {
    let mut clock = LagClock::default();
    let why = loop {
        tokio::select! {
            r = &mut driver => break r.unwrap_or_else(|e| format!("the session driver: {e}")),
            _ = sleep(Duration::from_secs(1)) => {}
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
        let check = client.query_opt(
            "SELECT (pg_current_wal_lsn() - '0/0')::bigint, \
                    (confirmed_flush_lsn - '0/0')::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &params,
        );
        match tokio::time::timeout(Duration::from_secs(5), check).await {
            Ok(Ok(row)) => {
                let positions = row.and_then(|r| {
                    let wal = u64::try_from(r.get::<_, Option<i64>>(0)?).ok()?;
                    let confirmed = u64::try_from(r.get::<_, Option<i64>>(1)?).ok()?;
                    Some((wal, confirmed))
                });
                let lag = positions.map(|(wal, confirmed)| {
                    let behind = clock.observe(Instant::now(), wal, confirmed);
                    (
                        wal.saturating_sub(confirmed),
                        u64::try_from(behind.as_millis()).unwrap_or(u64::MAX),
                    )
                });
                status.send_if_modified(|s| {
                    let (bytes, millis) = (lag.map(|l| l.0), lag.map(|l| l.1));
                    let changed = s.slot_lag_bytes != bytes || s.slot_lag_millis != millis;
                    s.slot_lag_bytes = bytes;
                    s.slot_lag_millis = millis;
                    changed
                });
            }
            Ok(Err(e)) => break format!("the leadership session: {e}"),
            Err(_) => break "the leadership session did not answer within 5s".to_owned(),
        }
    };
    let _ = lost.send(Some(why));
}

/// The slot's lag in time. PostgreSQL does not date WAL positions, so the
/// leader keeps what it reads every second — (when, the server's WAL
/// position) — and the lag is how long ago the newest sample the slot has
/// confirmed was taken: everything not yet acknowledged was written after
/// it. An upper bound on the age of the oldest unacknowledged change, to
/// within the sampling second (PostgreSQL's own lag tracker works this way);
/// zero when the slot has confirmed the server's position. While no sample
/// is confirmed yet, the age of the oldest one kept (a lower bound).
#[derive(Debug, Default)]
struct LagClock {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// Samples kept: an hour at one a second.
const LAG_SAMPLES: usize = 3_600;

impl LagClock {
    fn observe(&mut self, now: Instant, wal: u64, confirmed: u64) -> Duration {
        if confirmed >= wal {
            self.samples.clear();
            self.samples.push_back((now, wal));
            return Duration::ZERO;
        }
        self.samples.push_back((now, wal));
        if self.samples.len() > LAG_SAMPLES {
            self.samples.pop_front();
        }
        // Keep the newest sample at or below the confirmed position first.
        while self.samples.get(1).is_some_and(|&(_, at)| at <= confirmed) {
            self.samples.pop_front();
        }
        self.samples.front().map_or(Duration::ZERO, |&(when, _)| {
            now.saturating_duration_since(when)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_age_of_the_newest_confirmed_sample() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = LagClock::default();
        assert_eq!(c.observe(at(0), 100, 100), Duration::ZERO, "caught up");
        // Writes at 100..400; the slot stays at 100.
        assert_eq!(c.observe(at(1), 200, 100), Duration::from_secs(1));
        assert_eq!(c.observe(at(2), 300, 100), Duration::from_secs(2));
        assert_eq!(c.observe(at(3), 400, 100), Duration::from_secs(3));
        // The slot confirms up to 300 (the sample taken at 2 s): what is
        // left was written after 2 s.
        assert_eq!(c.observe(at(4), 400, 300), Duration::from_secs(2));
        assert_eq!(c.observe(at(5), 450, 350), Duration::from_secs(3));
        assert_eq!(
            c.observe(at(6), 450, 450),
            Duration::ZERO,
            "caught up again"
        );
        // Behind from the first sample on: the oldest sample's age.
        let mut c = LagClock::default();
        assert_eq!(c.observe(at(0), 500, 100), Duration::ZERO);
        assert_eq!(c.observe(at(7), 600, 100), Duration::from_secs(7));
    }
}
