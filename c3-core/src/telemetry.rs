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
//! span: it does no I/O.
//!
//! With `tracing-opentelemetry` in the application these become OTel spans;
//! without a subscriber they cost a callsite check.

use tracing::Span;

use crate::cache::C3;

/// Opens the span of one cache operation.
macro_rules! op_span {
    ($c3:expr, $name:literal, $key:expr) => {{
        let span = tracing::info_span!(
            target: "c3",
            $name,
            c3.cache = %$c3.inner.sql_names.table,
            c3.tier = tracing::field::Empty,
            c3.outcome = tracing::field::Empty,
            c3.key = tracing::field::Empty,
        );
        if $c3.inner.trace_keys && !span.is_disabled() {
            span.record("c3.key", $key);
        }
        span
    }};
}
pub(crate) use op_span;

/// Which system L2 is, for `db.system.name`.
pub(crate) fn db_system(c3: &C3) -> &'static str {
    match *c3.inner.backend {
        crate::backend::Backend::Postgres(_) => "postgresql",
        crate::backend::Backend::Memory(_) => "c3-memory",
    }
}

/// The child span of one L2 round trip.
pub(crate) fn l2_span(c3: &C3, op: &'static str) -> Span {
    tracing::info_span!(
        target: "c3",
        "c3.l2",
        db.system.name = db_system(c3),
        db.operation.name = op,
        db.collection.name = %c3.inner.sql_names.table,
    )
}

/// Records where an answer came from and how the operation ended.
pub(crate) fn record(span: &Span, tier: Option<&'static str>, outcome: &'static str) {
    if let Some(t) = tier {
        span.record("c3.tier", t);
    }
    span.record("c3.outcome", outcome);
}

/// Marks a failed operation.
pub(crate) fn record_result<T>(span: &Span, r: &crate::Result<T>) {
    if r.is_err() {
        span.record("c3.outcome", "error");
    }
}
