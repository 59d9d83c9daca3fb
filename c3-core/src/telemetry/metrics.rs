//! OpenTelemetry metrics.
//!
//! Counters are *observable*: the meter reads the same relaxed atomics that
//! [`C3::stats`](crate::C3::stats) reads, when it collects, so counting costs
//! the hot path nothing beyond the atomic add it already does. Gauges read
//! L1, the listener and the L2 breaker the same way. Only the three
//! histograms are recorded as things happen, and their attribute sets are
//! built once, up front, so a recording never allocates.
//!
//! Every instrument carries `c3.cache` (the L2 table) so several caches in
//! one process stay apart. Callbacks hold a weak reference: a dropped cache
//! reports nothing (OpenTelemetry has no way to unregister a callback).

use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter};

use crate::breaker::BreakerState;
use crate::operation::Operation;
use crate::stats::Stats;
use crate::tier::{Outcome, Tier};

/// Index 0: no tier recorded (writes, misses that found nothing); then
/// `Tier::ALL` in order (see `Tier::index`).
const TIERS: [&str; 5] = [
    "",
    Tier::ALL[0].as_str(),
    Tier::ALL[1].as_str(),
    Tier::ALL[2].as_str(),
    Tier::ALL[3].as_str(),
];
// The tier attribute values the hit/miss counters carry (constants, so
// their attribute tables are `'static`).
const TIER_L1: &str = Tier::L1.as_str();
const TIER_L2: &str = Tier::L2.as_str();
const TIER_STALE: &str = Tier::Stale.as_str();

