//! Driving the LISTEN connections, separate from using the cache (as
//! tokio-postgres separates `Connection` from `Client`).
//!
//! Each node owns one dedicated connection that is never taken from the pool:
//! a pooled connection may be handed to someone else, and LISTEN state would go
//! with it. This task connects, LISTENs, feeds every payload to the
//! [`Coherency`] engine and watches the connection's health:
//!
//! * the connection reports an error or end of stream → it is gone;
//! * a heartbeat, a NOTIFY on a channel only this node listens to, is sent every
//!   `heartbeat_interval` and must come back within `heartbeat_timeout`. This
//!   proves the whole notification path works, and catches a half-open TCP link
//!   that would otherwise look healthy for as long as the OS's timeouts.
//!
//! On any loss L1 is purged and bypassed at once (a notification may already be
//! missing: PostgreSQL queues nothing for a disconnected listener). After
//! reconnecting and LISTENing again, L1 is purged once more before it is used.
//! With warm reconnect on, L1 is only bypassed, and after reconnecting the
//! change log tells which keys to drop (see [`crate::postgres::warm_reconnect`]); each
//! heartbeat's echo moves the mark that replay starts from.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_postgres::AsyncMessage;
use tracing::{debug, warn};

use crate::feed::Feed;
use crate::ident::quote_ident;
use crate::postgres::warm_reconnect::{self, Decision, Mark, WarmReconnect};
use crate::stats::Counters;

/// Settings for the Postgres listener task.
#[derive(Clone)]
pub(crate) struct ListenerSettings {
    pub(crate) channel: String,
    pub(crate) heartbeat_channel: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// How the LISTEN connection is secured (see `crate::tls`).
    pub(crate) tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub(crate) ssl_mode: crate::tls::SslMode,
    /// Warm reconnect, if on.
    pub(crate) warm_reconnect: Option<WarmReconnect>,
}

enum Event {
    Notification { channel: String, payload: String },
    Closed(Option<tokio_postgres::Error>),
}

/// Why a LISTEN session ended.
enum Ended {
    Lost(String),
    Shutdown,
}

/// Why LISTEN is not in effect, as the task last found it (published for
/// start-up, which must tell a listener that can never work from an outage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NotListening {
    /// Connecting, LISTEN or the probe failed; retried with backoff.
    Failed(String),
    /// LISTEN was accepted but the connection never heard its own
    /// notification: it goes through a transaction pooler, and will never
    /// work as configured.
    NoEcho,
}

impl std::fmt::Display for NotListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotListening::Failed(why) => f.write_str(why),
            NotListening::NoEcho => f.write_str(NO_ECHO),
        }
    }
}

impl From<String> for NotListening {
    fn from(why: String) -> Self {
        NotListening::Failed(why)
    }
}

