//! Where "now" comes from: the system clock, or a clock tests move by hand.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time, so a scheduler can be driven by a test.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to. Clones share one time, so a test keeps a clone and
/// moves the clock a scheduler holds.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Sets the time to `t` (backwards too: a test may replay a window).
    pub fn set(&self, t: DateTime<Utc>) {
        *self.lock() = t;
    }

    /// Moves the time by `by` (negative moves it back).
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        // Past chrono's range the clock stays put rather than panicking.
        if let Some(t) = now.checked_add_signed(by) {
            *now = t;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        // A panic elsewhere while holding the lock leaves a valid time: keep using it.
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn manual_clock_is_shared_between_clones() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single();
        let Some(start) = start else { return };
        let clock = ManualClock::new(start);
        let held: Box<dyn Clock> = Box::new(clock.clone());
        assert_eq!(held.now(), start);
        clock.advance(Duration::minutes(90));
        assert_eq!(held.now(), start + Duration::minutes(90));
        clock.advance(Duration::minutes(-30));
        assert_eq!(held.now(), start + Duration::hours(1));
        let later = start + Duration::days(400);
        clock.set(later);
        assert_eq!(held.now(), later);
        assert_eq!(clock.now(), later);
    }

    #[test]
    fn system_clock_moves_forward() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(b >= a);
    }
}
