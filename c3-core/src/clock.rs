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

/// A time in µs that the system clock has certainly not passed yet, read
/// cheaply: the kernel's coarse wall clock (the time of its last tick, ~7 ns
/// to read here against ~17 ns for a precise read and its conversion) plus
/// [`COARSE_SLACK_US`]. An L1 hit asks only "is this entry fresh?"; for
/// every entry not within the slack of its expiry this bound answers, and
/// the precise clock decides the rest. `None` where the platform has no
/// coarse clock or its resolution is too poor for the slack to cover it.
pub(crate) fn system_now_at_most_us() -> Option<u64> {
    coarse::now_at_most_us()
}

/// How far past the coarse clock the real time may be assumed to be at
/// most: the coarse clock lags by one tick (1–10 ms depending on the
/// kernel's HZ; 4 ms here), so 50 ms leaves a wide margin, and costs only a
/// precise clock read on the hits that fall within it.
const COARSE_SLACK_US: u64 = 50_000;

#[cfg(any(target_os = "linux", target_os = "android"))]
mod coarse {
    use std::sync::OnceLock;

    use rustix::time::{ClockId, Timespec, clock_getres, clock_gettime};

    fn micros(t: Timespec) -> Option<u64> {
        let s = u64::try_from(t.tv_sec).ok()?;
        let ns = u64::try_from(t.tv_nsec).ok()?;
        s.checked_mul(1_000_000)?.checked_add(ns / 1_000)
    }

    pub(super) fn now_at_most_us() -> Option<u64> {
        static USABLE: OnceLock<bool> = OnceLock::new();
        let usable = *USABLE.get_or_init(|| {
            micros(clock_getres(ClockId::RealtimeCoarse))
                .is_some_and(|res| res > 0 && res * 5 <= super::COARSE_SLACK_US)
        });
        if !usable {
            return None;
        }
        micros(clock_gettime(ClockId::RealtimeCoarse))?.checked_add(super::COARSE_SLACK_US)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod coarse {
    pub(super) fn now_at_most_us() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_coarse_bound_is_never_behind_the_precise_clock() {
        for _ in 0..10_000 {
            let bound = system_now_at_most_us().expect("Linux has a coarse wall clock");
            let now = unix_micros(SystemTime::now());
            assert!(bound > now, "bound {bound} µs is not after now {now} µs");
            assert!(bound - now <= 2 * COARSE_SLACK_US);
        }
    }
}
