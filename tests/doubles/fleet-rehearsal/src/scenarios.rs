//! The scenarios, each measured while the invariants are sampled.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::fleet::Fleet;
use crate::http;
use crate::logs;
use crate::procs::{ppid, processes, signal};
use crate::watch::{Phase, Watch};
use crate::workload::{self, Workload};

/// Every scenario, in the order `all` runs them (rolls happen at the full N).
pub const ALL: [&str; 5] = ["scale-up", "roll", "api-outage", "sigkill", "scale-down"];

/// One scenario's figures.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub name: String,
    pub wall_s: f64,
    pub ready_s: Option<f64>,
    pub roll_s: Option<f64>,
    /// Σ over hosts of (drain + kubelet start to healthy), and the largest of each.
    pub budget: Option<(f64, f64, f64)>,
    pub recovery_s: Option<f64>,
    pub longest_unavailable_s: f64,
    pub evictions: u64,
    /// 429s the agents report retrying (fields of their kill summaries).
    pub retries_429: u64,
    /// 429s the API server sent (API Priority and Fairness), to anyone.
    pub apf_429: u64,
    /// Evictions the agents forced past a PodDisruptionBudget.
    pub forced_past_pdb: u64,
    pub min_schedulable: Option<usize>,
    pub missing_pods: u64,
    pub failure: Option<String>,
}

impl Figures {
    /// One line: `scenario NAME: key=value ...`.
    pub fn line(&self) -> String {
        let mut s = format!("scenario {}: wall_s={:.1}", self.name, self.wall_s);
        let opt = |s: &mut String, k: &str, v: Option<f64>| {
            if let Some(v) = v {
                s.push_str(&format!(" {k}={v:.1}"));
            }
        };
        opt(&mut s, "time_to_ready_s", self.ready_s);
        opt(&mut s, "roll_s", self.roll_s);
        if let (Some(roll), Some((sum, drain, start))) = (self.roll_s, self.budget) {
            s.push_str(&format!(
                " drain_plus_start_sum_s={sum:.1} max_drain_s={drain:.1} max_start_to_healthy_s={start:.1} roll_over_sum={:.2}",
                if sum > 0.0 { roll / sum } else { 0.0 }
            ));
        }
        opt(&mut s, "recovery_s", self.recovery_s);
        s.push_str(&format!(
            " longest_unavailable_s={:.1} evictions={} forced_past_pdb={} apiserver_429={} agent_429_retries={} min_schedulable={} missing_pods={}",
            self.longest_unavailable_s,
            self.evictions,
            self.forced_past_pdb,
            self.apf_429,
            self.retries_429,
            self.min_schedulable.map_or("-".to_string(), |m| m.to_string()),
            self.missing_pods
        ));
        if let Some(f) = &self.failure {
            s.push_str(&format!(" FAILED: {f}"));
        }
        s
    }
}

