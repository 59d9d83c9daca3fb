//! Latency samples and their summaries.

use std::time::Duration;

use serde::Serialize;

/// One measured series: how many operations, how fast, how spread.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) name: String,
    pub(crate) workers: usize,
    pub(crate) count: u64,
    pub(crate) ops_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
}

/// Nanosecond samples; `summary` sorts them.
#[derive(Debug, Default)]
pub(crate) struct Samples(pub(crate) Vec<u64>);

impl Samples {
    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub(crate) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    fn pct(sorted: &[u64], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
    }

    pub(crate) fn summary(mut self, name: &str, workers: usize, elapsed: Duration) -> Summary {
        self.0.sort_unstable();
        let count = self.0.len() as u64;
        Summary {
            name: name.to_owned(),
            workers,
            count,
            ops_per_s: count as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_us: Self::pct(&self.0, 0.50),
            p99_us: Self::pct(&self.0, 0.99),
            max_us: self.0.last().map_or(0.0, |m| *m as f64 / 1000.0),
        }
    }
}
