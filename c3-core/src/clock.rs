//! Injectable wall-clock time.
//!
//! Expiry is decided against wall-clock time because it is shared with other
//! nodes and other languages through the L2 table. Tests swap in a
//! [`ManualClock`] so TTL behaviour is checked without sleeping.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. Cloning shares the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock set to the current system time.
    #[must_use]
    pub fn new() -> Self {
        ManualClock {
            micros: Arc::new(AtomicU64::new(unix_micros(SystemTime::now()))),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.micros
            .fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros.load(Ordering::SeqCst))
    }
}

/// Microseconds since the Unix epoch: the unit of every time c3 stores and
/// sends (rows' `expires_at`, pushed values; see PROTOCOL.md). Saturates at
/// zero for earlier times and at `u64::MAX` far in the future.
#[must_use]
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
