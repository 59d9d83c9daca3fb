//! The relay's life: compete for the slot's leadership, stream while
//! leading, stand by otherwise — and after a failed stream, start over from
//! the last acknowledged position in a new epoch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use super::leadership::acquire;
use super::settings::{RelayStatus, Settings, backoff};
use super::stream::{self, Ended};

/// The relay's life: lead, stream while leading, stand by otherwise.
pub(crate) async fn run(
    settings: Arc<Settings>,
    status: Arc<watch::Sender<RelayStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seed = crate::key::fnv1a(settings.name.as_bytes()) | 1;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let nats = match settings
        .nats
        .connect(&settings.name, settings.connect_timeout, events_tx)
        .await
    {
        Ok(n) => n,
        Err(why) => {
            warn!(target: "c3::relay", reason = %why, "cannot use NATS; the relay does not start");
            status.send_modify(|s| s.last_error = Some(why));
            return;
        }
    };
    let mut attempt = 0u32;
    'lead: while !*stop.borrow() {
        let mut lead = match acquire(&settings, &status, &mut stop).await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(why) => {
                failed(&status, &why, "could not compete for the slot's leadership");
                attempt = attempt.saturating_add(1);
                if pause(backoff(attempt, settings.backoff, &mut seed), &mut stop).await {
                    break;
                }
                continue;
            }
        };
        info!(target: "c3::relay", slot = %settings.slot, "leading the slot");
        status.send_modify(|s| s.leader = true);
        loop {
            let ended =
                stream::run(&settings, &mut lead, &nats, &mut events, &status, &mut stop).await;
            status.send_modify(|s| s.epoch = None);
            match ended {
                Ended::Stopped => break 'lead,
                Ended::LostLead(why) => {
                    warn!(target: "c3::relay", reason = %why, "lost the slot's leadership; stopped publishing");
                    status.send_modify(|s| {
                        s.leader = false;
                        s.last_error = Some(why);
                    });
                    continue 'lead;
                }
                Ended::Failed { why, streamed } => {
                    failed(
                        &status,
                        &why,
                        "streaming stopped; restarting from the last acknowledged position",
                    );
                    attempt = if streamed {
                        1
                    } else {
                        attempt.saturating_add(1)
                    };
                    let wait = backoff(attempt, settings.backoff, &mut seed);
                    let until = Instant::now() + wait;
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = stop.changed() => break 'lead,
                        why = lead.lost() => {
                            status.send_modify(|s| { s.leader = false; s.last_error = Some(why); });
                            continue 'lead;
                        }
                    }
                }
            }
        }
    }
    status.send_modify(|s| {
        s.leader = false;
        s.epoch = None;
    });
    let _ = nats.flush().await;
}

fn failed(status: &watch::Sender<RelayStatus>, why: &str, what: &'static str) {
    warn!(target: "c3::relay", reason = %why, "{what}");
    status.send_modify(|s| s.last_error = Some(why.to_owned()));
}

/// Sleeps `wait`; true if stopped meanwhile.
async fn pause(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = sleep(wait) => false,
        _ = stop.changed() => true,
    }
}
