//! Streaming, while leading: decode the slot, publish each c3 message of
//! each commit, in commit order, and acknowledge to PostgreSQL only what
//! NATS has confirmed.
//!
//! *Confirmed* means: after the commit's messages, the relay publishes a
//! token on an inbox only it subscribes to, and the token came back. A
//! NATS server handles one connection's messages in order, so by then it
//! has routed every message before the token to every subscriber. (A core
//! NATS flush only proves the bytes left this process.) Then — and only
//! then — the commit's end LSN is reported as flushed: the slot may drop
//! WAL up to it. A relay that dies before that leaves the commit to be
//! decoded again; nodes apply duplicates idempotently (versions).
//!
//! A commit goes out once it is visible (see [`visible`]); while the relay
//! checks, the stream goes on, and what is decoded meanwhile goes out
//! together next — batches follow the load with no timer to tune.
//!
//! When the stream is idle, keepalives are acknowledged with the server's
//! WAL end, so a quiet database does not keep WAL for the slot; only when
//! no transaction is open and everything published was confirmed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant, sleep_until};
use tracing::{info, warn};

use super::leadership::Leadership;
use super::settings::{RelayStatus, Settings};
use super::slot;
use super::wire;

/// Why streaming stopped.
pub(crate) enum Ended {
    /// The relay was asked to stop.
    Stopped,
    /// The leadership session stopped answering: another relay may lead.
    LostLead(String),
    /// The stream or NATS failed; `streamed`: it had started.
    Failed { why: String, streamed: bool },
}

