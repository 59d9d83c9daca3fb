//! Tracing spans that map onto OpenTelemetry semantics.
//!
//! Every cache operation gets one span (`c3.get`, `c3.get_many`, `c3.set`,
//! `c3.delete`, `c3.invalidate`, `c3.get_or_load`) with `c3.cache` (the L2
//! table), `c3.tier` (`l1` | `l2` | `source` | `stale`, where an answer came
//! from), `c3.outcome` (`hit` | `miss` | `ok` | `error`) and — only with
//! [`C3Builder::trace_keys`](crate::C3Builder::trace_keys), since keys may
//! be personal data — `c3.key`. Every L2 round trip is a child span `c3.l2`
//! with the OpenTelemetry database attributes `db.system.name`,
//! `db.operation.name` and `db.collection.name`. An L1 hit opens no child
//! span (it does no I/O), and its own span is at DEBUG (see `op!`).
//!
//! With `tracing-opentelemetry` in the application these become OTel spans;
//! without a subscriber (or with none enabled at INFO) they cost one load
//! of tracing's global level filter.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use tracing::Span;

use super::metrics::Metrics;
use crate::operation::Operation;
use crate::tier::{Outcome, Tier};

/// One cache operation in flight: its span, and its duration for the
/// `c3.operation.duration` histogram, recorded when the operation ends
/// (including by cancellation, as outcome `cancelled`).
///
/// Reads start the clock only once L1 could not answer: an L1 hit is
/// counted (`c3.hits`), not timed — two clock reads (~20 ns each here)
/// would add a tenth to the one path that must stay close to a bare moka
/// get.
pub(crate) struct Op<'a> {
    pub(crate) span: Span,
    metrics: &'a Metrics,
    kind: Operation,
    start: Option<Instant>,
    // Atomics only so that `&Op` can cross an `.await` in a `Send` future;
    // one task touches them.
    tier: AtomicU8,
    outcome: AtomicU8,
}

impl<'a> Op<'a> {
    pub(crate) fn new(metrics: &'a Metrics, span: Span, kind: Operation, timed: bool) -> Self {
        Op {
            span,
            metrics,
            kind,
            start: timed.then(Instant::now),
            tier: AtomicU8::new(0),
            outcome: AtomicU8::new(0),
        }
    }

    /// Starts timing a read that L1 could not answer.
    pub(crate) fn start_timer(&mut self) {
        self.start = Some(Instant::now());
    }

    /// Records where an answer came from and how the operation ended.
    pub(crate) fn record(&self, tier: Option<Tier>, outcome: Outcome) {
        // A disabled span (no subscriber wants it) would still look each
        // field up by name to drop the value: a tenth of an L1 hit.
        let traced = !self.span.is_disabled();
        if let Some(t) = tier {
            if traced {
                self.span.record("c3.tier", t.as_str());
            }
            self.tier.store(Tier::index(tier), Ordering::Relaxed);
        }
        if traced {
            self.span.record("c3.outcome", outcome.as_str());
        }
        self.outcome.store(outcome.index(), Ordering::Relaxed);
    }

    /// Marks a failed operation; a successful one keeps what it recorded.
    pub(crate) fn record_result<T>(&self, r: &crate::error::Result<T>) {
        if r.is_err() {
            self.record(None, Outcome::Error);
        }
    }

    /// Records `ok` or `error` with no tier (writes).
    pub(crate) fn record_done<T>(&self, r: &crate::error::Result<T>) {
        self.record(None, Outcome::of(r));
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            self.metrics.operation(
                self.kind,
                self.tier.load(Ordering::Relaxed),
                self.outcome.load(Ordering::Relaxed),
                start.elapsed(),
            );
        }
    }
}

/// Whether any subscriber may want spans at `level`: one load of tracing's
/// global level filter. Nothing listening: no span at all — the span
/// macros' own disabled path would still hand every field to `log` when
/// tracing's `log` feature is on (sqlx turns it on) and no subscriber was
/// ever set, a tenth of an L1 hit for records nobody reads.
#[inline]
pub(crate) fn listening(level: tracing::Level) -> bool {
    level <= tracing::level_filters::LevelFilter::current()
}

/// Opens the span of one cache operation and starts timing it (a read:
/// `read` at the end, and `start_timer` after an L1 miss; an answer from L1:
/// `l1`, a DEBUG span, untimed).
///
/// Operations that may do I/O are INFO spans. An answer from memory is a
/// DEBUG span: exported as an OpenTelemetry span it would cost several
/// times the answer itself (one span ≈ 2.9 µs against a 0.14 µs hit, in
/// the `http_layer` bench), so it is traced only where DEBUG is on; the
/// `c3.hits` metric counts every one.
macro_rules! op {
    ($c3:expr, $kind:ident, $key:expr) => {
        $crate::telemetry::op!(@ $c3, $kind, $key, true, INFO)
    };
    ($c3:expr, $kind:ident, $key:expr, read) => {
        $crate::telemetry::op!(@ $c3, $kind, $key, false, INFO)
    };
    ($c3:expr, $kind:ident, $key:expr, l1) => {
        $crate::telemetry::op!(@ $c3, $kind, $key, false, DEBUG)
    };
    (@ $c3:expr, $kind:ident, $key:expr, $timed:expr, $level:ident) => {{
        let span = if $crate::telemetry::spans::listening(tracing::Level::$level) {
            tracing::span!(
                target: "c3",
                tracing::Level::$level,
                $crate::operation::Operation::$kind.span_name(),
                c3.cache = %$c3.inner.sql_names.table,
                c3.tier = tracing::field::Empty,
                c3.outcome = tracing::field::Empty,
                c3.key = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        if $c3.inner.trace_keys && !span.is_disabled() {
            span.record("c3.key", $key);
        }
        $crate::telemetry::Op::new(
            &$c3.inner.metrics,
            span,
            $crate::operation::Operation::$kind,
            $timed,
        )
    }};
}
pub(crate) use op;

/// The child span of one L2 round trip: a database call, so of kind CLIENT
/// (`otel.kind`, read by tracing-opentelemetry).
pub(crate) fn l2_span(backend: &dyn crate::store::Store, table: &str, op: &'static str) -> Span {
    tracing::info_span!(
        target: "c3",
        "c3.l2",
        otel.kind = "client",
        db.system.name = backend.system(),
        db.operation.name = op,
        db.collection.name = %table,
    )
}