/// The histograms, with every attribute set they can be recorded with.
pub(crate) struct Metrics {
    operation: Histogram<f64>,
    load: Histogram<f64>,
    lag: Histogram<f64>,
    /// `[op][tier][outcome]`, flattened.
    operation_attrs: Box<[Box<[KeyValue]>]>,
    /// `[ok, error]`.
    load_attrs: [Box<[KeyValue]>; 2],
    cache_attrs: Box<[KeyValue]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Buckets for durations in seconds: from an L1 hit (well under a
/// microsecond) to a slow loader, since one histogram holds every tier.
fn duration_buckets() -> Vec<f64> {
    vec![
        1e-6, 5e-6, 25e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
        250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    pub(crate) fn new(meter: &Meter, cache: &str) -> Metrics {
        let cache = KeyValue::new("c3.cache", cache.to_owned());
        let mut operation_attrs =
            Vec::with_capacity(Operation::ALL.len() * TIERS.len() * Outcome::ALL.len());
        for op in Operation::ALL.map(Operation::as_str) {
            for tier in TIERS {
                for outcome in Outcome::ALL.map(Outcome::as_str) {
                    let mut a = vec![
                        cache.clone(),
                        KeyValue::new("c3.operation", op),
                        KeyValue::new("c3.outcome", outcome),
                    ];
                    if !tier.is_empty() {
                        a.push(KeyValue::new("c3.tier", tier));
                    }
                    operation_attrs.push(a.into_boxed_slice());
                }
            }
        }
        let load_attr = |outcome: &'static str| -> Box<[KeyValue]> {
            Box::new([cache.clone(), KeyValue::new("c3.outcome", outcome)])
        };
        Metrics {
            operation: meter
                .f64_histogram("c3.operation.duration")
                .with_unit("s")
                .with_description("Duration of cache operations, by operation, tier and outcome.")
                .with_boundaries(duration_buckets())
                .build(),
            load: meter
                .f64_histogram("c3.load.duration")
                .with_unit("s")
                .with_description("Duration of loader calls made by get_or_load.")
                .with_boundaries(duration_buckets())
                .build(),
            lag: meter
                .f64_histogram("c3.invalidation.lag")
                .with_unit("s")
                .with_description(
                    "Time from a peer stamping an invalidation (at commit) to this node applying it.",
                )
                .with_boundaries(duration_buckets())
                .build(),
            operation_attrs: operation_attrs.into_boxed_slice(),
            load_attrs: [load_attr("ok"), load_attr("error")],
            cache_attrs: Box::new([cache]),
        }
    }

    pub(crate) fn operation(&self, op: Operation, tier: u8, outcome: u8, took: Duration) {
        let i = (op.index() * TIERS.len() + usize::from(tier)) * Outcome::ALL.len()
            + usize::from(outcome);
        if let Some(attrs) = self.operation_attrs.get(i) {
            self.operation.record(took.as_secs_f64(), attrs);
        }
    }

    pub(crate) fn load(&self, ok: bool, took: Duration) {
        self.load
            .record(took.as_secs_f64(), &self.load_attrs[usize::from(!ok)]);
    }

    pub(crate) fn lag(&self, lag: Duration) {
        self.lag.record(lag.as_secs_f64(), &self.cache_attrs);
    }
}

/// What the counters and gauges read from a live node. The node's shared
/// state implements it (in `cache.rs`), so telemetry depends on nothing of
/// the cache's.
pub(crate) trait Observed: Send + Sync + 'static {
    /// The counters' current values.
    fn counters(&self) -> Stats;
    /// L1's entries and weighted bytes.
    fn l1_size(&self) -> (u64, u64);
    /// The listener's state, as `c3.listener.state` names it.
    fn listener_state(&self) -> &'static str;
    fn l2_breaker(&self) -> BreakerState;
    /// Each loader source's breaker.
    fn loader_breakers(&self) -> Vec<(Arc<str>, BreakerState)>;
}

/// How a series reads its value from a snapshot.
type Read = fn(&Stats) -> u64;

/// One series of an observable counter: its attributes and how to read it.
type Series = (&'static [(&'static str, &'static str)], Read);

/// Registers the counters and gauges that read `inner` when the meter
/// collects.
pub(crate) fn observe<I: Observed>(meter: &Meter, cache: &str, inner: &Arc<I>) {
    let cache = KeyValue::new("c3.cache", cache.to_owned());
    observe_counters(meter, &cache, inner);
    observe_l1(meter, &cache, inner);
    observe_listener(meter, &cache, inner);
    observe_breakers(meter, &cache, inner);
}

/// One observable counter: name, unit, description, and its series.
type Counter = (&'static str, &'static str, &'static str, Vec<Series>);

/// Every observable counter, read from the node's counters.
fn counters() -> [Counter; 16] {
    [
        (
            "c3.hits",
            "{hit}",
            "Reads answered, by the tier that answered (stale: served under fail-safe).",
            vec![
                (&[("c3.tier", TIER_L1)], |s| s.l1_hits),
                (&[("c3.tier", TIER_L2)], |s| s.l2_hits),
                (&[("c3.tier", TIER_STALE)], |s| s.stale_hits),
            ],
        ),
        (
            "c3.misses",
            "{miss}",
            "Reads that found nothing usable in a tier.",
            vec![
                (&[("c3.tier", TIER_L1)], |s| s.l1_misses),
                (&[("c3.tier", TIER_L2)], |s| s.l2_misses),
            ],
        ),
        (
            "c3.loads",
            "{call}",
            "Loader calls made by get_or_load.",
            vec![(&[], |s| s.loads)],
        ),
        (
            "c3.load.errors",
            "{call}",
            "Loader calls that failed or timed out.",
            vec![(&[], |s| s.load_errors)],
        ),
        (
            "c3.writes",
            "{write}",
            "Writes (set or delete) committed to L2.",
            vec![(&[], |s| s.writes)],
        ),
        (
            "c3.invalidations.sent",
            "{message}",
            "Invalidations this node published, by kind.",
            vec![
                (&[("c3.kind", "key")], |s| s.key_invalidations_sent),
                (&[("c3.kind", "tag")], |s| s.tag_invalidations_sent),
                (&[("c3.kind", "clear")], |s| s.clears_sent),
            ],
        ),
        (
            "c3.invalidations.received",
            "{message}",
            "Invalidations from peers this node applied, by kind (a tag invalidation arrives as keys).",
            vec![
                (&[("c3.kind", "key")], |s| s.key_invalidations_received),
                (&[("c3.kind", "clear")], |s| s.clears_received),
            ],
        ),
        (
            "c3.pushed_values.kept",
            "{value}",
            "Values pushed by peers that this node put in L1 (value push).",
            vec![(&[], |s| s.pushed_values_kept)],
        ),
        (
            "c3.purges",
            "{purge}",
            "Whole-L1 fail-safe purges (listener loss, reconnect, clear, malformed input).",
            vec![(&[], |s| s.purges)],
        ),
        (
            "c3.relay.gaps",
            "{gap}",
            "Relay mode: times relayed messages were found missing (a sequence gap, a new epoch, a slow-consumer report); each purged L1.",
            vec![(&[], |s| s.relay_gaps)],
        ),
        (
            "c3.listener.reconnects",
            "{reconnect}",
            "Times the LISTEN connection was re-established after a loss.",
            vec![(&[], |s| s.reconnects)],
        ),
        (
            "c3.listener.warm_reconnects",
            "{reconnect}",
            "Reconnects with warm reconnect on: L1 kept (only what changed dropped), or purged because the change log could not prove what was missed.",
            vec![
                (&[("c3.outcome", "kept")], |s| s.warm_reconnects),
                (&[("c3.outcome", "purged")], |s| s.warm_reconnect_fallbacks),
            ],
        ),
        (
            "c3.listener.replayed_keys",
            "{key}",
            "Keys warm reconnects dropped because the change log showed them changed.",
            vec![(&[], |s| s.replayed_keys)],
        ),
        (
            "c3.notifications.malformed",
            "{message}",
            "Notification payloads that could not be parsed (each purged L1).",
            vec![(&[], |s| s.malformed_notifications)],
        ),
        (
            "c3.l2.errors",
            "{call}",
            "L2 calls that failed or timed out.",
            vec![(&[], |s| s.l2_errors)],
        ),
        (
            "c3.breaker.transitions",
            "{transition}",
            "Circuit breaker state changes, by breaker and new state.",
            vec![
                (&[("c3.breaker", "l2"), ("c3.breaker.state", "open")], |s| {
                    s.l2_breaker_opened
                }),
                (
                    &[("c3.breaker", "l2"), ("c3.breaker.state", "closed")],
                    |s| s.l2_breaker_closed,
                ),
                (
                    &[("c3.breaker", "loader"), ("c3.breaker.state", "open")],
                    |s| s.loader_breaker_opened,
                ),
                (
                    &[("c3.breaker", "loader"), ("c3.breaker.state", "closed")],
                    |s| s.loader_breaker_closed,
                ),
            ],
        ),
    ]
}

fn observe_counters<I: Observed>(meter: &Meter, cache: &KeyValue, inner: &Arc<I>) {
    for (name, unit, description, series) in counters() {
        let series: Vec<(Vec<KeyValue>, Read)> = series
            .into_iter()
            .map(|(attrs, read)| (with_cache(cache, attrs), read))
            .collect();
        let weak = Arc::downgrade(inner);
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |obs: &dyn AsyncInstrument<u64>| {
                let Some(inner) = weak.upgrade() else { return };
                let stats = inner.counters();
                for (attrs, read) in &series {
                    obs.observe(read(&stats), attrs);
                }
            })
            .build();
    }
}

fn observe_l1<I: Observed>(meter: &Meter, cache: &KeyValue, inner: &Arc<I>) {
    let (entries, bytes) = (with_cache(cache, &[]), with_cache(cache, &[]));
    gauge(
        meter,
        inner,
        "c3.l1.entries",
        "{entry}",
        "Entries in L1 (approximate).",
        move |inner, obs| {
            obs.observe(inner.l1_size().0, &entries);
        },
    );
    gauge(
        meter,
        inner,
        "c3.l1.size",
        "By",
        "Weighted size of L1 in bytes (approximate).",
        move |inner, obs| {
            obs.observe(inner.l1_size().1, &bytes);
        },
    );
}

fn observe_listener<I: Observed>(meter: &Meter, cache: &KeyValue, inner: &Arc<I>) {
    let states: Vec<(&str, Vec<KeyValue>)> = ["starting", "listening", "reconnecting", "stopped"]
        .into_iter()
        .map(|s| (s, with_cache(cache, &[("c3.listener.state", s)])))
        .collect();
    gauge(
        meter,
        inner,
        "c3.listener.state",
        "1",
        "1 for the LISTEN connection's current state, 0 for the others; L1 is used only while listening.",
        move |inner, obs| {
            let now = inner.listener_state();
            for (name, attrs) in &states {
                obs.observe(u64::from(*name == now), attrs);
            }
        },
    );
}

fn observe_breakers<I: Observed>(meter: &Meter, cache: &KeyValue, inner: &Arc<I>) {
    let states: Vec<(BreakerState, Vec<KeyValue>)> = [
        (BreakerState::Closed, "closed"),
        (BreakerState::Open, "open"),
        (BreakerState::HalfOpen, "half_open"),
    ]
    .into_iter()
    .map(|(st, name)| {
        (
            st,
            with_cache(cache, &[("c3.breaker", "l2"), ("c3.breaker.state", name)]),
        )
    })
    .collect();
    gauge(
        meter,
        inner,
        "c3.breaker.state",
        "1",
        "1 for each circuit breaker's current state (L2, and one per loader source), 0 for the others.",
        move |inner, obs| {
            let now = inner.l2_breaker();
            for (st, attrs) in &states {
                obs.observe(u64::from(*st == now), attrs);
            }
            // Loader breakers come and go with their sources: their
            // attribute sets are built here, at collection time only.
            for (source, now) in inner.loader_breakers() {
                for (st, attrs) in &states {
                    let mut attrs = attrs.clone();
                    attrs[1] = KeyValue::new("c3.breaker", "loader");
                    attrs.push(KeyValue::new("c3.source", source.to_string()));
                    obs.observe(u64::from(*st == now), &attrs);
                }
            }
        },
    );
}

/// Registers a gauge whose callback reads the cache while it lives.
fn gauge<I: Observed>(
    meter: &Meter,
    inner: &Arc<I>,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    observe: impl Fn(&I, &dyn AsyncInstrument<u64>) + Send + Sync + 'static,
) {
    let weak: Weak<I> = Arc::downgrade(inner);
    meter
        .u64_observable_gauge(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |obs| {
            if let Some(inner) = weak.upgrade() {
                observe(&inner, obs);
            }
        })
        .build();
}

fn with_cache(cache: &KeyValue, attrs: &[(&'static str, &'static str)]) -> Vec<KeyValue> {
    std::iter::once(cache.clone())
        .chain(attrs.iter().map(|(k, v)| KeyValue::new(*k, *v)))
        .collect()
}