/// Sets up the slot, opens the replication session and streams until
/// something ends it.
pub(crate) async fn run(
    settings: &Settings,
    lead: &mut Leadership,
    nats: &async_nats::Client,
    events: &mut mpsc::UnboundedReceiver<async_nats::Event>,
    status: &Arc<watch::Sender<RelayStatus>>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let failed = |why: String| Ended::Failed {
        why,
        streamed: false,
    };
    let prepared = match slot::prepare(&lead.client, &settings.slot, &settings.publication).await {
        Ok(p) => p,
        Err(why) => return failed(why),
    };
    let started = tokio::time::timeout(settings.connect_timeout, start(settings)).await;
    let (mut client, system) = match started {
        Ok(Ok(c)) => c,
        Ok(Err(why)) => return failed(why),
        Err(_) => return failed("starting replication timed out".to_owned()),
    };
    // Whatever NATS reported before now concerns streams that are over.
    while events.try_recv().is_ok() {}
    let inbox = nats.new_inbox();
    let mut confirms = match nats.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => return failed(format!("subscribing to the confirmation inbox: {e}")),
    };
    match tokio::time::timeout(settings.connect_timeout, nats.flush()).await {
        Ok(Ok(())) => {}
        _ => return failed("NATS is not connected".to_owned()),
    }
    // A reconnect is seen here before its event arrives: NATS' event
    // callback runs on another task, so an echo through the new connection
    // can come first. Nothing published on the old one is confirmed by it.
    let stats = nats.statistics();
    let connects = stats.connects.load(std::sync::atomic::Ordering::SeqCst);
    let reconnected = || stats.connects.load(std::sync::atomic::Ordering::SeqCst) != connects;
    // What one message may hold here: NATS refuses (client-side, before
    // sending) a message over the server's `max_payload`, headers included,
    // and a refused publish would restart the stream on the same commit.
    let limits = Limits::for_server(nats.server_info().max_payload);
    let epoch = new_epoch();
    status.send_modify(|s| {
        s.epoch = Some(epoch.clone());
        s.epochs += 1;
        s.slots_created += u64::from(prepared.created);
        s.last_error = None;
    });
    info!(target: "c3::relay", slot = %settings.slot, %epoch, system = %system.0, timeline = system.1,
        created = prepared.created, "streaming in a new epoch");
    let mut s = Stream {
        epoch,
        subject_prefix: &settings.nats.subject_prefix,
        limits,
        window: settings.batch_window,
        seqs: HashMap::new(),
        pending: Vec::new(),
        gathering: Batches::default(),
        checking: Batches::default(),
        wake_at: None,
        last_publish: None,
        decoded: Lsn(0),
        in_transaction: false,
        xid: 0,
        published: Lsn(0),
        confirmed: Lsn(0),
        sync: None,
        token: 0,
    };
    // The visibility check of `s.checking`, while it runs. The stream goes
    // on meanwhile: commits decoded in the meantime gather for the next
    // message, so batches grow with the load and nothing waits when idle.
    let mut check: Option<Check> = None;
    let mut next_sync = Instant::now();
    // When the confirmation in flight is given up on: a token that never
    // comes back (a server that refuses the relay's publish to its inbox
    // answers with an error and keeps the connection) would otherwise hold
    // every acknowledgement back, and the slot's WAL would grow unseen.
    let mut sync_deadline = Instant::now();
    // Successive "not yet visible" answers: the next look waits longer.
    let mut rechecks = 0u32;
    let ended = loop {
        if check.is_none() {
            check = s.next_check(&lead.client, Instant::now());
        }
        let want_sync = s.sync.is_none() && s.published > s.confirmed;
        tokio::select! {
            biased;
            _ = stop.changed() => break Ended::Stopped,
            why = lead.lost() => break Ended::LostLead(why),
            Some(event) = events.recv() => {
                if let async_nats::Event::Disconnected | async_nats::Event::Closed = event {
                    // What the client held may never reach the server:
                    // start over from the last confirmed position.
                    break Ended::Failed { why: format!("NATS {event}"), streamed: true };
                }
            }
            Some(echo) = confirms.next() => {
                if reconnected() {
                    break Ended::Failed { why: "NATS reconnected".to_owned(), streamed: true };
                }
                if let Some(lsn) = s.confirmed_by(&echo.payload) {
                    client.update_applied_lsn(lsn);
                    status.send_modify(|st| st.acked_lsn = lsn.as_u64());
                }
            }
            visible = async { check.as_mut().expect("guarded by is_some").await }, if check.is_some() => {
                check = None;
                match visible {
                    Ok(true) => {
                        rechecks = 0;
                        if let Err(why) = s.publish(nats, status).await {
                            break Ended::Failed { why, streamed: true };
                        }
                    }
                    // Not yet: look again shortly — usually a matter of
                    // microseconds. Past 2 ms of looking (a synchronous
                    // standby holding commits back), look less often, up to
                    // every 5 ms, rather than query the primary 5,000 times a
                    // second.
                    Ok(false) => {
                        let wait = Duration::from_micros(200) * 2u32.pow(rechecks.saturating_sub(10).min(5));
                        rechecks += 1;
                        s.wake_at = Some(Instant::now() + wait.min(Duration::from_millis(5)));
                    }
                    Err(why) => break Ended::Failed { why, streamed: true },
                }
            }
            event = client.recv() => match event {
                Ok(Some(event)) => s.apply(event, &client, status),
                Ok(None) => break Ended::Failed { why: "the replication stream ended".to_owned(), streamed: true },
                Err(e) => break Ended::Failed { why: format!("the replication stream: {e}"), streamed: true },
            },
            _ = sleep_until(s.wake_at.unwrap_or(next_sync)), if s.wake_at.is_some() && check.is_none() => {}
            _ = sleep_until(sync_deadline), if s.sync.is_some() => {
                break Ended::Failed {
                    why: format!(
                        "NATS did not confirm the relay's publishes within {:?} (may its user publish and \
                         subscribe to _INBOX.>?)",
                        settings.connect_timeout
                    ),
                    streamed: true,
                };
            }
            _ = sleep_until(next_sync), if want_sync => {
                s.token += 1;
                s.sync = Some((s.token, s.published));
                sync_deadline = Instant::now() + settings.connect_timeout;
                if let Err(e) = nats.publish(inbox.clone(), s.token.to_string().into()).await {
                    break Ended::Failed { why: format!("NATS publish: {e}"), streamed: true };
                }
                next_sync = Instant::now() + settings.ack_interval;
            }
        }
    };
    // Nothing more is acknowledged; the session ends with the client.
    client.stop();
    ended
}

/// A visibility check in flight (see [`visible`]).
type Check = Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;

