//! The agent's health verdict (DESIGN §5), decided by what a task restart can fix.
//!
//! A 503 makes Marathon kill the task, which drains the node. So `/healthz` answers 503 only for
//! faults that killing and relaunching the task can plausibly fix, or that must not be left
//! alone: kubelet not running or just restarted, stopped or a zombie, its own healthz not
//! answering, and kubelet not renewing its node Lease while the API answers. Everything else is
//! reported in the 200 body, the metrics and the logs without being acted on: the Ready
//! condition, the API being away, an allocatable mismatch. An API-server outage therefore never
//! fails every node's check at once. The matrix is in README.md ("Health").
//!
//! Kubelet's own 10248 healthz is a bare ping that says `ok` even while kubelet is about to exit,
//! so the verdict also weighs the agent's phase, kubelet's process state and uptime, and how
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

/// What the agent last learnt about its node from the Kubernetes API (only with API access).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeApiView {
    /// When the reading finished.
    pub at: Instant,
    /// Whether the API answered at all (any HTTP answer counts; a refused connection or a
    /// timeout does not).
    pub reachable: bool,
    /// The node Lease `kube-node-lease/<node>`.
    pub lease: LeaseReading,
    /// The Ready condition: `Ok` for Ready=True, else the status and reason; `None` if unknown.
    pub ready: Option<Result<(), String>>,
    /// A one-line description of an allocatable that differs from the lease, if it does.
    pub allocatable_mismatch: Option<String>,
    /// The node still carries this agent's cordon (its annotation and `spec.unschedulable`):
    /// the task is returning and the uncordon is pending. Never set for an operator's cordon.
    pub own_cordon: bool,
}

/// The 503 reason while the node still carries this agent's cordon.
pub const UNCORDON_PENDING: &str = "returning: node still cordoned by this agent, uncordon pending";

/// What the node Lease said at the last reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseReading {
    /// `renewTime + leaseDurationSeconds` is still ahead.
    Current,
    /// The Lease expired this long ago (`renewTime + leaseDurationSeconds` in the past).
    Expired {
        /// How long ago it expired.
        ago: Duration,
        /// The Lease's `leaseDurationSeconds`.
        duration: Duration,
    },
    /// The API answered that there is no such Lease.
    Missing,
    /// Not known (API away, access refused, malformed Lease).
    Unknown,
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
    /// The node as last read from the API, if the agent has API access.
    pub api: Option<NodeApiView>,
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
    /// An API reading older than this is ignored (the API counts as away).
    pub api_fresh_for: Duration,
}

/// Upstream's default `nodeLeaseDurationSeconds` (kubelet config v1beta1 defaults): a freshly
/// started kubelet gets this long to renew its Lease before an expired Lease counts against it.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(40);

/// The verdict: healthy with the 200 body (`ok`, then any reported conditions), or unhealthy
/// with a one-line reason.
pub type Verdict = Result<String, String>;

