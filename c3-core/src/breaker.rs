//! Circuit breakers: one guarding L2, one per loader source.
//!
//! A breaker counts consecutive failures. At the threshold it **opens**: calls
//! are refused without touching the failing dependency, which gets time to
//! recover instead of a retry storm. After the cool-down one call is let
//! through as a **half-open** probe; its success closes the breaker, its
//! failure opens it for another cool-down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures (timeouts included) that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before a probe is allowed.
    pub cool_down: Duration,
}

impl BreakerConfig {
    /// A breaker that opens after `failure_threshold` consecutive failures and
    /// probes again after `cool_down`. A threshold of 0 disables the breaker.
    #[must_use]
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        BreakerConfig {
            failure_threshold,
            cool_down,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig::new(5, Duration::from_secs(5))
    }
}

/// A breaker's state, as reported by the `*_breaker_state` getters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is in flight; others are refused until it reports.
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// What [`Breaker::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    Allowed,
    Refused,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make a call. Moving from open to half-open happens here, so
    /// exactly one caller becomes the probe.
    pub(crate) fn allow(&self) -> Permit {
        if self.config.failure_threshold == 0 {
            return Permit::Allowed;
        }
        let mut s = self.lock();
        match *s {
            Inner::Closed { .. } => Permit::Allowed,
            Inner::Open { until } if Instant::now() >= until => {
                *s = Inner::HalfOpen;
                Permit::Allowed
            }
            Inner::Open { .. } | Inner::HalfOpen => Permit::Refused,
        }
    }

    /// Records a success; returns true if this success closed the breaker.
    pub(crate) fn success(&self) -> bool {
        let mut s = self.lock();
        let was_closed = matches!(*s, Inner::Closed { .. });
        *s = Inner::Closed { failures: 0 };
        !was_closed
    }

    /// Records a failure; returns true if this failure opened the breaker.
    pub(crate) fn failure(&self) -> bool {
        if self.config.failure_threshold == 0 {
            return false;
        }
        let mut s = self.lock();
        let open = Inner::Open {
            until: Instant::now() + self.config.cool_down,
        };
        match *s {
            Inner::Closed { failures } if failures + 1 >= self.config.failure_threshold => {
                *s = open;
                true
            }
            Inner::Closed { failures } => {
                *s = Inner::Closed {
                    failures: failures + 1,
                };
                false
            }
            Inner::HalfOpen => {
                *s = open;
                true
            }
            // A call let through before the breaker opened failed late.
            Inner::Open { .. } => false,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

/// The loaders' breakers, one per source (`LoadOptions::source`), each
/// created with the node's loader breaker settings on first use.
pub(crate) struct SourceBreakers {
    config: BreakerConfig,
    by_source: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
}

impl SourceBreakers {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        SourceBreakers {
            config,
            by_source: Mutex::default(),
        }
    }

    /// The breaker for `source`.
    pub(crate) fn of(&self, source: &Arc<str>) -> Arc<Breaker> {
        Arc::clone(
            self.by_source
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(Arc::clone(source))
                .or_insert_with(|| Arc::new(Breaker::new(self.config))),
        )
    }

    /// Every source's breaker state, for the metrics.
    pub(crate) fn states(&self) -> Vec<(Arc<str>, BreakerState)> {
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(source, b)| (Arc::clone(source), b.state()))
            .collect()
    }

    /// The state of `source`'s breaker (`Closed` if it has never been used).
    pub(crate) fn state(&self, source: &str) -> BreakerState {
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .map_or(BreakerState::Closed, |b| b.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let b = Breaker::new(BreakerConfig::new(3, Duration::from_secs(10)));
        assert!(!b.failure());
        assert!(!b.failure());
        assert_eq!(b.allow(), Permit::Allowed);
        assert!(b.failure(), "third consecutive failure opens");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(), Permit::Refused);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.allow(), Permit::Allowed, "one probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.allow(), Permit::Refused, "only one probe");
        assert!(b.failure(), "failed probe reopens");
        assert_eq!(b.allow(), Permit::Refused);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.allow(), Permit::Allowed);
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.failure(), "count restarts after closing");
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(BreakerConfig::new(2, Duration::from_secs(1)));
        assert!(!b.failure());
        b.success();
        assert!(!b.failure());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn zero_threshold_disables() {
        let b = Breaker::new(BreakerConfig::new(0, Duration::from_secs(1)));
        for _ in 0..10 {
            assert!(!b.failure());
        }
        assert_eq!(b.allow(), Permit::Allowed);
    }
}