/// Whether every transaction in `xids` (32-bit ids, as decoding reports
/// them) is visible to a new snapshot. Decoding can deliver a commit before
/// the committing backend made it visible — the commit record is flushed
/// first, the transaction leaves the running set after — and a node that
/// heard of the write and read L2 in between would keep the old row in L1
/// with nothing left to evict it (found by the relay history: a read that
/// began after the node applied a write returned the value before it, while
/// the writer still waited for its commit's reply). NOTIFY is delivered
/// only once the transaction is visible; the relay publishes no sooner.
async fn visible(pg: Arc<tokio_postgres::Client>, xids: Vec<i64>) -> Result<bool, String> {
    // A 32-bit id is widened to the 64-bit id nearest the snapshot's xmax:
    // xmax plus the signed 32-bit distance from xmax's low half to it (ids
    // in use lie within 2³¹ of the next one). The id being checked may well
    // be *above* xmax — committed, not yet visible, while an older one still
    // runs — and must stay there, where it reads as not visible; taking an
    // id above xmax's low half for one of the previous epoch (as this did)
    // put it below xmin, where every id reads as visible, once the cluster
    // had used 2³² ids (test: `…visible_past_the_first_xid_epoch`).
    const VISIBLE: &str = "SELECT coalesce(bool_and(pg_visible_in_snapshot((q.xmax \
        + (((x - (q.xmax & 4294967295) + 2147483648) & 4294967295) - 2147483648))::text::xid8, q.s)), true) \
        FROM (SELECT s, pg_snapshot_xmax(s)::text::bigint AS xmax FROM pg_current_snapshot() AS s) AS q, \
        unnest($1::bigint[]) AS x";
    let row = tokio::time::timeout(Duration::from_secs(5), pg.query_one(VISIBLE, &[&xids]))
        .await
        .map_err(|_| "the visibility check did not answer within 5 s".to_owned())?
        .map_err(|e| format!("the visibility check: {e}"))?;
    Ok(row.get(0))
}

/// IDENTIFY_SYSTEM, then START_REPLICATION on the same session. A slot
/// still held by a lingering walsender fails here (55006), to be retried.
async fn start(settings: &Settings) -> Result<(ReplicationClient, (String, u32)), String> {
    let config = settings.postgres.replication(
        &settings.slot,
        &settings.publication,
        settings.ack_interval.max(Duration::from_millis(10)),
    );
    let mut client = ReplicationClient::connect_gated(config)
        .await
        .map_err(|e| format!("replication session: {e}"))?;
    let system = client
        .identify_system()
        .await
        .map_err(|e| format!("IDENTIFY_SYSTEM: {e}"))?;
    client
        .start()
        .await
        .map_err(|e| format!("START_REPLICATION: {e}"))?;
    client
        .wait_started()
        .await
        .map_err(|e| format!("START_REPLICATION: {e}"))?;
    Ok((client, (system.system_id, system.timeline)))
}

/// An epoch: opaque and unique (a time and a random part, so that a
/// relay on a promoted standby — whose catalog may have missed the old
/// primary's last writes — can never repeat one).
fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now);
    format!("{now}-{:08x}", h.finish() as u32)
}

/// A NATS message carries at most this many bytes of payloads (NATS'
/// default maximum payload is 1 MiB); a batch past it is split.
const MAX_MESSAGE: usize = 256 * 1024;

/// Room kept for a message's headers (epoch, sequence, LSN: under 200
/// bytes) below the server's `max_payload`.
const HEADER_ROOM: usize = 512;

/// How much a message and a single payload may hold on this server.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Payloads joined into one message, at most.
    message: usize,
    /// One payload, at most; a larger one goes out as "drop all of L1".
    payload: usize,
}

impl Limits {
    /// For a server whose `max_payload` is `max` (0: unknown, NATS'
    /// default of 1 MiB assumed).
    fn for_server(max: usize) -> Limits {
        let max = if max == 0 { 1 << 20 } else { max };
        let message = MAX_MESSAGE.min(max.saturating_sub(HEADER_ROOM));
        Limits {
            message,
            payload: wire::MAX_PAYLOAD.min(message),
        }
    }
}

/// Committed c3 messages that go out together: per subject, in commit
/// order.
#[derive(Default)]
struct Batches {
    /// Per subject (few: one per cache table), in order of first use.
    subjects: Vec<(String, Batch)>,
    /// Heartbeats, in commit order: (channel subject, the node's heartbeat
    /// subject, payload).
    heartbeats: Vec<(String, String, bytes::Bytes)>,
    /// Their transactions: published only once visible (see [`visible`]).
    xids: Vec<u32>,
    /// End LSN of the last commit decoded before the first one here:
    /// everything up to it may be acknowledged while these wait.
    before: Option<Lsn>,
}

