//! A node's side of the relay transport: the NATS subscription that feeds
//! the engine, in place of a LISTEN session (PROTOCOL.md §6).
//!
//! L1 is used only while delivery is proven end to end. Every
//! `heartbeat_interval` the node announces a heartbeat through its own pool
//! — into the WAL, like any write — and must hear it back from NATS within
//! `heartbeat_timeout`: slot, relay, NATS and PostgreSQL all work. Until the
//! first echo, after a silent timeout, and on a NATS disconnect, L1 is
//! purged and bypassed. Between echoes, the relay's sequence numbers show
//! any message lost on the way: a gap, a new epoch or a slow-consumer
//! report purges L1, which stays in use (later messages are arriving).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use super::Nats;
use super::wire::{self, Continuity, Echo, Step};
use crate::feed::Feed;
use crate::stats::Counters;
use crate::store::Store;

/// What the subscription needs.
pub(crate) struct Settings {
    pub(crate) nats: Nats,
    pub(crate) channel: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) backoff: (Duration, Duration),
}

/// Why a subscription ended.
enum Ended {
    Lost(String),
    Shutdown,
}

/// Runs until `shutdown` turns true; then leaves the feed `Stopped`.
pub(crate) async fn run(
    feed: Feed,
    store: Arc<dyn Store>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let _guard = feed.panic_guard();
    let mut seed = crate::key::fnv1a(feed.node_id().as_bytes()) | 1;
    let mut attempt = 0u32;
    let name: String = format!("c3-node {}", feed.node_id());
    let mut lost_at: Option<std::time::Instant> = None;
    while !*shutdown.borrow() {
        let (events_tx, events) = mpsc::unbounded_channel();
        let connected = settings
            .nats
            .connect(&name, settings.connect_timeout, events_tx)
            .await;
        let client = match connected {
            Ok(c) => c,
            Err(why) => {
                attempt = attempt.saturating_add(1);
                feed.retrying(attempt);
                warn!(target: "c3::listener", attempt, reason = %why, "could not connect to NATS");
                let wait = super::settings::backoff(attempt, settings.backoff, &mut seed);
                tokio::select! {
                    _ = sleep(wait) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        attempt = 0;
        let ended = follow(
            &feed,
            &store,
            &client,
            events,
            &settings,
            &mut shutdown,
            &mut lost_at,
        )
        .await;
        match ended {
            Ended::Shutdown => break,
            Ended::Lost(why) => {
                if feed.state() == crate::ListenerState::Listening {
                    feed.down();
                    lost_at = Some(std::time::Instant::now());
                }
                warn!(target: "c3::listener", reason = %why, "relay subscription lost; L1 purged and bypassed until a heartbeat comes back");
                let wait = super::settings::backoff(1, settings.backoff, &mut seed);
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    feed.stopped();
}

/// One NATS client's life: subscribe, check every message's place in the
/// stream, send heartbeats and wait for their echo.
async fn follow(
    feed: &Feed,
    store: &Arc<dyn Store>,
    client: &async_nats::Client,
    mut events: mpsc::UnboundedReceiver<async_nats::Event>,
    settings: &Settings,
    shutdown: &mut watch::Receiver<bool>,
    lost_at: &mut Option<std::time::Instant>,
) -> Ended {
    let subject = wire::subject(&settings.nats.subject_prefix, &settings.channel);
    // A reconnect is seen on the next message, before its event arrives
    // (the event callback runs on another task): the client resubscribes by
    // itself, and what was published meanwhile is lost.
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(format!("subscribing to {subject}: {e}")),
    };
    // This node's heartbeats come back on a subject of its own.
    let echo_subject = wire::heartbeat_subject(&subject, feed.node_id());
    let mut echoes = match client.subscribe(echo_subject.clone()).await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(format!("subscribing to {echo_subject}: {e}")),
    };
    // The first heartbeat must not overtake the subscription: wait until
    // the client is connected and has written the SUB to the server.
    match tokio::time::timeout(settings.connect_timeout, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ended::Lost(format!("NATS: {e}")),
        Err(_) => {
            return Ended::Lost(format!(
                "NATS did not connect within {:?}",
                settings.connect_timeout
            ));
        }
    }
    // Connected now: a later reconnect is seen on the next message, before
    // its event arrives (the event callback runs on another task) — the
    // client resubscribes by itself, and what was published meanwhile is
    // lost.
    let stats = client.statistics();
    let connects = stats.connects.load(std::sync::atomic::Ordering::SeqCst);
    let reconnected = || stats.connects.load(std::sync::atomic::Ordering::SeqCst) != connects;
    // Nonces are this subscription's alone: an echo from an earlier one, or
    // someone else's heartbeat, proves nothing.
    let session = crate::key::fnv1a(
        format!("{:?}{}", std::time::SystemTime::now(), feed.node_id()).as_bytes(),
    );
    let mut nonce = 0u64;
    let mut awaiting: Option<(String, Instant)> = None;
    let mut next_beat = Instant::now();
    let mut continuity = Continuity::default();
    // The echo that came back before the channel's messages it names.
    let mut held: Option<(String, u64)> = None;
    let mut up = false;
    loop {
        let wake = awaiting
            .as_ref()
            .map_or(next_beat, |(_, deadline)| *deadline);
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ended::Shutdown,
            Some(event) = events.recv() => match event {
                async_nats::Event::Disconnected | async_nats::Event::Closed => {
                    return Ended::Lost(format!("NATS {event}"));
                }
                async_nats::Event::SlowConsumer(_) => {
                    // NATS dropped messages this node did not read in time.
                    missed(feed, up, "NATS reported this node as a slow consumer");
                }
                _ => {}
            },
            message = sub.next() => {
                let Some(message) = message else {
                    return Ended::Lost("the subscription ended".to_owned());
                };
                if reconnected() {
                    return Ended::Lost("NATS reconnected".to_owned());
                }
                let (epoch, seq) = (header(&message, wire::HEADER_EPOCH), header(&message, wire::HEADER_SEQ));
                match continuity.observe(epoch, seq) {
                    Step::InOrder | Step::First => {}
                    Step::NewEpoch => missed(feed, up, "a relay started a new epoch"),
                    Step::Gap { expected, got } => {
                        debug!(target: "c3::listener", expected, got, "relay sequence gap");
                        missed(feed, up, "relayed messages were lost (sequence gap)");
                    }
                    Step::Unreadable => missed(feed, up, "a relayed message without epoch or sequence"),
                }
                // One message may carry several payloads (commits the
                // relay published together), in commit order.
                for payload in wire::payloads(&message.payload) {
                    let payload = String::from_utf8_lossy(payload);
                    // (A relay may also send the echo in the channel's
                    // stream: its place there proves the same.)
                    if let Some((expected, _)) = &awaiting
                        && is_echo(&payload, expected)
                    {
                        awaiting = None;
                        held = None;
                        heard(feed, &mut up, lost_at);
                    } else {
                        feed.message(&payload);
                        // Messages arriving prove the path; a burst may hold
                        // the echo up behind it.
                        if let Some((_, deadline)) = &mut awaiting {
                            *deadline = (*deadline).max(Instant::now() + settings.heartbeat_timeout);
                        }
                    }
                }
                // An echo held for this message (or one before it).
                if let Some((epoch, upto)) = &held {
                    if continuity.covers(epoch, *upto) {
                        held = None;
                        awaiting = None;
                        heard(feed, &mut up, lost_at);
                    } else if continuity.epoch() != Some(epoch.as_str()) {
                        // Another epoch began: that echo proves nothing now.
                        held = None;
                    }
                }
            }
            echo = echoes.next() => {
                let Some(echo) = echo else {
                    return Ended::Lost("the heartbeat subscription ended".to_owned());
                };
                // An echo through a connection the client made again by
                // itself proves nothing of what was published meanwhile.
                if reconnected() {
                    return Ended::Lost("NATS reconnected".to_owned());
                }
                let upto = header(&echo, wire::HEADER_UPTO).and_then(|u| u.parse::<u64>().ok());
                let ours = awaiting
                    .as_ref()
                    .is_some_and(|(expected, _)| is_echo(&String::from_utf8_lossy(&echo.payload), expected));
                if let (true, Some(epoch), Some(upto)) = (ours, header(&echo, wire::HEADER_EPOCH), upto) {
                    match continuity.echo(epoch, upto) {
                        Echo::Heard => {
                            awaiting = None;
                            heard(feed, &mut up, lost_at);
                        }
                        Echo::NewEpoch => {
                            missed(feed, up, "a relay started a new epoch");
                            awaiting = None;
                            heard(feed, &mut up, lost_at);
                        }
                        Echo::Wait => held = Some((epoch.to_owned(), upto)),
                    }
                }
            }
            _ = sleep_until(wake) => {
                if awaiting.is_some() {
                    if up {
                        up = false;
                        feed.down();
                        *lost_at = Some(std::time::Instant::now());
                        warn!(target: "c3::listener", timeout = ?settings.heartbeat_timeout,
                            "heartbeat not back through the relay in time; L1 purged and bypassed until one is");
                    }
                    continuity.reset();
                    held = None;
                }
                nonce += 1;
                let expected = format!("{session:016x}-{nonce}");
                awaiting = Some((expected.clone(), Instant::now() + settings.heartbeat_timeout));
                next_beat = Instant::now() + settings.heartbeat_interval;
                send_heartbeat(store, feed.node_id(), expected, settings.heartbeat_timeout);
            }
        }
    }
}

/// A relayed message's header, as text.
fn header<'m>(message: &'m async_nats::Message, name: &str) -> Option<&'m str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// This node's heartbeat came back, with everything committed before it.
fn heard(feed: &Feed, up: &mut bool, lost_at: &mut Option<std::time::Instant>) {
    if !*up {
        *up = true;
        feed.up();
        if let Some(t) = lost_at.take() {
            info!(target: "c3::listener", outage = ?t.elapsed(),
                "relay heartbeats are back; L1 purged (what changed meanwhile is unknown)");
        }
    }
}

/// Messages were lost while L1 may hold what they invalidated.
fn missed(feed: &Feed, up: bool, why: &'static str) {
    Counters::inc(&feed.counters().relay_gaps);
    if up {
        feed.missed();
        warn!(target: "c3::listener", reason = why, "L1 purged");
    }
}

/// Whether `payload` is this node's heartbeat with `nonce`: an `h` message
/// whose line is the nonce.
fn is_echo(payload: &str, nonce: &str) -> bool {
    payload.split_once('\n').is_some_and(|(head, line)| {
        head.starts_with("c3|") && head.ends_with("|h") && line == nonce
    })
}

/// Announces a heartbeat through the pool (a transaction of its own: into
/// the WAL, through the slot and the relay, back on NATS). From a separate
/// task: the subscription keeps reading meanwhile.
fn send_heartbeat(store: &Arc<dyn Store>, node_id: &str, nonce: String, timeout: Duration) {
    let payload = format!(
        "c3|1|{node_id}|{}|h\n{nonce}",
        crate::clock::unix_micros(std::time::SystemTime::now())
    );
    let store = Arc::clone(store);
    tokio::spawn(async move {
        let payloads = [payload];
        let sent = tokio::time::timeout(timeout, store.publish(&payloads)).await;
        if let Ok(Err(e)) = sent {
            debug!(target: "c3::listener", error = %e, "heartbeat not sent");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_own_nonce_is_an_echo() {
        assert!(is_echo("c3|1|n1|123|h\nabc-1", "abc-1"));
        assert!(!is_echo("c3|1|n1|123|h\nabc-2", "abc-1"));
        assert!(!is_echo("c3|1|n1|123|k\nabc-1", "abc-1"));
        assert!(!is_echo("abc-1", "abc-1"));
    }
}