/// Runs until `shutdown` turns true; then leaves the state at `Stopped`.
/// Publishes on `problem` why LISTEN is not in effect (`None` once it is).
pub(crate) async fn run_postgres(
    feed: Feed,
    config: tokio_postgres::Config,
    settings: ListenerSettings,
    problem: watch::Sender<Option<NotListening>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _guard = feed.panic_guard();
    let mut attempt: u32 = 0;
    let mut ever_connected = false;
    let mut rng = Jitter::new(feed.node_id());
    // Warm reconnect: the snapshot whose every transaction this node has
    // heard of (see `crate::postgres::warm_reconnect`).
    let mut mark: Option<Mark> = None;
    // When the last session was lost, for the log line when LISTEN is back.
    let mut lost_at: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        match connect(&config, &settings).await {
            Ok((client, mut events)) => {
                if ever_connected {
                    Counters::inc(&feed.counters().reconnects);
                }
                let outage = lost_at.take().map(|t| t.elapsed());
                problem.send_replace(None);
                let link = (&client, &mut events);
                mark = l1_back(&feed, link, &settings, mark.take(), outage).await;
                ever_connected = true;
                attempt = 0;
                debug!(target: "c3::listener", channel = %settings.channel, "listening");
                let ended =
                    session(&feed, client, events, &settings, &mut shutdown, &mut mark).await;
                match ended {
                    Ended::Shutdown => break,
                    Ended::Lost(why) => {
                        lost(&feed, &why, mark.is_some());
                        lost_at = Some(std::time::Instant::now());
                    }
                }
            }
            Err(why) => {
                attempt = attempt.saturating_add(1);
                problem.send_replace(Some(why.clone()));
                feed.retrying(attempt);
                warn!(target: "c3::listener", attempt, reason = %why, "could not (re)establish LISTEN");
            }
        }
        let delay = rng.backoff(attempt, settings.backoff_min, settings.backoff_max);
        tokio::select! {
            _ = sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
    feed.stopped();
}

/// L1 after (re)connecting: replayed from `mark` with warm reconnect on
/// (see [`catch_up`]), else purged and used again. Returns the next mark.
async fn l1_back(
    feed: &Feed,
    (client, events): (&tokio_postgres::Client, &mut mpsc::Receiver<Event>),
    settings: &ListenerSettings,
    mark: Option<Mark>,
    outage: Option<Duration>,
) -> Option<Mark> {
    if let Some(r) = &settings.warm_reconnect {
        let link = (client, events, settings.heartbeat_channel.as_str());
        return catch_up(feed, link, r, mark, outage).await;
    }
    feed.up();
    if let Some(outage) = outage {
        tracing::info!(target: "c3::listener", ?outage,
            "LISTEN is back; L1 purged (what changed meanwhile is unknown)");
    }
    None
}

/// A lost session: L1 off at once — kept for the replay when there is a
/// mark to replay from, purged otherwise.
fn lost(feed: &Feed, why: &str, warm: bool) {
    if warm {
        feed.down_keeping();
        warn!(target: "c3::listener", reason = %why, "listener connection lost; L1 bypassed until LISTEN is back and the change log is replayed");
    } else {
        feed.down();
        warn!(target: "c3::listener", reason = %why, "listener connection lost; L1 purged and bypassed until LISTEN is back");
    }
}

/// Brings L1 back after (re)connecting, with warm reconnect on: replays the
/// change log since `mark` and drops only what changed, or purges when the
/// log cannot prove what was missed. Returns the next mark (`None` if the
/// replay query failed: then the next reconnect purges).
async fn catch_up(
    feed: &Feed,
    (client, events, heartbeat_channel): (
        &tokio_postgres::Client,
        &mut mpsc::Receiver<Event>,
        &str,
    ),
    replay: &WarmReconnect,
    mark: Option<Mark>,
    outage: Option<Duration>,
) -> Option<Mark> {
    let started = Instant::now();
    let reconnecting = outage.is_some();
    // Notifications keep arriving while the replay runs; they are applied as
    // usual (L1 is not in use yet, but its versions must move). Left unread,
    // a burst would fill the channel, the driver would stop reading the
    // socket, and the replay's own answer would wait behind it.
    let observed = {
        let observe = warm_reconnect::observe(client, replay, mark.as_ref());
        tokio::pin!(observe);
        loop {
            tokio::select! {
                r = &mut observe => break r,
                ev = events.recv() => match ev {
                    Some(Event::Notification { channel, payload }) => {
                        if channel != heartbeat_channel {
                            feed.message(&payload);
                        }
                    }
                    Some(Event::Closed(_)) | None => {
                        break Err("the connection closed during the replay".to_owned());
                    }
                },
            }
        }
    };
    let seen = match observed {
        Ok(seen) => seen,
        Err(why) => {
            feed.up();
            if reconnecting {
                Counters::inc(&feed.counters().warm_reconnect_fallbacks);
                warn!(target: "c3::listener", reason = %why, ?outage, "LISTEN is back but the change log could not be replayed; L1 purged");
            }
            return None;
        }
    };
    match warm_reconnect::decide(mark.as_ref(), &seen, replay, feed.highest_version()) {
        Decision::Warm(changed) => {
            feed.up_dropping(&changed);
            Counters::inc(&feed.counters().warm_reconnects);
            feed.counters()
                .replayed_keys
                .fetch_add(changed.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if reconnecting {
                tracing::info!(target: "c3::listener", dropped = changed.len(),
                    kept = feed.l1_entries(), took = ?started.elapsed(), ?outage,
                    "LISTEN is back; L1 kept, dropped only what changed meanwhile");
            }
        }
        Decision::Purge(why) => {
            feed.up();
            if reconnecting {
                Counters::inc(&feed.counters().warm_reconnect_fallbacks);
                tracing::info!(target: "c3::listener", reason = why, ?outage, "LISTEN is back; L1 purged (the change log cannot prove what was missed)");
            }
        }
    }
    Some(Mark::from_observed(&seen))
}

async fn connect(
    config: &tokio_postgres::Config,
    settings: &ListenerSettings,
) -> Result<(tokio_postgres::Client, mpsc::Receiver<Event>), NotListening> {
    let (client, connection) = tokio::time::timeout(
        settings.connect_timeout,
        config.connect(settings.tls.clone()),
    )
    .await
    .map_err(|_| format!("connect timed out after {:?}", settings.connect_timeout))?
    .map_err(|e| {
        crate::tls::describe("the LISTEN connection", settings.ssl_mode, &e)
            .unwrap_or_else(|| format!("connect failed: {e}"))
    })?;
    // Bounded: if the engine falls behind, the driver stops reading the socket
    // and PostgreSQL buffers for us, instead of this process growing without
    // bound during a notification flood.
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(drive(connection, tx));
    let listen = format!(
        "LISTEN {}; LISTEN {}",
        quote_ident(&settings.channel),
        quote_ident(&settings.heartbeat_channel)
    );
    tokio::time::timeout(settings.connect_timeout, client.batch_execute(&listen))
        .await
        .map_err(|_| "LISTEN timed out".to_owned())?
        .map_err(|e| format!("LISTEN failed: {e}"))?;
    prove_delivery(config, settings, &mut rx).await?;
    Ok((client, rx))
}

/// Proves the connection receives notifications before anything relies
/// on it: a transaction pooler accepts LISTEN and then never delivers. The
/// probe is sent from a second, short-lived session — through a pooler it
/// could otherwise land on the very server session that ran LISTEN and
/// be delivered by chance. What arrives before the echo is dropped: L1 is
/// off until this connection is accepted, and is purged when it comes on.
async fn prove_delivery(
    config: &tokio_postgres::Config,
    settings: &ListenerSettings,
    rx: &mut mpsc::Receiver<Event>,
) -> Result<(), NotListening> {
    let send_probe = async {
        let (prober, conn) = config
            .connect(settings.tls.clone())
            .await
            .map_err(|e| format!("could not open the probe connection: {e}"))?;
        let driver = tokio::spawn(conn);
        let hb: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&settings.heartbeat_channel];
        let sent = prober
            .execute("SELECT pg_notify($1, 'probe')", &hb)
            .await
            .map(|_| ())
            .map_err(|e| format!("the probe notification failed: {e}"));
        drop(prober);
        let _ = driver.await;
        sent
    };
    let echoed = async {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Notification { channel, payload }
                    if channel == settings.heartbeat_channel && payload == "probe" =>
                {
                    return true;
                }
                Event::Notification { .. } => {}
                Event::Closed(_) => return false,
            }
        }
        false
    };
    // Notifications wait in `rx` while the probe is sent.
    tokio::time::timeout(settings.connect_timeout, send_probe)
        .await
        .map_err(|_| "the probe connection timed out".to_owned())??;
    match tokio::time::timeout(probe_wait(settings.heartbeat_timeout), echoed).await {
        Ok(true) => Ok(()),
        _ => Err(NotListening::NoEcho),
    }
}

