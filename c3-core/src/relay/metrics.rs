//! The relay's OpenTelemetry instruments, read from its status: whether it
//! leads, the slot's lag, the published and acknowledged positions, and
//! how many messages and epochs it published. Attribute: `c3.relay.slot`.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter};
use tokio::sync::watch;

use super::settings::RelayStatus;

type Read = fn(&RelayStatus) -> Option<u64>;

/// Registers the instruments on `meter` (the global one unless the
/// application installed its own provider first).
pub(crate) fn observe(meter: &Meter, slot: &str, status: &watch::Receiver<RelayStatus>) {
    let gauges: [(&'static str, &'static str, &'static str, Read); 5] = [
        (
            "c3.relay.leader",
            "{relay}",
            "1 while this relay leads its slot, else 0.",
            |s| Some(u64::from(s.leader)),
        ),
        (
            "c3.relay.slot.lag",
            "By",
            "WAL the slot holds back: the server's position minus the slot's confirmed one.",
            |s| s.slot_lag_bytes,
        ),
        (
            "c3.relay.slot.lag_time",
            "ms",
            "How long the slot has held WAL back: the age of the newest position it confirmed, \
             sampled every second (an upper bound on the oldest unacknowledged change's age); \
             0 when caught up.",
            |s| s.slot_lag_millis,
        ),
        (
            "c3.relay.published_lsn",
            "By",
            "End LSN of the last commit published to NATS.",
            |s| Some(s.published_lsn),
        ),
        (
            "c3.relay.acked_lsn",
            "By",
            "The position acknowledged to PostgreSQL (NATS confirmed everything before it).",
            |s| Some(s.acked_lsn),
        ),
    ];
    for (name, unit, description, read) in gauges {
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(reader(status, slot, read))
            .build();
    }
    let counters: [(&'static str, &'static str, &'static str, Read); 2] = [
        (
            "c3.relay.published",
            "{message}",
            "c3 messages published to NATS.",
            |s| Some(s.published),
        ),
        (
            "c3.relay.epochs",
            "{epoch}",
            "Streams started (each a new epoch: every node purges once).",
            |s| Some(s.epochs),
        ),
    ];
    for (name, unit, description, read) in counters {
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(reader(status, slot, read))
            .build();
    }
}

/// The callback that reports `read` of the relay's latest status.
fn reader(
    status: &watch::Receiver<RelayStatus>,
    slot: &str,
    read: Read,
) -> impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static {
    let (status, attrs) = (
        status.clone(),
        [KeyValue::new("c3.relay.slot", slot.to_owned())],
    );
    move |obs: &dyn AsyncInstrument<u64>| {
        if let Some(v) = read(&status.borrow()) {
            obs.observe(v, &attrs);
        }
    }
}
