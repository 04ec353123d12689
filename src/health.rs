//! The agent's health verdict (DESIGN §5). Kubelet's own 10248 healthz is a bare ping that says
//! `ok` even while kubelet is about to exit, so the verdict also weighs what only the agent
//! knows: its phase, whether a kubelet process runs and for how long, its recent exits, and how
//! fresh the last successful probe is. Requests never wait on kubelet: they read this state.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Starting kubelet (first start or a restart after backoff).
    Starting,
    /// Kubelet runs with the lease.
    Serving,
    /// The task is being killed; the node is being drained.
    Draining,
    /// Standby: kubelet runs with zero allocatable.
    Standby,
}

/// The outcome of one probe of kubelet's healthz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// When the probe finished.
    pub at: Instant,
    /// `Ok(())` for HTTP 200, else a one-line reason.
    pub result: Result<(), String>,
}

/// The node's Ready condition as last read from the API (when the agent has API access).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReadiness {
    /// When the agent read it.
    pub at: Instant,
    /// `Ok(())` when Ready=True with a recent heartbeat, else the reason.
    pub result: Result<(), String>,
}

/// Everything the verdict is computed from.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// The agent's phase.
    pub phase: Phase,
    /// The running kubelet's pid and start time.
    pub kubelet: Option<(u32, Instant)>,
    /// The last kubelet exit and a description of it.
    pub last_exit: Option<(Instant, String)>,
    /// The last probe of kubelet's healthz.
    pub last_probe: Option<Probe>,
    /// The node's readiness, if known.
    pub node: Option<NodeReadiness>,
    /// Whether kubelet is stopped (SIGSTOP) or a zombie, per the last process sample.
    pub process_problem: Option<String>,
}

/// Timing parameters of the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictRules {
    /// A successful probe older than this no longer counts (interval + timeout + slack).
    pub probe_fresh_for: Duration,
    /// Kubelet must have run this long before it counts as healthy: a kubelet that refuses its
    /// reservation answers `ok` briefly and then exits.
    pub min_uptime: Duration,
}

/// The verdict: healthy, or unhealthy with a one-line reason.
pub type Verdict = Result<(), String>;

impl HealthState {
    /// A fresh state in `phase`.
    pub fn new(phase: Phase) -> HealthState {
        HealthState {
            phase,
            kubelet: None,
            last_exit: None,
            last_probe: None,
            node: None,
            process_problem: None,
        }
    }

    /// Computes the verdict at `now`.
    pub fn verdict(&self, now: Instant, rules: VerdictRules) -> Verdict {
        if self.phase == Phase::Draining {
            return Err("draining: the task is being killed".into());
        }
        let Some((pid, started)) = self.kubelet else {
            return Err(match &self.last_exit {
                Some((at, how)) => format!(
                    "kubelet is not running (exited {:.1}s ago with {how})",
                    now.saturating_duration_since(*at).as_secs_f64()
                ),
                None => "kubelet is not running yet".into(),
            });
        };
        if let Some(problem) = &self.process_problem {
            return Err(format!("kubelet pid {pid} is {problem}"));
        }
        let uptime = now.saturating_duration_since(started);
        if uptime < rules.min_uptime {
            return Err(format!(
                "kubelet pid {pid} started {:.1}s ago; healthy after {:.0}s of uptime",
                uptime.as_secs_f64(),
                rules.min_uptime.as_secs_f64()
            ));
        }
        match &self.last_probe {
            Some(p) if p.at < started => {
                return Err(format!(
                    "kubelet pid {pid} has not answered its healthz since it started"
                ));
            }
            None => return Err(format!("kubelet pid {pid} has not been probed yet")),
            Some(Probe {
                result: Err(why), ..
            }) => return Err(format!("kubelet healthz: {why}")),
            Some(Probe { at, result: Ok(()) }) => {
                let age = now.saturating_duration_since(*at);
                if age > rules.probe_fresh_for {
                    return Err(format!(
                        "kubelet healthz has not answered for {:.1}s",
                        age.as_secs_f64()
                    ));
                }
            }
        }
        if let Some(NodeReadiness {
            result: Err(why), ..
        }) = &self.node
        {
            return Err(format!("node not ready: {why}"));
        }
        Ok(())
    }
}

/// Shared, lock-protected health state plus its rules.
#[derive(Debug)]
pub struct SharedHealth {
    state: Mutex<HealthState>,
    rules: VerdictRules,
}

impl SharedHealth {
    /// Wraps a state.
    pub fn new(state: HealthState, rules: VerdictRules) -> SharedHealth {
        SharedHealth {
            state: Mutex::new(state),
            rules,
        }
    }

    /// Applies a change to the state.
    pub fn update(&self, change: impl FnOnce(&mut HealthState)) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut guard);
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> HealthState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The verdict now.
    pub fn verdict(&self) -> Verdict {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .verdict(Instant::now(), self.rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: VerdictRules = VerdictRules {
        probe_fresh_for: Duration::from_secs(4),
        min_uptime: Duration::from_secs(3),
    };

    fn serving(now: Instant) -> HealthState {
        let mut s = HealthState::new(Phase::Serving);
        s.kubelet = Some((42, now - Duration::from_secs(10)));
        s.last_probe = Some(Probe {
            at: now - Duration::from_secs(1),
            result: Ok(()),
        });
        s
    }

    #[test]
    fn healthy_when_running_probed_and_settled() {
        let now = Instant::now();
        assert_eq!(serving(now).verdict(now, RULES), Ok(()));
    }

    #[test]
    fn each_reason_for_503() {
        let now = Instant::now();
        type Change = Box<dyn Fn(&mut HealthState)>;
        let cases: Vec<(&str, Change)> = vec![
            ("draining", Box::new(|s| s.phase = Phase::Draining)),
            (
                "not running",
                Box::new(|s| {
                    s.kubelet = None;
                    s.last_exit = Some((Instant::now(), "exit code 1".into()));
                }),
            ),
            ("started", Box::new(move |s| s.kubelet = Some((42, now)))),
            (
                "healthz: HTTP 500",
                Box::new(move |s| {
                    s.last_probe = Some(Probe {
                        at: now,
                        result: Err("HTTP 500".into()),
                    })
                }),
            ),
            (
                "not answered for",
                Box::new(move |s| {
                    s.last_probe = Some(Probe {
                        at: now - Duration::from_secs(9),
                        result: Ok(()),
                    })
                }),
            ),
            (
                "since it started",
                Box::new(move |s| {
                    s.last_probe = Some(Probe {
                        at: now - Duration::from_secs(11),
                        result: Ok(()),
                    })
                }),
            ),
            ("not been probed", Box::new(|s| s.last_probe = None)),
            (
                "stopped",
                Box::new(|s| s.process_problem = Some("stopped".into())),
            ),
            (
                "node not ready",
                Box::new(move |s| {
                    s.node = Some(NodeReadiness {
                        at: now,
                        result: Err("Ready=False".into()),
                    })
                }),
            ),
        ];
        for (want, change) in cases {
            let mut s = serving(now);
            change(&mut s);
            let got = s.verdict(now, RULES).expect_err(want);
            assert!(got.contains(want), "{want}: {got}");
        }
    }
}
