//! Live mode (`--agents`): the fake really deploys. Every task is a `mesos-task-emulator` process
//! on one of the configured agents (emulated hosts); Mesos status updates are the emulator's JSON
//! event lines (`launched` = TASK_RUNNING, `health` = TASK_RUNNING with `healthy`, `killing` =
//! TASK_KILLING, `terminal` = the terminal state). Deployments follow Marathon's actors:
//!
//! * start and scale-up (`TaskStartActor`): queue the missing instances; done when N are healthy;
//! * scale-down (`DeploymentActor.scaleRunnable` + `ScalingProposition.propose`): kill the sentenced
//!   instances first, then by condition weight (Staging before Running) and `killSelection`; done
//!   when the killed instances are terminal;
//! * restart (`TaskReplaceActor`): `minHealthy = ceil(N·m)`, `maxCapacity = floor(N·(1+o))` (+1
//!   when they are equal and cover every running instance), kill `running − minHealthy` old
//!   instances at once, queue new ones while `maxCapacity − old − started > 0`, kill the next old
//!   instance each time a new one becomes healthy; done when N new are healthy and no old is left;
//! * outside deployments a terminal instance is replaced (`ScaleAppUpdateStepImpl`);
//! * the launch queue places instances on offers every `--offer-interval` (Mesos' allocation
//!   interval), honouring `hostname UNIQUE` against every non-terminal instance (old, new, killing)
//!   and the agent's resources, after the backoff delay (`RateLimiter`: `backoffSeconds`, times
//!   `backoffFactor` per TASK_FAILED/TASK_FINISHED, at most `maxLaunchDelaySeconds`; never for
//!   TASK_KILLED; reset when a restart begins; overdue delays dropped every 10 s).
//!
//! Every pace taken from the app (health-check timings, backoff) is multiplied by `--time-scale`,
//! so a rehearsal can run the shipped app faster without editing it. The kill grace is a budget,
//! not a pace, and stays as the app says.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::model::{
    App, State, Task, has_health_checks, has_unique_hostname, instances, num, resources,
};
use crate::util::{new_uuid, now_iso};

/// Mesos' health-check timing defaults as Marathon sets them (`HealthCheck.scala`).
const DEFAULT_HC: [(&str, f64); 4] = [
    ("delaySeconds", 15.0),
    ("intervalSeconds", 60.0),
    ("timeoutSeconds", 20.0),
    ("gracePeriodSeconds", 300.0),
];
/// The command executor's kill grace when the app sets none (research/marathon.md §4).
const DEFAULT_KILL_GRACE: f64 = 3.0;
/// The executor exits about a second after the terminal update; the agent destroys the container then.
const DESTROY_DELAY: f64 = 1.0;
/// `RateLimiterActor` drops overdue delays on this period.
const DELAY_CLEANUP: f64 = 10.0;
/// The scaled probe timeout never drops below this (a loaded host must still fork curl in time).
const MIN_PROBE_TIMEOUT: f64 = 1.0;

/// One Mesos agent (an emulated host) that offers resources.
#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    /// The agent's hostname (what `hostname UNIQUE` compares, and the task's `HOST`).
    pub hostname: String,
    /// Where this agent keeps task sandboxes (`<sandbox_root>/<task id>`).
    pub sandbox_root: PathBuf,
    /// The agent's `--executor_environment_variables` (lowest precedence in the task environment).
    #[serde(default)]
    pub extra_env: BTreeMap<String, String>,
    /// The loopback port that stands for this host's health-check port (every emulated host shares
    /// one loopback, so each gets its own port for the app's `healthChecks[].port`).
    #[serde(default)]
    pub health_port: Option<u16>,
    /// Offered CPUs; none = unlimited.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Offered memory (MiB); none = unlimited.
    #[serde(default)]
    pub mem: Option<f64>,
}

/// Live-mode settings from the command line.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The agents offering resources.
    pub agents: Vec<Agent>,
    /// The `mesos-task-emulator` binary.
    pub emulator: PathBuf,
    /// Multiplier for every pace taken from an app (not the kill grace).
    pub time_scale: f64,
    /// Mesos' allocation interval: how often queued instances see offers.
    pub offer_interval: Duration,
    /// Optional JSON-lines log of task and deployment events.
    pub event_log: Option<PathBuf>,
}

