//! How busy the pass-through loops are: each loop counts its rounds (from epoll's return to its
//! next wait) in plain fields and publishes them once a second, so the relay's hot path pays two
//! clock reads per round, not per message, and never touches the registry.
//!
//! A loop that spends most of its wall time in rounds, or whose rounds often take a millisecond
//! or more (many sessions' events at once, or the loop preempted in the middle of them), makes
//! every session on it wait: [`names::LOOP_BUSY`] and [`names::LOOP_SLOW_ROUNDS`] show it.

use std::time::{Duration, Instant};

use metrics::{counter, gauge};

use super::{handles, names};

/// How often a loop publishes; also the longest a loop with nothing to do sleeps in epoll, so
/// that its busy ratio falls to zero instead of keeping its last value.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// A round at least this long is counted as slow.
pub const SLOW_ROUND: Duration = Duration::from_millis(1);

/// One loop's rounds since it last published.
pub struct LoopRounds {
    label: String,
    since: Instant,
    busy: Duration,
    rounds: u64,
    slow: u64,
}

/// What a loop publishes for one window.
#[derive(Debug, PartialEq)]
pub struct Window {
    pub rounds: u64,
    pub slow: u64,
    /// Wall time in rounds ÷ the window's length.
    pub busy: f64,
}

impl LoopRounds {
    /// The rounds of loop `index` (the `loop` label), from `now`.
    pub fn new(index: usize, now: Instant) -> LoopRounds {
        LoopRounds {
            label: index.to_string(),
            since: now,
            busy: Duration::ZERO,
            rounds: 0,
            slow: 0,
        }
    }

    /// Counts a round that did work from `started` to `ended`, and publishes when a window is
    /// over.
    #[inline]
    pub fn round(&mut self, started: Instant, ended: Instant) {
        let took = ended.saturating_duration_since(started);
        self.busy += took;
        self.rounds += 1;
        self.slow += u64::from(took >= SLOW_ROUND);
        self.maybe_publish(ended);
    }

    /// Publishes if a window is over at `now` (also called after a wait that found no work).
    #[inline]
    pub fn maybe_publish(&mut self, now: Instant) {
        if now.saturating_duration_since(self.since) >= PUBLISH_EVERY {
            let window = self.close(now);
            if handles().is_some() {
                counter!(names::LOOP_ROUNDS, "loop" => self.label.clone()).increment(window.rounds);
                counter!(names::LOOP_SLOW_ROUNDS, "loop" => self.label.clone())
                    .increment(window.slow);
                gauge!(names::LOOP_BUSY, "loop" => self.label.clone()).set(window.busy);
            }
        }
    }

    /// Ends the window at `now` and starts the next.
    fn close(&mut self, now: Instant) -> Window {
        let length = now.saturating_duration_since(self.since);
        let busy = if length.is_zero() {
            0.0
        } else {
            (self.busy.as_secs_f64() / length.as_secs_f64()).min(1.0)
        };
        let window = Window {
            rounds: self.rounds,
            slow: self.slow,
            busy,
        };
        self.since = now;
        self.busy = Duration::ZERO;
        self.rounds = 0;
        self.slow = 0;
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_rounds_slow_rounds_and_the_share_of_wall_time_in_them() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut rounds = LoopRounds::new(0, t0);
        rounds.round(at(0), at(100)); // slow
        rounds.round(at(200), at(200)); // instant
        rounds.round(at(300), at(400)); // slow
        assert_eq!(
            rounds.close(at(800)),
            Window {
                rounds: 3,
                slow: 2,
                busy: 0.25
            }
        );
        // The next window starts empty.
        assert_eq!(
            rounds.close(at(1800)),
            Window {
                rounds: 0,
                slow: 0,
                busy: 0.0
            }
        );
    }

    #[test]
    fn a_window_closes_only_after_publish_every() {
        let t0 = Instant::now();
        let mut rounds = LoopRounds::new(1, t0);
        rounds.round(t0, t0 + Duration::from_millis(10));
        assert_eq!(rounds.rounds, 1, "not published yet");
        rounds.maybe_publish(t0 + PUBLISH_EVERY);
        assert_eq!(rounds.rounds, 0, "published and reset");
        assert_eq!(rounds.since, t0 + PUBLISH_EVERY);
    }
}
