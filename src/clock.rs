//! The process clock: wall-clock milliseconds that never go backwards.
//!
//! Every decision that depends on time (the grace window, session and token
//! expiry, when a session was created) reads this clock. It counts with the
//! monotonic clock from the wall-clock time seen at start, so a wall clock
//! stepped backwards (by an operator, a bad NTP server, or anyone able to
//! set it) cannot make an expired token valid again or reopen a grace
//! window; a wall clock stepped forwards is followed, so a clock corrected
//! after boot is adopted. Across threads, no reading is ever earlier than
//! one returned before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::session::Millis;

/// Wall-clock time in milliseconds since the Unix epoch, as the system says.
pub fn system_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct State {
    start: Instant,
    /// Wall-clock milliseconds at `start`, raised when the wall clock jumps ahead.
    base: AtomicU64,
    /// The latest reading handed out.
    last: AtomicU64,
    wall: fn() -> Millis,
}

/// A cheap handle to the process clock; clones share it.
#[derive(Clone)]
pub struct Clock(Arc<State>);

impl Default for Clock {
    fn default() -> Self {
        Clock::with_wall_source(system_millis)
    }
}

impl Clock {
    fn with_wall_source(wall: fn() -> Millis) -> Self {
        let now = wall();
        Clock(Arc::new(State {
            start: Instant::now(),
            base: AtomicU64::new(now),
            last: AtomicU64::new(now),
            wall,
        }))
    }

    /// Milliseconds since the Unix epoch; never less than an earlier reading.
    pub fn now_millis(&self) -> Millis {
        let state = &self.0;
        let elapsed = u64::try_from(state.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut now = state.base.load(Ordering::Acquire).saturating_add(elapsed);
        let wall = (state.wall)();
        if wall > now {
            // The wall clock jumped ahead (or was corrected): follow it.
            state
                .base
                .fetch_max(wall.saturating_sub(elapsed), Ordering::AcqRel);
            now = wall;
        }
        let previous = state.last.fetch_max(now, Ordering::AcqRel);
        previous.max(now)
    }

    /// Whole seconds since the Unix epoch (what JWT `iat` and `exp` hold).
    pub fn now_secs(&self) -> u64 {
        self.now_millis() / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    static FAKE_WALL: AtomicU64 = AtomicU64::new(1_700_000_000_000);

    fn fake_wall() -> Millis {
        FAKE_WALL.load(Ordering::SeqCst)
    }

    #[test]
    fn a_wall_clock_stepped_back_does_not_turn_time_back_and_a_step_ahead_is_followed() {
        let clock = Clock::with_wall_source(fake_wall);
        let first = clock.now_millis();
        assert!(first >= 1_700_000_000_000);
        FAKE_WALL.store(1_600_000_000_000, Ordering::SeqCst); // stepped back a long way
        let after_back = clock.now_millis();
        assert!(after_back >= first, "time went backwards");
        assert!(after_back < first + 60_000, "time keeps its pace");
        FAKE_WALL.store(1_800_000_000_000, Ordering::SeqCst); // stepped ahead
        let after_ahead = clock.now_millis();
        assert!(after_ahead >= 1_800_000_000_000);
        FAKE_WALL.store(1_600_000_000_000, Ordering::SeqCst);
        assert!(clock.now_millis() >= after_ahead);
    }

    #[test]
    fn the_system_clock_reads_close_to_the_wall_clock() {
        let clock = Clock::default();
        let ours = clock.now_millis();
        let system = system_millis();
        assert!(ours.abs_diff(system) < 1000, "{ours} vs {system}");
    }
}