/// A live task's process and Mesos view.
#[derive(Debug, Clone)]
pub struct LiveTask {
    /// `lastConfigChangeAt` of the app version the task runs.
    pub config_version: String,
    /// TASK_STAGING, TASK_RUNNING or TASK_KILLING.
    pub state: &'static str,
    /// The last counted health result (none before the first).
    pub healthy: Option<bool>,
    pub first_success: Option<String>,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
    pub consecutive_failures: u64,
    /// Marathon decided to kill it (decommissioned: no longer counts towards `instances`).
    pub killed: bool,
    /// The emulator (the "executor"), signalled to kill the task.
    pub executor_pid: u32,
    /// The resources of the app version it was launched with: cpus, mem, disk, gpus.
    pub resources: [f64; 4],
    /// When it was staged and when it began running (for `killSelection`).
    pub staged: Instant,
    pub running_since: Option<Instant>,
}

/// What a live deployment waits for.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Not live: ends after the fake's fixed duration once every instance is placed.
    Timed,
    /// Start or scale up: ends when `instances` current-config tasks are healthy.
    Start,
    /// Scale down: ends when these tasks are terminal.
    ScaleDown { victims: BTreeSet<String> },
    /// `TaskReplaceActor`.
    Replace(Replace),
}

/// `TaskReplaceActor`'s state.
#[derive(Debug, Clone)]
pub struct Replace {
    old: BTreeSet<String>,
    to_kill: VecDeque<String>,
    started: u64,
    max_capacity: u64,
    counted: BTreeSet<String>,
}

/// `computeRestartStrategy`: (instances to kill at once, maxCapacity).
pub fn restart_strategy(instances: u64, m: f64, o: f64, running: u64) -> (u64, u64) {
    let n = instances as f64;
    let min_healthy = (n * m).ceil().max(0.0) as u64;
    let mut max_capacity = (n * (1.0 + o)).floor().max(0.0) as u64;
    let kill_now = running.saturating_sub(min_healthy);
    if min_healthy == max_capacity && max_capacity <= running {
        max_capacity += 1;
    }
    (kill_now, max_capacity)
}

/// A launch delay (`RateLimiter.Delay`).
#[derive(Debug, Clone)]
struct Delay {
    deadline: Instant,
    delay: f64,
}

/// Live-mode runtime: agents, the events the emulators report, backoff delays, the event log.
pub struct Live {
    cfg: LiveConfig,
    inbox: Arc<Mutex<VecDeque<(String, Value)>>>,
    last_offer: Instant,
    last_cleanup: Instant,
    delays: BTreeMap<(String, String), Delay>,
    log: Option<File>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("agents", &self.cfg.agents.len())
            .finish()
    }
}

impl Live {
    /// Opens the event log (if any); nothing is launched yet.
    pub fn new(cfg: LiveConfig) -> std::io::Result<Live> {
        let log = match &cfg.event_log {
            Some(p) => Some(File::options().create(true).append(true).open(p)?),
            None => None,
        };
        Ok(Live {
            cfg,
            inbox: Arc::new(Mutex::new(VecDeque::new())),
            last_offer: Instant::now(),
            last_cleanup: Instant::now(),
            delays: BTreeMap::new(),
            log,
        })
    }

    /// The agents' hostnames.
    pub fn hostnames(&self) -> Vec<String> {
        self.cfg.agents.iter().map(|a| a.hostname.clone()).collect()
    }

    fn scaled(&self, secs: f64) -> f64 {
        (secs * self.cfg.time_scale).max(0.0)
    }

    /// One JSON line in the event log: `{"t": unix seconds, "event": ..., ...}`.
    fn record(&mut self, event: &str, fields: Value) {
        let Some(log) = self.log.as_mut() else { return };
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut line = json!({"t": (t * 1000.0).round() / 1000.0, "event": event});
        if let (Value::Object(l), Value::Object(f)) = (&mut line, fields) {
            l.extend(f);
        }
        let _ = writeln!(log, "{line}");
        let _ = log.flush();
    }