/// The rehearsal's state between scenarios.
pub struct Rehearsal<'a> {
    pub fleet: &'a Fleet,
    pub watch: &'a Watch,
    pub workloads: Vec<Workload>,
    pub instances: u64,
    /// The lease per node: (cpus, mem MiB).
    pub lease: (f64, f64),
    pub settle: Duration,
    /// Sandboxes whose kill summary was already counted (one summary per task).
    reports_seen: std::collections::BTreeSet<String>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn wait(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl<'a> Rehearsal<'a> {
    pub fn new(fleet: &'a Fleet, watch: &'a Watch, instances: u64, settle: Duration) -> Self {
        Rehearsal {
            fleet,
            watch,
            workloads: workload::plan(instances),
            instances,
            lease: (2.0, 4096.0),
            settle,
            reports_seen: Default::default(),
        }
    }

    /// The lease a resize moves to: 3 cpus / 6 GiB from the initial 2 / 4 GiB, and back.
    fn other_lease(&self) -> (f64, f64) {
        if self.lease == (2.0, 4096.0) {
            (3.0, 6144.0)
        } else {
            (2.0, 4096.0)
        }
    }

    /// How long a deployment of the whole fleet may take before the rehearsal calls it stuck.
    fn deploy_timeout(&self) -> f64 {
        60.0 + self.instances as f64 * 400.0 * self.fleet.scale
    }

    /// Runs one scenario by name.
    pub fn run(&mut self, name: &str) -> Figures {
        let (roll, voluntary) = match name {
            "roll" | "api-outage" => (true, true),
            "sigkill" => (false, false),
            _ => (false, true),
        };
        self.watch.begin(Phase {
            name: name.to_string(),
            roll,
            voluntary,
        });
        let apf = "/debug/fake-apiserver/apf?reset=true";
        let _ = http::get(self.fleet.api_port, apf);
        let t0 = unix_now();
        let start = Instant::now();
        let mut f = Figures {
            name: name.to_string(),
            ..Figures::default()
        };
        let result = match name {
            "scale-up" => self.scale_up(&mut f),
            "roll" => self.resize(&mut f, self.other_lease(), false),
            "api-outage" => self.resize(&mut f, self.other_lease(), true),
            "sigkill" => self.sigkill(&mut f),
            "scale-down" => self.scale_down(&mut f),
            other => Err(format!("unknown scenario {other:?}")),
        };
        if let Err(e) = result {
            f.failure = Some(e);
        }
        f.missing_pods = self.settle_workloads();
        f.wall_s = start.elapsed().as_secs_f64();
        let tally = self.watch.end();
        f.longest_unavailable_s = tally.phase_longest_unavailable;
        f.min_schedulable = tally.phase_min_schedulable;
        let new: Vec<_> = logs::kill_reports(&self.fleet.work)
            .into_iter()
            .filter(|r| self.reports_seen.insert(r.0.clone()))
            .collect();
        (f.evictions, f.retries_429, f.forced_past_pdb) = logs::evictions_and_429(&new);
        f.apf_429 = http::get(self.fleet.api_port, apf)
            .and_then(|v| v["rejected"].as_u64())
            .unwrap_or(0);
        if f.roll_s.is_some() {
            let ev = logs::events(&self.fleet.events, t0, unix_now());
            f.budget = Some(logs::roll_budget(&ev));
        }
        f
    }

    /// Waits until every ReplicaSet is back at its count; returns the pods still missing.
    pub fn settle_workloads(&self) -> u64 {
        let api = self.fleet.api_port;
        let mut missing = u64::MAX;
        wait(self.settle, || {
            if let Some(s) = workload::status(api, &self.workloads) {
                missing = workload::missing(&s);
            }
            missing == 0
        });
        if missing == 0 {
            self.watch.arm_pdbs(&self.workloads);
        }
        missing
    }

    fn deploy(
        &self,
        tag: &str,
        instances: u64,
        lease: (f64, f64),
        wait_for: bool,
    ) -> Result<(), String> {
        let app = self.fleet.app(instances, lease.0, lease.1)?;
        let file = self.fleet.app_file(tag, &app)?;
        let file = file.display().to_string();
        let mut args = vec!["deploy", "--app", file.as_str()];
        if wait_for {
            args.push("--wait");
        }
        let (code, err) = self.fleet.marathon(&args, self.deploy_timeout());
        if code != 0 {
            return Err(format!("marathon deploy exited {code}: {err}"));
        }
        Ok(())
    }

    fn wait_schedulable(&self, n: usize, timeout: Duration) -> Option<f64> {
        let start = Instant::now();
        wait(timeout, || self.watch.tally().schedulable_now >= n)
            .then(|| start.elapsed().as_secs_f64())
    }

    /// 0 → N: every host's standby yields to a new task.
    fn scale_up(&mut self, f: &mut Figures) -> Result<(), String> {
        let start = Instant::now();
        self.deploy("scale-up", self.instances, self.lease, false)?;
        let timeout = Duration::from_secs_f64(self.deploy_timeout());
        let n = self.instances as usize;
        if self.wait_schedulable(n, timeout).is_none() {
            return Err(format!(
                "fewer than {n} schedulable nodes after {timeout:?}"
            ));
        }
        f.ready_s = Some(start.elapsed().as_secs_f64());
        self.wait_deployments(timeout)?;
        workload::create(self.fleet.api_port, &self.workloads, 1)
    }

    fn wait_deployments(&self, timeout: Duration) -> Result<(), String> {
        let port = self.fleet.marathon_port;
        if wait(timeout, || {
            http::get(port, "/v2/deployments").is_some_and(|d| d == Value::Array(Vec::new()))
        }) {
            Ok(())
        } else {
            Err(format!("deployment still running after {timeout:?}"))
        }
    }

    /// A rolling resize of every node; with `outage`, the API server is down while the first
    /// host drains.
    fn resize(&mut self, f: &mut Figures, lease: (f64, f64), outage: bool) -> Result<(), String> {
        let start = Instant::now();
        let t0 = unix_now();
        let timeout = Duration::from_secs_f64(self.deploy_timeout());
        if !outage {
            self.deploy("roll", self.instances, lease, true)?;
        } else {
            self.deploy("outage", self.instances, lease, false)?;
            let events = &self.fleet.events;
            let first_kill = wait(Duration::from_secs(30), || {
                logs::events(events, t0, unix_now())
                    .iter()
                    .any(|e| e["event"] == "kill")
            });
            if !first_kill {
                return Err("the roll never killed a task".into());
            }
            // A 30 s outage (scaled): shorter than the node monitor grace, so no node goes
            // NotReady for it; long enough to cover a drain.
            let down = Duration::from_secs_f64((30.0 * self.fleet.scale).max(2.0));
            std::fs::write(&self.fleet.api_fault, "down")
                .map_err(|e| format!("fault file: {e}"))?;
            std::thread::sleep(down);
            std::fs::remove_file(&self.fleet.api_fault).map_err(|e| format!("fault file: {e}"))?;
            self.wait_deployments(timeout)?;
        }
        f.roll_s = Some(start.elapsed().as_secs_f64());
        self.lease = lease;
        let n = self.instances as usize;
        if self.wait_schedulable(n, Duration::from_secs(30)).is_none() {
            return Err(format!("fewer than {n} schedulable nodes after the roll"));
        }
        Ok(())
    }

    /// SIGKILL one host's agent: standby must take the host back and Marathon relaunch.
    fn sigkill(&mut self, f: &mut Figures) -> Result<(), String> {
        let host = self
            .watch
            .leased_hosts()
            .into_iter()
            .next()
            .ok_or("no host holds a lease")?;
        let h = self
            .fleet
            .hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or("unknown host")?;
        let agent = self.fleet.bins.agent.display().to_string();
        let needle = format!("{} ", h.root_dir_arg());
        // The task's root pid is the agent (`args`, not `cmd`); its kubelet names the host.
        let kubelet_parent = processes()
            .into_iter()
            .filter(|(_, c)| c.contains(&needle))
            .filter_map(|(pid, _)| ppid(pid))
            .find(|pp| {
                processes()
                    .iter()
                    .any(|(p, c)| p == pp && c.starts_with(&agent) && c.contains(" run"))
            })
            .ok_or_else(|| format!("no `run` agent found on {host}"))?;
        let start = Instant::now();
        signal(kubelet_parent, libc::SIGKILL);
        let status = h.kubelet_dir().join("fake-kubelet/status.json");
        let back = wait(Duration::from_secs(20), || {
            std::fs::read_to_string(&status)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|s| {
                    s["allocatable"]["cpu_millicores"] == 0
                        && s["pid"]
                            .as_i64()
                            .is_some_and(|p| crate::procs::alive(p as i32))
                })
        });
        if !back {
            return Err(format!("standby did not take {host} back"));
        }
        let n = self.instances as usize;
        let timeout = Duration::from_secs_f64(self.deploy_timeout());
        let killed_at = unix_now();
        let events = &self.fleet.events;
        let seen = self.watch.tally().samples;
        // Marathon saw the task fail and launched a replacement that turned healthy; then the
        // fleet is back at N schedulable nodes in a sample taken after that.
        let relaunched = wait(timeout, || {
            logs::events(events, killed_at, unix_now())
                .iter()
                .any(|e| e["event"] == "health" && e["healthy"] == true)
        }) && {
            let healthy_seen = self.watch.tally().samples;
            wait(timeout, || {
                let t = self.watch.tally();
                t.samples > healthy_seen.max(seen) + 1 && t.schedulable_now >= n
            })
        };
        if !relaunched {
            return Err("Marathon did not relaunch the task".into());
        }
        f.recovery_s = Some(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// N → N − k: the youngest tasks drain and their hosts go back to standby.
    fn scale_down(&mut self, f: &mut Figures) -> Result<(), String> {
        let k = (self.instances / 5).max(1);
        let target = self.instances - k;
        let start = Instant::now();
        let n = target.to_string();
        let (code, err) = self
            .fleet
            .marathon(&["scale", &n, "--wait"], self.deploy_timeout());
        if code != 0 {
            return Err(format!("marathon scale exited {code}: {err}"));
        }
        self.instances = target;
        f.roll_s = None;
        f.recovery_s = Some(start.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Resident memory (MiB) summed over every agent process (`run` and `standby`) of the fleet.
pub fn agent_rss_mib(fleet: &Fleet) -> f64 {
    let agent = fleet.bins.agent.display().to_string();
    processes()
        .into_iter()
        .filter(|(_, c)| c.starts_with(&agent) && (c.contains(" run") || c.contains(" standby")))
        .filter_map(|(pid, _)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}