/// Drives the LISTEN connection, forwarding its notifications and its end.
/// The `Connection` future's own `poll()` discards notifications, so the
/// connection is driven message by message here.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, tx: mpsc::Sender<Event>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let ev = Event::Notification {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let _ = tx.send(Event::Closed(Some(e))).await;
                return;
            }
            None => {
                let _ = tx.send(Event::Closed(None)).await;
                return;
            }
        }
    }
}

/// How long a new LISTEN connection waits for its probe's echo.
pub(crate) fn probe_wait(heartbeat_timeout: Duration) -> Duration {
    heartbeat_timeout.max(Duration::from_secs(1))
}

/// Why a LISTEN connection that never hears its own notification is refused.
const NO_ECHO: &str = "LISTEN succeeded but the connection did not receive its own notification: it is probably going through a transaction pooler (e.g. PgBouncer with pool_mode=transaction), which cannot carry LISTEN. Point the listener at PostgreSQL directly or through a session pooler (C3Builder::listen_postgres, C3_LISTEN_DATABASE_URL)";

async fn session(
    feed: &Feed,
    client: tokio_postgres::Client,
    mut events: mpsc::Receiver<Event>,
    settings: &ListenerSettings,
    shutdown: &mut watch::Receiver<bool>,
    mark: &mut Option<Mark>,
) -> Ended {
    let client = Arc::new(client);
    // Nonces are this session's alone: an echo from an earlier session, or
    // any payload someone else sends on the channel, proves nothing.
    let session_id = crate::key::fnv1a(format!("{:?}", std::time::SystemTime::now()).as_bytes())
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ (Arc::as_ptr(&client) as usize as u64);
    let mut nonce: u64 = 0;
    let mut awaiting: Option<(String, Instant)> = None;
    let mut next_beat = Instant::now() + settings.heartbeat_interval;
    // Warm reconnect: each heartbeat's snapshot, and the last nonce echoed;
    // when they are of the same heartbeat, its snapshot is the new mark.
    let (snaps_tx, mut snaps) = mpsc::channel::<(String, String, i64)>(4);
    let mut snapshot: Option<(String, String, i64)> = None;
    let mut echoed: Option<String> = None;
    loop {
        let wake = awaiting
            .as_ref()
            .map_or(next_beat, |(_, deadline)| *deadline);
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ended::Shutdown,
            ev = events.recv() => match ev {
                Some(Event::Notification { channel, payload }) => {
                    if channel == settings.heartbeat_channel {
                        if awaiting.as_ref().is_some_and(|(p, _)| *p == payload) {
                            awaiting = None;
                        }
                        echoed = Some(payload);
                    } else {
                        feed.message(&payload);
                        // Data arriving proves the link is not half-open. A
                        // long burst (100k notifications from one commit)
                        // delays our echo behind it; that must not count as
                        // a dead connection.
                        if let Some((_, deadline)) = &mut awaiting {
                            *deadline = (*deadline).max(Instant::now() + settings.heartbeat_timeout);
                        }
                    }
                }
                Some(Event::Closed(e)) => {
                    // With its causes: "db error" alone hides the server's
                    // own words (e.g. "terminating connection due to
                    // administrator command").
                    return Ended::Lost(e.map_or_else(
                        || "connection closed".to_owned(),
                        |e| crate::error::with_causes(&e),
                    ));
                }
                None => return Ended::Lost("connection driver stopped".to_owned()),
            },
            Some(snap) = snaps.recv() => snapshot = Some(snap),
            _ = sleep_until(wake) => {
                if awaiting.is_some() {
                    return Ended::Lost(format!(
                        "heartbeat not echoed within {:?}", settings.heartbeat_timeout
                    ));
                }
                nonce += 1;
                let payload = format!("{session_id:016x}-{nonce}");
                awaiting = Some((payload.clone(), Instant::now() + settings.heartbeat_timeout));
                next_beat = Instant::now() + settings.heartbeat_interval;
                send_heartbeat(&client, &settings.heartbeat_channel, payload, &snaps_tx);
            }
        }
        advance_mark(feed, &mut snapshot, echoed.as_deref(), mark);
    }
}