    fn delay_left(&self, app_id: &str, config: &str) -> Option<Duration> {
        let d = self.delays.get(&(app_id.to_string(), config.to_string()))?;
        let now = Instant::now();
        (d.deadline > now).then(|| d.deadline - now)
    }

    /// `RateLimiter.addDelay`: first failure waits `backoffSeconds`, each further one `factor` times
    /// longer, at most `maxLaunchDelaySeconds`.
    fn add_delay(&mut self, app_id: &str, def: &Map<String, Value>, config: &str) {
        let backoff = self.scaled(num(def, "backoffSeconds", 1.0));
        let factor = num(def, "backoffFactor", 1.15);
        let max = self.scaled(num(def, "maxLaunchDelaySeconds", 300.0));
        let key = (app_id.to_string(), config.to_string());
        let delay = match self.delays.get(&key) {
            Some(d) => (d.delay * factor).min(max),
            None => backoff,
        };
        if delay <= 0.0 {
            self.delays.remove(&key);
            return;
        }
        self.delays.insert(
            key,
            Delay {
                deadline: Instant::now() + Duration::from_secs_f64(delay),
                delay,
            },
        );
        self.record("backoff", json!({"app": app_id, "delay_s": delay}));
    }

    fn reset_delay(&mut self, app_id: &str, config: &str) {
        self.delays
            .remove(&(app_id.to_string(), config.to_string()));
    }

    /// Starts one emulator for `task_id`; its events arrive in the inbox.
    fn spawn(&mut self, agent: &Agent, app: &Value, task_id: &str) -> Result<u32, std::io::Error> {
        let sandbox = agent.sandbox_root.join(task_id);
        std::fs::create_dir_all(&sandbox)?;
        let app_file = sandbox.join("app.json");
        std::fs::write(&app_file, app.to_string())?;
        let mut cmd = Command::new(&self.cfg.emulator);
        cmd.arg("--app")
            .arg(&app_file)
            .arg("--sandbox")
            .arg(&sandbox)
            .args(["--host", &agent.hostname, "--task-id", task_id])
            .args(["--agent-id", &format!("agent-{}", agent.hostname)])
            .args(["--framework-id", "fake-marathon"]);
        for (k, v) in &agent.extra_env {
            cmd.arg("--extra-env").arg(format!("{k}={v}"));
        }
        if let Some(port) = agent.health_port {
            cmd.args(["--health-port", &port.to_string()]);
        }
        let hc = app
            .get("healthChecks")
            .and_then(Value::as_array)
            .and_then(|h| h.first())
            .cloned()
            .unwrap_or(Value::Null);
        for ((key, default), flag) in DEFAULT_HC.iter().zip([
            "--health-delay",
            "--health-interval",
            "--health-timeout",
            "--health-grace",
        ]) {
            let mut v = self.scaled(hc.get(*key).and_then(Value::as_f64).unwrap_or(*default));
            if *key == "timeoutSeconds" {
                v = v.max(MIN_PROBE_TIMEOUT);
            }
            cmd.args([flag, &format!("{v}")]);
        }
        let grace = app
            .get("taskKillGracePeriodSeconds")
            .and_then(Value::as_f64)
            .unwrap_or(DEFAULT_KILL_GRACE);
        // A budget, not a pace: a task that drains in time never waits for it, and scaling it
        // would squeeze the task's own fixed reserves (e.g. the agent's stop and force windows).
        cmd.args(["--kill-grace", &format!("{grace}")]);
        cmd.args([
            "--destroy-delay",
            &format!("{}", self.scaled(DESTROY_DELAY)),
        ]);
        let stderr = File::create(sandbox.join("executor.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Hygiene, not Mesos: agents outlive Marathon, but a killed fake must not leak tasks.
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let inbox = Arc::clone(&self.inbox);
        let id = task_id.to_string();
        std::thread::spawn(move || {
            if let Some(out) = stdout {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        push(&inbox, &id, v);
                    }
                }
            }
            let code = child.wait().ok().and_then(|s| s.code());
            push(&inbox, &id, json!({"event": "exited", "code": code}));
        });
        Ok(pid)
    }

    /// SIGKILLs every emulator still running (the fake's own shutdown).
    pub fn kill_all(pids: &[u32]) {
        for pid in pids {
            signal(*pid, libc::SIGKILL);
        }
    }
}

