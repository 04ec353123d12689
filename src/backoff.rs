//! Restart policy for kubelet: exponential backoff, reset after a stable run, and a failure
//! budget per window. Pure values; the caller sleeps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The knobs (`--restart-*`, `--max-failures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub stable_after: Duration,
    /// Failures tolerated within `window`; one more gives up.
    pub max_failures: u32,
    /// Window for counting failures.
    pub window: Duration,
}

/// What to do after kubelet exited unexpectedly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    Restart(Duration),
    /// Too many failures: stop and exit 75.
    GiveUp {
        /// Failures counted within the window.
        failures: u32,
    },
}

/// Tracks failures and the current delay.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    failures: VecDeque<Instant>,
    next_delay: Duration,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub fn new(policy: RestartPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            failures: VecDeque::new(),
            next_delay: policy.initial,
        }
    }

    /// Records an unexpected exit of a kubelet that ran from `started` to `exited`.
    pub fn on_exit(&mut self, started: Instant, exited: Instant) -> Decision {
        if exited.saturating_duration_since(started) >= self.policy.stable_after {
            self.next_delay = self.policy.initial;
        }
        self.failures.push_back(exited);
        while let Some(&oldest) = self.failures.front() {
            if exited.saturating_duration_since(oldest) > self.policy.window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        let failures = self.failures.len() as u32;
        if failures > self.policy.max_failures {
            return Decision::GiveUp { failures };
        }
        let delay = self.next_delay;
        self.next_delay = (self.next_delay * 2).min(self.policy.max);
        Decision::Restart(delay)
    }

    /// Failures currently inside the window.
    pub fn failures_in_window(&self) -> u32 {
        self.failures.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable_after: Duration::from_secs(120),
            max_failures: 5,
            window: Duration::from_secs(600),
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_failures: 100,
            ..policy()
        });
        let t0 = Instant::now();
        let delays: Vec<_> = (0..9)
            .map(|i| match t.on_exit(t0, t0 + Duration::from_secs(i)) {
                Decision::Restart(d) => d.as_secs(),
                Decision::GiveUp { .. } => 0,
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn stable_run_resets_the_delay() {
        let mut t = RestartTracker::new(policy());
        let t0 = Instant::now();
        assert_eq!(t.on_exit(t0, t0), Decision::Restart(Duration::from_secs(1)));
        assert_eq!(t.on_exit(t0, t0), Decision::Restart(Duration::from_secs(2)));
        let long = t0 + Duration::from_secs(200);
        assert_eq!(
            t.on_exit(t0, long),
            Decision::Restart(Duration::from_secs(1))
        );
    }

    #[test]
    fn gives_up_after_too_many_failures_in_the_window() {
        let mut t = RestartTracker::new(policy());
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(matches!(
                t.on_exit(t0, t0 + Duration::from_secs(i)),
                Decision::Restart(_)
            ));
        }
        assert_eq!(
            t.on_exit(t0, t0 + Duration::from_secs(5)),
            Decision::GiveUp { failures: 6 }
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut t = RestartTracker::new(policy());
        let t0 = Instant::now();
        for i in 0..5 {
            t.on_exit(t0, t0 + Duration::from_secs(i));
        }
        let later = t0 + Duration::from_secs(1000);
        assert!(matches!(t.on_exit(later, later), Decision::Restart(_)));
        assert_eq!(t.failures_in_window(), 1);
    }
}