/// One subject's share of a [`Batches`].
struct Batch {
    /// NATS messages to publish, in order: payloads separated by
    /// `wire::SEPARATOR`, each under [`MAX_MESSAGE`] (one payload alone
    /// may be longer).
    messages: Vec<bytes::BytesMut>,
    /// End LSN of the last commit in the batch.
    lsn: Lsn,
    count: u64,
}

impl Batches {
    fn is_empty(&self) -> bool {
        self.subjects.is_empty() && self.heartbeats.is_empty()
    }

    /// Adds one committed payload.
    fn push(&mut self, subject: String, payload: &[u8], end_lsn: Lsn, limit: usize) {
        let at = match self.subjects.iter().position(|(s, _)| *s == subject) {
            Some(i) => i,
            None => {
                let batch = Batch {
                    messages: Vec::new(),
                    lsn: end_lsn,
                    count: 0,
                };
                self.subjects.push((subject, batch));
                self.subjects.len() - 1
            }
        };
        let batch = &mut self.subjects[at].1;
        match batch.messages.last_mut() {
            Some(m) if m.len() + 1 + payload.len() <= limit => {
                m.extend_from_slice(&[wire::SEPARATOR]);
                m.extend_from_slice(payload);
            }
            _ => batch.messages.push(bytes::BytesMut::from(payload)),
        }
        batch.lsn = end_lsn;
        batch.count += 1;
    }
}

/// One stream's state.
struct Stream<'a> {
    epoch: String,
    subject_prefix: &'a str,
    limits: Limits,
    window: Duration,
    /// The last sequence number published per subject in this epoch.
    seqs: HashMap<String, u64>,
    /// The open transaction's c3 messages: (subject, payload).
    pending: Vec<(String, bytes::Bytes)>,
    /// Commits decoded since `checking` was formed.
    gathering: Batches,
    /// Commits whose visibility is being checked; published next.
    checking: Batches,
    /// When to look again (after "not yet visible", or at the end of the
    /// batch window), if the next check cannot start now.
    wake_at: Option<Instant>,
    last_publish: Option<Instant>,
    /// End LSN of the last commit decoded.
    decoded: Lsn,
    in_transaction: bool,
    /// The open transaction's id.
    xid: u32,
    /// End LSN of the last commit whose messages were all published.
    published: Lsn,
    /// The position NATS confirmed (and that was acknowledged).
    confirmed: Lsn,
    /// The confirmation in flight: its token and the position it covers.
    sync: Option<(u64, Lsn)>,
    token: u64,
}