fn push(inbox: &Mutex<VecDeque<(String, Value)>>, id: &str, v: Value) {
    inbox
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push_back((id.to_string(), v));
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 1
    {
        // SAFETY: kill(2) on an emulator this process started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// `Instance.consideredHealthy`: healthy if the app has no health check, else after a good probe.
fn considered_healthy(def: &Map<String, Value>, t: &Task) -> bool {
    t.live.as_ref().is_some_and(|l| {
        l.state == "TASK_RUNNING" && (!has_health_checks(def) || l.healthy == Some(true))
    })
}

fn is_current(app: &App, t: &Task) -> bool {
    t.live
        .as_ref()
        .is_some_and(|l| l.config_version == app.config_version && !l.killed)
}

/// `ScalingProposition.sortByConditionAndDate`: Staging (weight 2) before Running (4); within a
/// weight, `YOUNGEST_FIRST` kills the latest staged/started first, `OLDEST_FIRST` the earliest.
fn kill_order(def: &Map<String, Value>, tasks: &[&Task]) -> Vec<String> {
    let oldest_first = def.get("killSelection").and_then(Value::as_str) == Some("OLDEST_FIRST");
    let key = |t: &Task| {
        let l = t.live.as_ref();
        let running = l.is_some_and(|l| l.state != "TASK_STAGING");
        let at = l
            .map(|l| {
                if running {
                    l.running_since.unwrap_or(l.staged)
                } else {
                    l.staged
                }
            })
            .unwrap_or_else(Instant::now);
        (if running { 4 } else { 2 }, at, t.seq)
    };
    let mut sorted: Vec<&Task> = tasks.to_vec();
    sorted.sort_by(|a, b| {
        let (wa, ta, sa) = key(a);
        let (wb, tb, sb) = key(b);
        wa.cmp(&wb).then_with(|| {
            if oldest_first {
                ta.cmp(&tb).then(sa.cmp(&sb))
            } else {
                tb.cmp(&ta).then(sb.cmp(&sa))
            }
        })
    });
    sorted.iter().map(|t| t.id.clone()).collect()
}

impl State {
    fn live_mut(&mut self) -> Option<&mut Live> {
        self.live.as_mut()
    }

    /// Pids of every emulator still running.
    pub fn executor_pids(&self) -> Vec<u32> {
        self.apps
            .values()
            .flat_map(|a| a.tasks.iter())
            .filter_map(|t| t.live.as_ref().map(|l| l.executor_pid))
            .collect()
    }

    /// Sets up a new deployment's plan (live mode only): restart when a running task has an older
    /// config, else scale up or down to `instances`.
    pub(crate) fn begin_live_plan(&mut self, dep_id: &str) {
        if self.live.is_none() {
            return;
        }
        let Some(pos) = self.deployments.iter().position(|d| d.id == dep_id) else {
            return;
        };
        let app_id = self.deployments[pos].app_id.clone();
        let Some(app) = self.apps.get(&app_id) else {
            return; // StopApplication: the app is gone, its tasks were killed.
        };
        let stale = app.tasks.iter().any(|t| {
            t.live
                .as_ref()
                .is_some_and(|l| !l.killed && l.config_version != app.config_version)
        });
        let plan = if stale {
            self.begin_replace(&app_id)
        } else {
            self.begin_scale(&app_id)
        };
        if let Some(d) = self.deployments.iter_mut().find(|d| d.id == dep_id) {
            d.plan = plan;
        }
        let action = self.deployments[pos].action;
        if let Some(live) = self.live_mut() {
            live.record(
                "deployment_started",
                json!({"id": dep_id, "app": app_id, "action": action}),
            );
        }
    }

    fn begin_scale(&mut self, app_id: &str) -> Plan {
        let Some(app) = self.apps.get_mut(app_id) else {
            return Plan::Start;
        };
        let n = instances(&app.def);
        let sentenced: BTreeSet<String> = app
            .tasks
            .iter()
            .filter(|t| t.live.as_ref().is_some_and(|l| l.killed))
            .map(|t| t.id.clone())
            .collect();
        let active: Vec<&Task> = app
            .tasks
            .iter()
            .filter(|t| t.live.as_ref().is_some_and(|l| !l.killed))
            .collect();
        let have = active.len() as u64 + app.queued;
        if have <= n {
            app.queued += n - have;
            if sentenced.is_empty() {
                return Plan::Start;
            }
            return Plan::ScaleDown { victims: sentenced };
        }
        let mut excess = have - n;
        let from_queue = excess.min(app.queued);
        app.queued -= from_queue;
        excess -= from_queue;
        let order = kill_order(&app.def, &active);
        let chosen: Vec<String> = order.into_iter().take(excess as usize).collect();
        for id in &chosen {
            self.kill_live_task(app_id, id, "DeploymentScaling");
        }
        Plan::ScaleDown {
            victims: sentenced.into_iter().chain(chosen).collect(),
        }
    }

    fn begin_replace(&mut self, app_id: &str) -> Plan {
        let Some(app) = self.apps.get_mut(app_id) else {
            return Plan::Start;
        };
        let n = instances(&app.def);
        let us = app
            .def
            .get("upgradeStrategy")
            .cloned()
            .unwrap_or(Value::Null);
        let m = us
            .get("minimumHealthCapacity")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        let o = us
            .get("maximumOverCapacity")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        let config = app.config_version.clone();
        let mut active: Vec<&Task> = app
            .tasks
            .iter()
            .filter(|t| t.live.as_ref().is_some_and(|l| !l.killed))
            .collect();
        active.sort_by_key(|t| t.seq);
        let (kill_now, max_capacity) = restart_strategy(n, m, o, active.len() as u64);
        let old: Vec<String> = active
            .iter()
            .filter(|t| t.live.as_ref().is_some_and(|l| l.config_version != config))
            .map(|t| t.id.clone())
            .collect();
        let started = active.len() as u64 - old.len() as u64;
        // The new version replaces whatever the old one had queued.
        app.queued = 0;
        let mut r = Replace {
            old: old.iter().cloned().collect(),
            to_kill: old.into_iter().collect(),
            started,
            max_capacity,
            counted: BTreeSet::new(),
        };
        if let Some(live) = self.live.as_mut() {
            live.reset_delay(app_id, &config);
            live.record(
                "restart_strategy",
                json!({"app": app_id, "instances": n, "kill_now": kill_now, "max_capacity": max_capacity}),
            );
        }
        for _ in 0..kill_now {
            self.kill_next_old(app_id, &mut r);
        }
        self.launch_new(app_id, &mut r);
        Plan::Replace(r)
    }

    fn kill_next_old(&mut self, app_id: &str, r: &mut Replace) {
        while let Some(id) = r.to_kill.pop_front() {
            if r.old.contains(&id) {
                self.kill_live_task(app_id, &id, "Upgrading");
                return;
            }
        }
    }

    /// `TaskReplaceActor.launchInstances`.
    fn launch_new(&mut self, app_id: &str, r: &mut Replace) {
        let Some(app) = self.apps.get_mut(app_id) else {
            return;
        };
        let n = instances(&app.def);
        let left = r
            .max_capacity
            .saturating_sub(r.old.len() as u64)
            .saturating_sub(r.started);
        let now = n.saturating_sub(r.started).min(left);
        app.queued += now;
        r.started += now;
    }

    /// Asks the executor to kill the task (SIGTERM to the emulator: killtree with the kill grace).
    pub(crate) fn kill_live_task(&mut self, app_id: &str, task_id: &str, reason: &str) {
        let Some(task) = self
            .apps
            .get_mut(app_id)
            .and_then(|a| a.tasks.iter_mut().find(|t| t.id == task_id))
        else {
            return;
        };
        let host = task.host.clone();
        let Some(l) = task.live.as_mut() else { return };
        let first = !l.killed;
        l.killed = true;
        l.state = "TASK_KILLING";
        let pid = l.executor_pid;
        signal(pid, libc::SIGTERM);
        if first && let Some(live) = self.live.as_mut() {
            live.record(
                "kill",
                json!({"app": app_id, "task": task_id, "host": host, "reason": reason}),
            );
        }
    }

    /// Kills every task of an app that is being deleted.
    pub(crate) fn kill_all_live(&mut self, app_id: &str) {
        let ids: Vec<String> = self
            .apps
            .get(app_id)
            .map(|a| a.tasks.iter().map(|t| t.id.clone()).collect())
            .unwrap_or_default();
        for id in ids {
            self.kill_live_task(app_id, &id, "DeletingApp");
        }
    }

    /// One step of the live world: status updates, deployments, relaunches, offers.
    pub(crate) fn live_tick(&mut self) {
        let events: Vec<(String, Value)> = match self.live.as_ref() {
            Some(l) => l
                .inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .collect(),
            None => return,
        };
        for (task_id, ev) in events {
            self.status_update(&task_id, &ev);
        }
        self.advance_deployments();
        let locked: BTreeSet<String> = self.deployments.iter().map(|d| d.app_id.clone()).collect();
        let ids: Vec<String> = self.apps.keys().cloned().collect();
        for id in &ids {
            if !locked.contains(id) {
                self.scale_check(id);
            }
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.last_cleanup.elapsed().as_secs_f64() >= live.scaled(DELAY_CLEANUP) {
            live.last_cleanup = Instant::now();
            let now = Instant::now();
            live.delays.retain(|_, d| d.deadline > now);
        }
        if live.last_offer.elapsed() >= live.cfg.offer_interval {
            live.last_offer = Instant::now();
            for id in &ids {
                self.offers(id);
            }
        }
    }

    /// Applies one emulator event (a Mesos status update) to its task.
    fn status_update(&mut self, task_id: &str, ev: &Value) {
        let Some(app_id) = self
            .apps
            .iter()
            .find(|(_, a)| a.tasks.iter().any(|t| t.id == task_id))
            .map(|(id, _)| id.clone())
        else {
            return;
        };
        let kind = ev.get("event").and_then(Value::as_str).unwrap_or("");
        let mut log: Option<(&str, Value)> = None;
        let mut terminal: Option<String> = None;
        if let Some(task) = self
            .apps
            .get_mut(&app_id)
            .and_then(|a| a.tasks.iter_mut().find(|t| t.id == task_id))
            && let Some(l) = task.live.as_mut()
        {
            match kind {
                "launched" => {
                    if l.state == "TASK_STAGING" {
                        l.state = "TASK_RUNNING";
                    }
                    l.running_since = Some(Instant::now());
                    task.started_at = now_iso();
                    log = Some((
                        "running",
                        json!({"pid": ev.get("pid"), "executor_pid": l.executor_pid}),
                    ));
                }
                "health" if ev.get("in_grace_period") != Some(&Value::Bool(true)) => {
                    let healthy = ev.get("healthy").and_then(Value::as_bool).unwrap_or(false);
                    let now = now_iso();
                    if healthy {
                        l.first_success.get_or_insert_with(|| now.clone());
                        l.last_success = Some(now);
                        l.consecutive_failures = 0;
                    } else {
                        l.last_failure = Some(now);
                        l.consecutive_failures += 1;
                    }
                    if l.healthy != Some(healthy) {
                        log = Some(("health", json!({"healthy": healthy})));
                    }
                    l.healthy = Some(healthy);
                }
                "killing" => l.state = "TASK_KILLING",
                "terminal" => {
                    terminal = Some(
                        ev.get("state")
                            .and_then(Value::as_str)
                            .unwrap_or("TASK_FAILED")
                            .to_string(),
                    );
                }
                // The executor ended without a terminal update (e.g. SIGKILLed): the agent reports
                // TASK_FAILED (REASON_EXECUTOR_TERMINATED).
                "exited" | "error" => terminal = Some("TASK_FAILED".to_string()),
                _ => {}
            }
            if let Some((event, mut fields)) = log.take() {
                if let Value::Object(f) = &mut fields {
                    f.insert("app".into(), json!(app_id));
                    f.insert("task".into(), json!(task_id));
                    f.insert("host".into(), json!(task.host));
                }
                if let Some(live) = self.live.as_mut() {
                    live.record(event, fields);
                }
            }
        }
        if let Some(state) = terminal {
            self.task_terminal(&app_id, task_id, &state);
        }
    }

    /// A task reached a terminal state: forget it, back off on FAILED/FINISHED, tell the restart.
    fn task_terminal(&mut self, app_id: &str, task_id: &str, state: &str) {
        let Some(app) = self.apps.get_mut(app_id) else {
            return;
        };
        let Some(pos) = app.tasks.iter().position(|t| t.id == task_id) else {
            return;
        };
        let task = app.tasks.remove(pos);
        let def = app.def.clone();
        let config = task
            .live
            .as_ref()
            .map(|l| l.config_version.clone())
            .unwrap_or_default();
        if let Some(live) = self.live.as_mut() {
            live.record(
                "terminal",
                json!({"app": app_id, "task": task_id, "host": task.host, "state": state}),
            );
            // NotifyRateLimiterStepImpl: Failed, Finished (and Error, Gone, Dropped) back off.
            if state == "TASK_FAILED" || state == "TASK_FINISHED" {
                live.add_delay(app_id, &def, &config);
            }
        }
        let Some(pos) = self.deployments.iter().position(|d| d.app_id == app_id) else {
            return;
        };
        let mut plan = std::mem::replace(&mut self.deployments[pos].plan, Plan::Start);
        if let Plan::Replace(r) = &mut plan {
            if r.old.remove(task_id) {
                self.launch_new(app_id, r);
            } else if self
                .apps
                .get(app_id)
                .is_some_and(|a| a.config_version == config)
            {
                // A new instance failed during the restart: start another.
                r.counted.remove(task_id);
                r.started = r.started.saturating_sub(1);
                self.launch_new(app_id, r);
            }
        }
        if let Some(d) = self.deployments.get_mut(pos) {
            d.plan = plan;
        }
    }

    /// Moves every live deployment on and ends the ones that are done.
    fn advance_deployments(&mut self) {
        let mut finished = Vec::new();
        for pos in 0..self.deployments.len() {
            let app_id = self.deployments[pos].app_id.clone();
            let mut plan = std::mem::replace(&mut self.deployments[pos].plan, Plan::Timed);
            let done = match &mut plan {
                Plan::Timed => {
                    self.deployments[pos].plan = Plan::Timed;
                    continue;
                }
                Plan::Start => {
                    self.scale_check(&app_id);
                    self.apps.get(&app_id).is_none_or(|a| {
                        a.tasks
                            .iter()
                            .filter(|t| is_current(a, t) && considered_healthy(&a.def, t))
                            .count() as u64
                            >= instances(&a.def)
                    })
                }
                Plan::ScaleDown { victims } => self
                    .apps
                    .get(&app_id)
                    .is_none_or(|a| !a.tasks.iter().any(|t| victims.contains(&t.id))),
                Plan::Replace(r) => {
                    let newly: Vec<String> = self
                        .apps
                        .get(&app_id)
                        .map(|a| {
                            a.tasks
                                .iter()
                                .filter(|t| is_current(a, t) && considered_healthy(&a.def, t))
                                .filter(|t| !r.counted.contains(&t.id))
                                .map(|t| t.id.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    for id in newly {
                        r.counted.insert(id);
                        self.kill_next_old(&app_id, r);
                    }
                    self.apps.get(&app_id).is_none_or(|a| {
                        r.old.is_empty()
                            && a.tasks
                                .iter()
                                .filter(|t| is_current(a, t) && considered_healthy(&a.def, t))
                                .count() as u64
                                >= instances(&a.def)
                    })
                }
            };
            self.deployments[pos].plan = plan;
            if done {
                finished.push(self.deployments[pos].id.clone());
            }
        }
        for id in finished {
            if let Some(pos) = self.deployments.iter().position(|d| d.id == id) {
                let d = self.deployments.remove(pos);
                if let Some(live) = self.live.as_mut() {
                    live.record(
                        "deployment_finished",
                        json!({"id": d.id, "app": d.app_id, "action": d.action}),
                    );
                }
            }
        }
    }

    /// `ScaleAppUpdateStepImpl` / `TaskStartActor`: queue instances until `instances` are active.
    fn scale_check(&mut self, app_id: &str) {
        let Some(app) = self.apps.get_mut(app_id) else {
            return;
        };
        let n = instances(&app.def);
        let active = app
            .tasks
            .iter()
            .filter(|t| t.live.as_ref().is_some_and(|l| !l.killed))
            .count() as u64;
        let have = active + app.queued;
        if have < n {
            app.queued += n - have;
        } else if app.queued > 0 && have > n {
            app.queued -= (have - n).min(app.queued);
        }
    }

    /// The offer cycle for one app: place queued instances on agents that fit, after the backoff.
    fn offers(&mut self, app_id: &str) {
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let Some(app) = self.apps.get(app_id) else {
            return;
        };
        if app.queued == 0 || live.delay_left(app_id, &app.config_version).is_some() {
            return;
        }
        let cpus = num(&app.def, "cpus", 1.0);
        let mem = num(&app.def, "mem", 128.0);
        let is_unique = has_unique_hostname(&app.def);
        let mut used: BTreeSet<String> = app.tasks.iter().map(|t| t.host.clone()).collect();
        let mut placements = Vec::new();
        for agent in &live.cfg.agents {
            if placements.len() as u64 >= app.queued {
                break;
            }
            if is_unique && used.contains(&agent.hostname) {
                continue;
            }
            if agent.cpus.is_some_and(|c| c < cpus) || agent.mem.is_some_and(|m| m < mem) {
                continue;
            }
            used.insert(agent.hostname.clone());
            placements.push(agent.clone());
        }
        for agent in placements {
            self.launch(app_id, &agent);
        }
    }

    fn launch(&mut self, app_id: &str, agent: &Agent) {
        let Some(app) = self.apps.get(app_id) else {
            return;
        };
        let app_value = self.app_json_for_launch(app_id);
        let config = app.config_version.clone();
        let version = app.version.clone();
        let resources = resources(&app.def);
        self.task_seq += 1;
        let seq = self.task_seq;
        let task_id = format!(
            "{}.instance-{}._app.1",
            app_id.trim_start_matches('/').replace('/', "_"),
            new_uuid()
        );
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let pid = match live.spawn(agent, &app_value, &task_id) {
            Ok(pid) => pid,
            Err(e) => {
                eprintln!("fake-marathon: cannot launch on {}: {e}", agent.hostname);
                live.record(
                    "launch_failed",
                    json!({"app": app_id, "host": agent.hostname, "error": e.to_string()}),
                );
                return;
            }
        };
        live.record(
            "launched",
            json!({"app": app_id, "task": task_id, "host": agent.hostname, "executor_pid": pid,
                   "config_version": config}),
        );
        let now = now_iso();
        if let Some(app) = self.apps.get_mut(app_id) {
            app.queued = app.queued.saturating_sub(1);
            app.tasks.push(Task {
                id: task_id,
                host: agent.hostname.clone(),
                staged_at: now.clone(),
                started_at: now,
                version,
                seq,
                live: Some(LiveTask {
                    config_version: config,
                    state: "TASK_STAGING",
                    healthy: None,
                    first_success: None,
                    last_success: None,
                    last_failure: None,
                    consecutive_failures: 0,
                    killed: false,
                    executor_pid: pid,
                    resources,
                    staged: Instant::now(),
                    running_since: None,
                }),
            });
        }
    }

    /// Seconds left of the app's launch delay (0 if none).
    pub(crate) fn delay_left_secs(&self, app_id: &str) -> f64 {
        match (self.live.as_ref(), self.apps.get(app_id)) {
            (Some(l), Some(a)) => l
                .delay_left(app_id, &a.config_version)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_strategy_matches_task_replace_actor() {
        // One at a time: N=10, m=0.85, o=0 → kill 1, capacity 10.
        assert_eq!(restart_strategy(10, 0.85, 0.0, 10), (1, 10));
        // 1/0 with no spare: minHealthy == maxCapacity == running → over-capacity of one.
        assert_eq!(restart_strategy(3, 1.0, 0.0, 3), (0, 4));
        // 0/0 kills everything at once.
        assert_eq!(restart_strategy(5, 0.0, 0.0, 5), (5, 5));
        // Default 1/1.
        assert_eq!(restart_strategy(4, 1.0, 1.0, 4), (0, 8));
        // The shipped 0.5 at N=10 kills five at once.
        assert_eq!(restart_strategy(10, 0.5, 0.0, 10), (5, 10));
    }
}