impl HealthState {
    /// A fresh state in `phase`.
    pub fn new(phase: Phase) -> HealthState {
        HealthState {
            phase,
            kubelet: None,
            last_exit: None,
            last_probe: None,
            api: None,
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
        let Some(api) = &self.api else {
            return Ok("ok".into());
        };
        let api_age = now.saturating_duration_since(api.at);
        if !api.reachable || api_age > rules.api_fresh_for {
            // The API being away is never the node's fault: report it, keep the task.
            return Ok(format!(
                "ok; Kubernetes API not answering (last reading {:.0}s ago): node Lease and Ready not checked",
                api_age.as_secs_f64()
            ));
        }
        let lease_problem = match &api.lease {
            LeaseReading::Expired { ago, duration } if uptime >= *duration => Some(format!(
                "expired {:.0}s ago (leaseDurationSeconds {})",
                ago.as_secs_f64(),
                duration.as_secs()
            )),
            LeaseReading::Missing if uptime >= DEFAULT_LEASE_DURATION => {
                Some("does not exist".to_string())
            }
            _ => None,
        };
        if let Some(problem) = lease_problem {
            return Err(format!(
                "kubelet pid {pid} is not renewing its node Lease while the API answers: the Lease {problem}"
            ));
        }
        if api.own_cordon {
            // Marathon must not see this task healthy (and kill the next host of a roll) while
            // this node is still unschedulable; within gracePeriodSeconds it only delays success.
            return Err(UNCORDON_PENDING.into());
        }
        let mut body = String::from("ok");
        match &api.ready {
            Some(Err(why)) => body.push_str(&format!("; node not Ready: {why} (reported only)")),
            None => body.push_str("; node Ready condition unknown"),
            Some(Ok(())) => {}
        }
        if matches!(api.lease, LeaseReading::Unknown) {
            body.push_str("; node Lease not readable");
        }
        if let Some(m) = &api.allocatable_mismatch {
            body.push_str(&format!("; {m}"));
        }
        Ok(body)
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

    /// The verdict now, leaving out the pending uncordon: whether the node may be uncordoned.
    pub fn verdict_before_uncordon(&self) -> Verdict {
        let mut state = self.snapshot();
        if let Some(api) = state.api.as_mut() {
            api.own_cordon = false;
        }
        state.verdict(Instant::now(), self.rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: VerdictRules = VerdictRules {
        probe_fresh_for: Duration::from_secs(4),
        min_uptime: Duration::from_secs(3),
        api_fresh_for: Duration::from_secs(30),
    };

    fn serving(now: Instant) -> HealthState {
        let mut s = HealthState::new(Phase::Serving);
        s.kubelet = Some((42, now - Duration::from_secs(100)));
        s.last_probe = Some(Probe {
            at: now - Duration::from_secs(1),
            result: Ok(()),
        });
        s
    }

    fn api(now: Instant, lease: LeaseReading) -> NodeApiView {
        NodeApiView {
            at: now,
            reachable: true,
            lease,
            ready: Some(Ok(())),
            allocatable_mismatch: None,
            own_cordon: false,
        }
    }

    #[test]
    fn healthy_when_running_probed_and_settled() {
        let now = Instant::now();
        assert_eq!(serving(now).verdict(now, RULES), Ok("ok".into()));
        let mut s = serving(now);
        s.api = Some(api(now, LeaseReading::Current));
        assert_eq!(s.verdict(now, RULES), Ok("ok".into()));
    }

    #[test]
    fn each_reason_for_503() {
        let now = Instant::now();
        type Change = Box<dyn Fn(&mut HealthState)>;
        let expired = LeaseReading::Expired {
            ago: Duration::from_secs(5),
            duration: Duration::from_secs(40),
        };
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
                        at: now - Duration::from_secs(101),
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
                "not renewing its node Lease",
                Box::new(move |s| s.api = Some(api(now, expired.clone()))),
            ),
            (
                "Lease does not exist",
                Box::new(move |s| s.api = Some(api(now, LeaseReading::Missing))),
            ),
            (
                UNCORDON_PENDING,
                Box::new(move |s| {
                    let mut view = api(now, LeaseReading::Current);
                    view.own_cordon = true;
                    s.api = Some(view);
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

    #[test]
    fn reported_only_conditions_keep_200() {
        let now = Instant::now();
        type Change = Box<dyn Fn(&mut NodeApiView)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "node not Ready: Ready=False",
                Box::new(|a| a.ready = Some(Err("Ready=False (KubeletNotReady)".into()))),
            ),
            ("Ready condition unknown", Box::new(|a| a.ready = None)),
            (
                "API not answering",
                Box::new(|a| {
                    a.reachable = false;
                    a.lease = LeaseReading::Unknown;
                }),
            ),
            (
                // an expired Lease seen while the API is away does not count
                "API not answering",
                Box::new(|a| {
                    a.reachable = false;
                    a.lease = LeaseReading::Missing;
                }),
            ),
            (
                "API not answering",
                Box::new(move |a| a.at = now - Duration::from_secs(31)),
            ),
            (
                "Lease not readable",
                Box::new(|a| a.lease = LeaseReading::Unknown),
            ),
            (
                "allocatable differs",
                Box::new(|a| a.allocatable_mismatch = Some("allocatable differs".into())),
            ),
        ];
        for (want, change) in cases {
            let mut s = serving(now);
            let mut view = api(now, LeaseReading::Current);
            change(&mut view);
            s.api = Some(view);
            let body = s.verdict(now, RULES).expect(want);
            assert!(
                body.starts_with("ok; ") && body.contains(want),
                "{want}: {body}"
            );
        }
    }

    #[test]
    fn an_own_cordon_fails_only_while_the_api_answers() {
        let now = Instant::now();
        let mut s = serving(now);
        let mut view = api(now, LeaseReading::Current);
        view.own_cordon = true;
        s.api = Some(view.clone());
        assert_eq!(s.verdict(now, RULES), Err(UNCORDON_PENDING.to_string()));
        // The outage rule holds: a cordon seen before the API went away never fails the check.
        view.reachable = false;
        s.api = Some(view.clone());
        assert!(s.verdict(now, RULES).is_ok());
        view.reachable = true;
        view.at = now - Duration::from_secs(31);
        s.api = Some(view);
        assert!(s.verdict(now, RULES).is_ok());
        // Kubelet's own faults come first.
        s.last_probe = None;
        assert!(
            s.verdict(now, RULES)
                .expect_err("probe")
                .contains("not been probed")
        );
    }

    #[test]
    fn a_fresh_kubelet_gets_one_lease_duration_to_renew() {
        let now = Instant::now();
        let mut s = serving(now);
        s.kubelet = Some((42, now - Duration::from_secs(20)));
        s.api = Some(api(
            now,
            LeaseReading::Expired {
                ago: Duration::from_secs(300),
                duration: Duration::from_secs(40),
            },
        ));
        assert_eq!(s.verdict(now, RULES), Ok("ok".into()));
        s.kubelet = Some((42, now - Duration::from_secs(41)));
        assert!(s.verdict(now, RULES).is_err());
        s.api = Some(api(now, LeaseReading::Missing));
        assert!(s.verdict(now, RULES).is_err());
    }
}