impl Stream<'_> {
    fn apply(
        &mut self,
        event: ReplicationEvent,
        client: &ReplicationClient,
        status: &watch::Sender<RelayStatus>,
    ) {
        match event {
            ReplicationEvent::Begin { xid, .. } => {
                self.in_transaction = true;
                self.xid = xid;
                self.pending.clear();
            }
            // Transactional messages arrive between Begin and Commit, only
            // for transactions that committed. c3 sends no others.
            ReplicationEvent::Message {
                transactional: true,
                prefix,
                content,
                ..
            } => {
                if let Some(channel) = wire::channel_of(&prefix) {
                    self.pending
                        .push((wire::subject(self.subject_prefix, channel), content));
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                let before = self.decoded;
                self.decoded = self.decoded.max(end_lsn);
                if !self.pending.is_empty() {
                    self.gathering.before.get_or_insert(before);
                    self.gathering.xids.push(self.xid);
                }
                for (subject, mut payload) in std::mem::take(&mut self.pending) {
                    if let Some(why) = wire::undeliverable(&payload, self.limits.payload) {
                        // Dropping it would lose an invalidation; sending it
                        // could fail forever or be misread.
                        warn!(target: "c3::relay", %subject, bytes = payload.len(), why,
                            "a committed c3 message cannot be published as it is; every node drops all of L1 instead");
                        let now = crate::clock::unix_micros(std::time::SystemTime::now());
                        payload = wire::drop_all("c3-relay", now).into();
                    }
                    // A heartbeat goes back to its node alone (PROTOCOL.md
                    // §6.3 rule 4), not to every subscriber of the channel.
                    match wire::heartbeat_node(&payload) {
                        Some(node) => {
                            let to = wire::heartbeat_subject(&subject, node);
                            self.gathering.heartbeats.push((subject, to, payload));
                        }
                        None => {
                            self.gathering
                                .push(subject, &payload, end_lsn, self.limits.message)
                        }
                    }
                }
                self.advance_published(status);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let idle = !self.in_transaction
                    && self.gathering.is_empty()
                    && self.checking.is_empty()
                    && self.sync.is_none()
                    && self.published <= self.confirmed;
                if idle && wal_end > self.confirmed {
                    self.confirmed = wal_end;
                    self.published = self.published.max(wal_end);
                    client.update_applied_lsn(wal_end);
                    status.send_modify(|s| s.acked_lsn = wal_end.as_u64());
                }
            }
            _ => {}
        }
    }

    /// The visibility check to start now, if one is due: again for the
    /// commits being checked, or for those gathered since the last
    /// message (once the batch window, if any, has passed).
    fn next_check(&mut self, pg: &Arc<tokio_postgres::Client>, now: Instant) -> Option<Check> {
        if let Some(at) = self.wake_at {
            if at > now {
                return None;
            }
            self.wake_at = None;
        }
        if self.checking.is_empty() {
            if self.gathering.is_empty() {
                return None;
            }
            if let Some(due) = self.last_publish.map(|at| at + self.window)
                && due > now
            {
                self.wake_at = Some(due);
                return None;
            }
            self.checking = std::mem::take(&mut self.gathering);
        }
        let xids = self.checking.xids.iter().map(|x| i64::from(*x)).collect();
        Some(Box::pin(visible(Arc::clone(pg), xids)))
    }

    /// Publishes the checked commits, each subject's in order.
    async fn publish(
        &mut self,
        nats: &async_nats::Client,
        status: &watch::Sender<RelayStatus>,
    ) -> Result<(), String> {
        let batches = std::mem::take(&mut self.checking);
        for (subject, batch) in batches.subjects {
            let lsn = batch.lsn.to_pg_string();
            for message in batch.messages {
                let seq = self.seqs.entry(subject.clone()).or_insert(0);
                *seq += 1;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(wire::HEADER_EPOCH, self.epoch.as_str());
                headers.insert(wire::HEADER_SEQ, seq.to_string());
                headers.insert(wire::HEADER_LSN, lsn.as_str());
                nats.publish_with_headers(subject.clone(), headers, message.freeze())
                    .await
                    .map_err(|e| format!("NATS publish: {e}"))?;
            }
            status.send_modify(|s| s.published += batch.count);
        }
        // After the channel's messages: each echo names the last of them,
        // which its node must have heard to count the echo (a superset of
        // the commits before the heartbeat's).
        for (channel, to, payload) in batches.heartbeats {
            let upto = self.seqs.get(&channel).copied().unwrap_or(0);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(wire::HEADER_EPOCH, self.epoch.as_str());
            headers.insert(wire::HEADER_UPTO, upto.to_string());
            nats.publish_with_headers(to, headers, payload)
                .await
                .map_err(|e| format!("NATS publish: {e}"))?;
            status.send_modify(|s| s.published += 1);
        }
        self.last_publish = Some(Instant::now());
        self.advance_published(status);
        Ok(())
    }

    /// Published: every commit before the oldest one still waiting.
    fn advance_published(&mut self, status: &watch::Sender<RelayStatus>) {
        let floor = [self.checking.before, self.gathering.before]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.decoded);
        if floor > self.published {
            self.published = floor;
            status.send_modify(|s| s.published_lsn = self.published.as_u64());
        }
    }

    /// The position a returned confirmation token covers, if it is the
    /// one in flight.
    fn confirmed_by(&mut self, payload: &[u8]) -> Option<Lsn> {
        let (token, lsn) = self.sync?;
        if payload != token.to_string().as_bytes() {
            return None;
        }
        self.sync = None;
        self.confirmed = self.confirmed.max(lsn);
        Some(self.confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fit_the_servers_max_payload_with_their_headers() {
        let default = Limits::for_server(1 << 20);
        assert_eq!(
            (default.message, default.payload),
            (MAX_MESSAGE, wire::MAX_PAYLOAD)
        );
        assert_eq!(Limits::for_server(0).message, MAX_MESSAGE);
        // A server that takes exactly 256 KiB: the headers must fit too.
        let tight = Limits::for_server(256 * 1024);
        assert_eq!(tight.message, 256 * 1024 - HEADER_ROOM);
        let small = Limits::for_server(16 * 1024);
        assert_eq!(
            (small.message, small.payload),
            (16 * 1024 - HEADER_ROOM, 16 * 1024 - HEADER_ROOM)
        );
    }
}
