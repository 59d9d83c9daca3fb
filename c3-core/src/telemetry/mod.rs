//! What c3 tells an observer: tracing spans and OpenTelemetry metrics.
//!
//! Both are free until the application opts in. Spans go through `tracing`
//! (`tracing-opentelemetry` turns them into OpenTelemetry spans); metrics go
//! through the OpenTelemetry metrics API, which is a no-op until a meter
//! provider is installed. The metric names, units and attributes are listed
//! in the README ("Observing c3") and on [`C3Builder::meter`](crate::C3Builder::meter).

pub(crate) mod metrics;
pub(crate) mod spans;

pub(crate) use metrics::Metrics;
pub(crate) use spans::{Op, l2_span, op};