/// The snapshot of the heartbeat last echoed is the new mark.
fn advance_mark(
    feed: &Feed,
    snapshot: &mut Option<(String, String, i64)>,
    echoed: Option<&str>,
    mark: &mut Option<Mark>,
) {
    let Some((nonce, snap, at_us)) = snapshot.as_ref() else {
        return;
    };
    if echoed != Some(nonce.as_str()) {
        return;
    }
    if let Some(m) = mark.as_mut() {
        m.snapshot.clone_from(snap);
        m.at_us = *at_us;
        Counters::inc(&feed.counters().replay_marks);
    }
    *snapshot = None;
}

/// Sends a heartbeat from a separate task: awaiting the reply in the session
/// would stop it draining its events, which the reply may be queued behind.
/// The snapshot is taken in the heartbeat's own transaction: every notifying
/// transaction visible in it is delivered before the echo (see
/// `crate::postgres::warm_reconnect`).
fn send_heartbeat(
    client: &Arc<tokio_postgres::Client>,
    channel: &str,
    payload: String,
    snaps: &mpsc::Sender<(String, String, i64)>,
) {
    let (client, channel, snaps) = (Arc::clone(client), channel.to_owned(), snaps.clone());
    tokio::spawn(async move {
        let sent = client
            .query_one(HEARTBEAT, &[&channel, &payload])
            .await
            .and_then(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, i64>(2)?)));
        if let Ok((snap, at_us)) = sent {
            let _ = snaps.send((payload, snap, at_us)).await;
        }
    });
}

/// A heartbeat: a notification to this node alone, the snapshot of its
/// transaction (the mark it proves once echoed), and the server's clock —
/// a mark's age is measured on it, which keeps running while this host is
/// suspended (a monotonic clock here would not).
const HEARTBEAT: &str = "SELECT pg_current_snapshot()::text, pg_notify($1, $2), \
(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// Exponential backoff with jitter, so a fleet that lost its database does not
/// reconnect in lockstep. A tiny xorshift avoids a dependency on `rand`.
struct Jitter(u64);

impl Jitter {
    fn new(seed: &str) -> Self {
        // Never zero: xorshift would stay there.
        Jitter((crate::key::fnv1a(seed.as_bytes()) ^ u64::from(std::process::id())) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn backoff(&mut self, attempt: u32, min: Duration, max: Duration) -> Duration {
        let exp = min.saturating_mul(1u32 << attempt.min(16)).min(max);
        // Uniform in [exp/2, exp].
        let half = exp / 2;
        let extra = self.next() % (half.as_micros() as u64 + 1);
        half + Duration::from_micros(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let mut j = Jitter::new("n");
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = j.backoff(attempt, min, max);
            assert!(d <= max, "{d:?}");
            assert!(d >= min.saturating_mul(1u32 << attempt.min(16)).min(max) / 2);
        }
    }
}
