//! The fake's in-memory Marathon: apps, tasks placed on a fixed host list, deployments, launch queue.
//!
//! Behaviour modelled (research/marathon.md §5–§6):
//! * every change creates a deployment that ends `deploy_duration` after it started, but only once every
//!   instance is placed; an app with a running deployment is locked (409) unless `force=true`, which
//!   cancels the running deployment;
//! * `["hostname","UNIQUE"]` puts at most one instance per host; instances beyond the free hosts stay
//!   unplaced forever, are listed by `/v2/queue` with `UnfulfilledConstraint`, and keep the deployment open;
//! * a config change (anything but `instances`) is a restart: under UNIQUE with no spare host and an
//!   `upgradeStrategy` that may not kill an old instance first (`ceil(N·minimumHealthCapacity) = N`), the
//!   restart stalls exactly like Marathon's `TaskReplaceActor`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::live::{Live, LiveTask, Plan};
use crate::util::{new_uuid, new_version, now_iso};

/// One response: status, JSON body (or none) and extra headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    pub fn message(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, json!({ "message": message.into() }))
    }

    fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) staged_at: String,
    pub(crate) started_at: String,
    pub(crate) version: String,
    pub(crate) seq: u64,
    /// Live mode only: the process, its Mesos state and health.
    pub(crate) live: Option<LiveTask>,
}

#[derive(Debug)]
pub(crate) struct App {
    /// The definition as submitted (merged for partial updates), `id` included, `version` excluded.
    pub(crate) def: Map<String, Value>,
    pub(crate) version: String,
    pub(crate) config_version: String,
    scaling_version: String,
    pub(crate) tasks: Vec<Task>,
    /// When the oldest currently unplaced instance was queued.
    waiting_since: Option<String>,
    /// New-version instances queued by a restart that cannot make progress (no spare host).
    stalled_restart: Option<u64>,
    /// Live mode: instances in the launch queue, waiting for an offer.
    pub(crate) queued: u64,
}

#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) id: String,
    pub(crate) app_id: String,
    version: String,
    pub(crate) action: &'static str,
    started: Instant,
    /// The app definition before this deployment (None: the app did not exist) — for rollback.
    previous: Option<Map<String, Value>>,
    /// Live mode: what the deployment waits for.
    pub(crate) plan: Plan,
}

/// The fake Marathon's whole state.
#[derive(Debug)]
pub struct State {
    hosts: Vec<String>,
    deploy_duration: Duration,
    pub(crate) apps: BTreeMap<String, App>,
    pub(crate) deployments: Vec<Deployment>,
    pub(crate) task_seq: u64,
    /// Live mode: agents, the task launcher, the launch queue's backoff.
    pub(crate) live: Option<Live>,
}

/// Marathon app ids are absolute paths; `k8s/kubelet` and `/k8s/kubelet/` both mean `/k8s/kubelet`.
pub fn normalize_id(id: &str) -> String {
    let trimmed = id.trim_matches('/');
    format!("/{trimmed}")
}

pub(crate) fn num(def: &Map<String, Value>, key: &str, default: f64) -> f64 {
    def.get(key).and_then(Value::as_f64).unwrap_or(default)
}

/// An app's (cpus, mem, disk, gpus) with Marathon's defaults.
pub(crate) fn resources(def: &Map<String, Value>) -> [f64; 4] {
    [
        num(def, "cpus", 1.0),
        num(def, "mem", 128.0),
        num(def, "disk", 0.0),
        num(def, "gpus", 0.0),
    ]
}

pub(crate) fn instances(def: &Map<String, Value>) -> u64 {
    def.get("instances").and_then(Value::as_u64).unwrap_or(1)
}

pub(crate) fn has_unique_hostname(def: &Map<String, Value>) -> bool {
    def.get("constraints")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.as_array().is_some_and(|parts| {
                    parts.first().and_then(Value::as_str) == Some("hostname")
                        && parts.get(1).and_then(Value::as_str) == Some("UNIQUE")
                })
            })
        })
}

fn strategy(def: &Map<String, Value>) -> (f64, f64) {
    let us = def.get("upgradeStrategy").and_then(Value::as_object);
    let m = us
        .and_then(|u| u.get("minimumHealthCapacity"))
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    let o = us
        .and_then(|u| u.get("maximumOverCapacity"))
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    (m, o)
}

fn without_instances(def: &Map<String, Value>) -> Map<String, Value> {
    let mut d = def.clone();
    d.remove("instances");
    d.remove("version");
    d
}

impl State {
    pub fn new(hosts: Vec<String>, deploy_duration: Duration) -> State {
        State {
            hosts,
            deploy_duration,
            apps: BTreeMap::new(),
            deployments: Vec::new(),
            task_seq: 0,
            live: None,
        }
    }

    /// A live State: tasks are real processes on `live`'s agents.
    pub fn new_live(live: Live) -> State {
        let mut s = State::new(live.hostnames(), Duration::ZERO);
        s.live = Some(live);
        s
    }

    /// Ends deployments whose time is up and whose app has every instance placed.
    pub fn tick(&mut self) {
        self.live_tick();
        let now = Instant::now();
        let duration = self.deploy_duration;
        let apps = &self.apps;
        self.deployments.retain(|d| {
            if !matches!(d.plan, Plan::Timed) {
                return true;
            }
            let settled = apps
                .get(&d.app_id)
                .is_none_or(|a| a.unplaced() == 0 && a.stalled_restart.is_none());
            !(settled && now.duration_since(d.started) >= duration)
        });
    }

    fn locked_by(&self, app_id: &str) -> Vec<&Deployment> {
        self.deployments
            .iter()
            .filter(|d| d.app_id == app_id)
            .collect()
    }

    /// 409 if the app has a running deployment and `force` is off; with `force`, cancels them.
    fn check_lock(&mut self, app_id: &str, force: bool) -> Result<(), Reply> {
        let locked: Vec<String> = self
            .locked_by(app_id)
            .iter()
            .map(|d| d.id.clone())
            .collect();
        if locked.is_empty() {
            return Ok(());
        }
        if force {
            self.deployments.retain(|d| d.app_id != app_id);
            return Ok(());
        }
        Err(Reply::json(
            409,
            json!({
                "message": "App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/<DEPLOYMENT_ID>'.",
                "deployments": locked.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
            }),
        ))
    }

    fn start_deployment(
        &mut self,
        app_id: &str,
        version: &str,
        action: &'static str,
        previous: Option<Map<String, Value>>,
    ) -> String {
        let id = new_uuid();
        self.deployments.push(Deployment {
            id: id.clone(),
            app_id: app_id.to_string(),
            version: version.to_string(),
            action,
            started: Instant::now(),
            previous,
            plan: Plan::Timed,
        });
        self.begin_live_plan(&id);
        id
    }

    fn new_task(&mut self, app_id: &str, host: &str, version: &str) -> Task {
        self.task_seq += 1;
        let now = now_iso();
        Task {
            id: format!(
                "{}.instance-{}._app.1",
                app_id.trim_start_matches('/').replace('/', "_"),
                new_uuid()
            ),
            host: host.to_string(),
            staged_at: now.clone(),
            started_at: now,
            version: version.to_string(),
            seq: self.task_seq,
            live: None,
        }
    }

    /// Brings the app's placed tasks towards `instances`: kills surplus, places missing ones on eligible hosts.
    fn reconcile(&mut self, app_id: &str) {
        if self.live.is_some() {
            return; // live mode: the deployment's plan places instances through offers
        }
        let Some(app) = self.apps.get(app_id) else {
            return;
        };
        let target = instances(&app.def) as usize;
        let unique = has_unique_hostname(&app.def);
        let oldest_first =
            app.def.get("killSelection").and_then(Value::as_str) == Some("OLDEST_FIRST");
        let version = app.version.clone();
        let mut tasks = app.tasks.clone();
        if tasks.len() > target {
            tasks.sort_by_key(|t| t.seq);
            let surplus = tasks.len() - target;
            if oldest_first {
                tasks.drain(..surplus);
            } else {
                tasks.truncate(target);
            }
        }
        while tasks.len() < target {
            let host = if unique {
                let used: BTreeSet<&str> = tasks.iter().map(|t| t.host.as_str()).collect();
                self.hosts
                    .iter()
                    .find(|h| !used.contains(h.as_str()))
                    .cloned()
            } else {
                self.hosts
                    .iter()
                    .min_by_key(|h| tasks.iter().filter(|t| &t.host == *h).count())
                    .cloned()
            };
            let Some(host) = host else { break };
            let task = self.new_task(app_id, &host, &version);
            tasks.push(task);
        }
        if let Some(app) = self.apps.get_mut(app_id) {
            app.tasks = tasks;
            if app.unplaced() > 0 {
                if app.waiting_since.is_none() {
                    app.waiting_since = Some(now_iso());
                }
            } else if app.stalled_restart.is_none() {
                app.waiting_since = None;
            }
        }
    }

    /// A config change: replace every task by a new-version one, or stall as Marathon would.
    fn restart(&mut self, app_id: &str) {
        if self.live.is_some() {
            return; // live mode: the deployment's plan is TaskReplaceActor
        }
        let free_hosts = self.free_hosts(app_id);
        let Some(app) = self.apps.get(app_id) else {
            return;
        };
        let n = instances(&app.def);
        let (m, o) = strategy(&app.def);
        let old = app.tasks.len() as u64;
        if has_unique_hostname(&app.def) && old > 0 {
            // TaskReplaceActor.computeRestartStrategy
            let min_healthy = (n as f64 * m).ceil() as u64;
            let mut max_capacity = (n as f64 * (1.0 + o)).floor() as u64;
            let kill_now = old.saturating_sub(min_healthy);
            if min_healthy == max_capacity && max_capacity <= old {
                max_capacity += 1;
            }
            if kill_now == 0 && free_hosts == 0 {
                let queued = max_capacity.saturating_sub(old).max(1);
                if let Some(app) = self.apps.get_mut(app_id) {
                    app.stalled_restart = Some(queued);
                    if app.waiting_since.is_none() {
                        app.waiting_since = Some(now_iso());
                    }
                }
                return;
            }
        }
        let version = app.version.clone();
        let hosts: Vec<String> = app.tasks.iter().map(|t| t.host.clone()).collect();
        let fresh: Vec<Task> = hosts
            .iter()
            .map(|h| self.new_task(app_id, h, &version))
            .collect();
        if let Some(app) = self.apps.get_mut(app_id) {
            app.tasks = fresh;
            app.stalled_restart = None;
        }
        self.reconcile(app_id);
    }

    fn free_hosts(&self, app_id: &str) -> usize {
        let used: BTreeSet<&str> = self
            .apps
            .get(app_id)
            .map(|a| a.tasks.iter().map(|t| t.host.as_str()).collect())
            .unwrap_or_default();
        self.hosts
            .iter()
            .filter(|h| !used.contains(h.as_str()))
            .count()
    }

    /// `POST /v2/apps`.
    pub fn create_app(&mut self, mut def: Map<String, Value>) -> Reply {
        self.tick();
        let id = normalize_id(def.get("id").and_then(Value::as_str).unwrap_or(""));
        if self.apps.contains_key(&id) {
            return Reply::message(409, format!("An app with id [{id}] already exists."));
        }
        def.insert("id".into(), Value::String(id.clone()));
        def.remove("version");
        let version = new_version();
        self.apps.insert(
            id.clone(),
            App {
                def,
                version: version.clone(),
                config_version: version.clone(),
                scaling_version: version.clone(),
                tasks: Vec::new(),
                waiting_since: None,
                stalled_restart: None,
                queued: 0,
            },
        );
        self.reconcile(&id);
        let dep = self.start_deployment(&id, &version, "StartApplication", None);
        let mut body = self.app_json(&id, &Embeds::all(), false);
        if let Value::Object(o) = &mut body {
            o.insert("deployments".into(), json!([{ "id": dep }]));
        }
        Reply::json(201, body)
            .with_header("Location", format!("/v2/apps{id}"))
            .with_header("Marathon-Deployment-Id", dep)
    }

    /// `PUT /v2/apps/{id}`: create or update.
    pub fn put_app(
        &mut self,
        id: &str,
        body: Map<String, Value>,
        partial: bool,
        force: bool,
    ) -> Reply {
        self.tick();
        let id = normalize_id(id);
        let version = new_version();
        let Some(existing) = self.apps.get(&id) else {
            let mut def = body;
            def.insert("id".into(), Value::String(id.clone()));
            def.remove("version");
            self.apps.insert(
                id.clone(),
                App {
                    def,
                    version: version.clone(),
                    config_version: version.clone(),
                    scaling_version: version.clone(),
                    tasks: Vec::new(),
                    waiting_since: None,
                    stalled_restart: None,
                    queued: 0,
                },
            );
            self.reconcile(&id);
            let dep = self.start_deployment(&id, &version, "StartApplication", None);
            return deployment_reply(201, &dep, &version);
        };
        let previous = existing.def.clone();
        let stalled = existing.stalled_restart.is_some();
        let mut def = if partial {
            previous.clone()
        } else {
            Map::new()
        };
        for (k, v) in body {
            def.insert(k, v);
        }
        def.insert("id".into(), Value::String(id.clone()));
        def.remove("version");
        if let Err(reply) = self.check_lock(&id, force) {
            return reply;
        }
        let config_change = without_instances(&def) != without_instances(&previous);
        let action = if config_change || stalled {
            "RestartApplication"
        } else {
            "ScaleApplication"
        };
        if let Some(app) = self.apps.get_mut(&id) {
            app.def = def;
            app.version = version.clone();
            if config_change {
                app.config_version = version.clone();
            } else {
                app.scaling_version = version.clone();
            }
        }
        if config_change || stalled {
            self.restart(&id);
        } else {
            self.reconcile(&id);
        }
        let dep = self.start_deployment(&id, &version, action, Some(previous));
        deployment_reply(200, &dep, &version)
    }

    /// `DELETE /v2/apps/{id}`.
    pub fn delete_app(&mut self, id: &str, force: bool) -> Reply {
        self.tick();
        let id = normalize_id(id);
        if !self.apps.contains_key(&id) {
            return not_found(&id);
        }
        if let Err(reply) = self.check_lock(&id, force) {
            return reply;
        }
        self.kill_all_live(&id);
        let previous = self.apps.remove(&id).map(|a| a.def);
        let version = new_version();
        let dep = self.start_deployment(&id, &version, "StopApplication", previous);
        deployment_reply(200, &dep, &version)
    }

    /// `GET /v2/apps/{id}`.
    pub fn get_app(&mut self, id: &str, embeds: &Embeds) -> Reply {
        self.tick();
        let id = normalize_id(id);
        if !self.apps.contains_key(&id) {
            return not_found(&id);
        }
        Reply::json(200, json!({ "app": self.app_json(&id, embeds, true) }))
    }

    /// `GET /v2/apps`.
    pub fn list_apps(&mut self, embeds: &Embeds) -> Reply {
        self.tick();
        let apps: Vec<Value> = self
            .apps
            .keys()
            .map(|id| self.app_json(id, embeds, false))
            .collect();
        Reply::json(200, json!({ "apps": apps }))
    }

    /// `GET /v2/apps/{id}/tasks`.
    pub fn app_tasks(&mut self, id: &str) -> Reply {
        self.tick();
        let id = normalize_id(id);
        let Some(app) = self.apps.get(&id) else {
            return not_found(&id);
        };
        let tasks: Vec<Value> = app.tasks.iter().map(|t| task_json(&id, app, t)).collect();
        Reply::json(200, json!({ "tasks": tasks }))
    }

    /// `DELETE /v2/apps/{id}/tasks/{taskId}[?scale=true]`.
    pub fn kill_task(&mut self, id: &str, task_id: &str, scale: bool, force: bool) -> Reply {
        self.tick();
        let id = normalize_id(id);
        let Some(app) = self.apps.get(&id) else {
            return not_found(&id);
        };
        let Some(task) = app.tasks.iter().find(|t| t.id == task_id).cloned() else {
            return Reply::message(404, format!("Task '{task_id}' does not exist"));
        };
        let killed = task_json(&id, app, &task);
        let previous = app.def.clone();
        if scale {
            if let Err(reply) = self.check_lock(&id, force) {
                return reply;
            }
            let version = new_version();
            self.kill_live_task(&id, task_id, "KillingTasksViaApi");
            if let Some(app) = self.apps.get_mut(&id) {
                if app.tasks.iter().all(|t| t.live.is_none()) {
                    app.tasks.retain(|t| t.id != task_id);
                }
                let n = instances(&app.def).saturating_sub(1);
                app.def.insert("instances".into(), json!(n));
                app.version = version.clone();
                app.scaling_version = version.clone();
            }
            self.reconcile(&id);
            let dep = self.start_deployment(&id, &version, "ScaleApplication", Some(previous));
            return deployment_reply(200, &dep, &version);
        }
        if self.live.is_some() {
            // The executor kills it; once terminal, the scale check relaunches it.
            self.kill_live_task(&id, task_id, "KillingTasksViaApi");
            return Reply::json(200, json!({ "tasks": [killed] }));
        }
        if let Some(app) = self.apps.get_mut(&id) {
            app.tasks.retain(|t| t.id != task_id);
        }
        // Marathon relaunches the killed instance (on any eligible host).
        self.reconcile(&id);
        Reply::json(200, json!({ "tasks": [killed] }))
    }

    /// `GET /v2/deployments`.
    pub fn list_deployments(&mut self) -> Reply {
        self.tick();
        let list: Vec<Value> = self.deployments.iter().map(deployment_json).collect();
        Reply::json(200, Value::Array(list))
    }

    /// `GET /v2/deployments/{id}`.
    pub fn get_deployment(&mut self, dep_id: &str) -> Reply {
        self.tick();
        match self.deployments.iter().find(|d| d.id == dep_id) {
            Some(d) => Reply::json(200, deployment_json(d)),
            None => Reply::message(404, format!("DeploymentPlan {dep_id} does not exist")),
        }
    }

    /// `DELETE /v2/deployments/{id}[?force=true]`: force stops it; otherwise rolls back.
    pub fn delete_deployment(&mut self, dep_id: &str, force: bool) -> Reply {
        self.tick();
        let Some(pos) = self.deployments.iter().position(|d| d.id == dep_id) else {
            return Reply::message(404, format!("DeploymentPlan {dep_id} does not exist"));
        };
        let dep = self.deployments.remove(pos);
        if force {
            if let Some(app) = self.apps.get_mut(&dep.app_id) {
                app.stalled_restart = None;
            }
            return Reply {
                status: 202,
                body: None,
                headers: Vec::new(),
            };
        }
        let version = new_version();
        match dep.previous {
            None => {
                self.apps.remove(&dep.app_id);
            }
            Some(previous) => {
                let restart = self
                    .apps
                    .get(&dep.app_id)
                    .is_some_and(|a| without_instances(&a.def) != without_instances(&previous));
                match self.apps.get_mut(&dep.app_id) {
                    Some(app) => {
                        app.def = previous;
                        app.version = version.clone();
                        if restart {
                            app.config_version = version.clone();
                        }
                        app.stalled_restart = None;
                    }
                    None => {
                        self.apps.insert(
                            dep.app_id.clone(),
                            App {
                                def: previous,
                                version: version.clone(),
                                config_version: version.clone(),
                                scaling_version: version.clone(),
                                tasks: Vec::new(),
                                waiting_since: None,
                                stalled_restart: None,
                                queued: 0,
                            },
                        );
                    }
                }
                if restart {
                    self.restart(&dep.app_id);
                } else {
                    self.reconcile(&dep.app_id);
                }
            }
        }
        let new_dep = self.start_deployment(&dep.app_id, &version, "RollbackApplication", None);
        deployment_reply(200, &new_dep, &version)
    }

    /// `GET /v2/queue[?embed=lastUnusedOffers]`.
    pub fn queue(&mut self, with_offers: bool) -> Reply {
        self.tick();
        let mut entries = Vec::new();
        for (id, app) in &self.apps {
            let count = if self.live.is_some() {
                app.queued
            } else {
                app.unplaced() + app.stalled_restart.unwrap_or(0)
            };
            if count == 0 {
                continue;
            }
            // Every host offered; every offer came from a host already running an instance.
            let hosts = self.hosts.len() as u64;
            let since = app.waiting_since.clone().unwrap_or_else(now_iso);
            let reasons = [
                ("UnfulfilledRole", 0, hosts),
                ("UnfulfilledConstraint", hosts, hosts),
                ("NoCorrespondingReservationFound", 0, 0),
                ("AgentMaintenance", 0, 0),
                ("InsufficientCpus", 0, 0),
                ("InsufficientMemory", 0, 0),
                ("InsufficientDisk", 0, 0),
                ("InsufficientGpus", 0, 0),
                ("InsufficientPorts", 0, 0),
                ("DeclinedScarceResources", 0, 0),
            ];
            let summary: Vec<Value> = reasons
                .iter()
                .map(|(r, declined, processed)| {
                    json!({"reason": r, "declined": declined, "processed": processed})
                })
                .collect();
            let now = now_iso();
            let mut entry = json!({
                "count": count,
                "delay": {
                    "timeLeftSeconds": self.delay_left_secs(id).ceil() as u64,
                    "overdue": false,
                },
                "since": since,
                "app": self.app_json(id, &Embeds::none(), false),
                "processedOffersSummary": {
                    "processedOffersCount": hosts,
                    "unusedOffersCount": hosts,
                    "lastUnusedOfferAt": now,
                    "lastUsedOfferAt": Value::Null,
                    "rejectSummaryLastOffers": summary,
                    "rejectSummaryLaunchAttempt": summary,
                },
            });
            if with_offers && let Value::Object(o) = &mut entry {
                let offers: Vec<Value> = self
                    .hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        json!({
                            "offer": {
                                "id": format!("offer-{i}"),
                                "agentId": format!("agent-{h}"),
                                "hostname": h,
                                "resources": [],
                                "attributes": [],
                            },
                            "timestamp": now,
                            "reason": ["UnfulfilledConstraint"],
                        })
                    })
                    .collect();
                o.insert("lastUnusedOffers".into(), Value::Array(offers));
            }
            entries.push(entry);
        }
        Reply::json(200, json!({ "queue": entries }))
    }

    /// The app as Marathon hands it to the executor: defaults filled in, current version.
    pub(crate) fn app_json_for_launch(&self, id: &str) -> Value {
        self.app_json(id, &Embeds::none(), false)
    }

    fn app_json(&self, id: &str, embeds: &Embeds, with_tasks_default: bool) -> Value {
        let Some(app) = self.apps.get(id) else {
            return Value::Null;
        };
        let mut out = json!({
            "id": id,
            "cmd": Value::Null,
            "args": Value::Null,
            "instances": 1,
            "cpus": 1.0,
            "mem": 128.0,
            "disk": 0.0,
            "gpus": 0,
            "constraints": [],
            "env": {},
            "labels": {},
            "healthChecks": [],
            "portDefinitions": [],
            "backoffSeconds": 1,
            "backoffFactor": 1.15,
            "maxLaunchDelaySeconds": 300,
            "killSelection": "YOUNGEST_FIRST",
            "taskKillGracePeriodSeconds": Value::Null,
            "upgradeStrategy": { "minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0 },
            "unreachableStrategy": { "inactiveAfterSeconds": 0, "expungeAfterSeconds": 0 },
        });
        if let Value::Object(o) = &mut out {
            for (k, v) in &app.def {
                o.insert(k.clone(), v.clone());
            }
            o.insert("version".into(), json!(app.version));
            o.insert(
                "versionInfo".into(),
                json!({
                    "lastScalingAt": app.scaling_version,
                    "lastConfigChangeAt": app.config_version,
                }),
            );
            if embeds.counts {
                let (staged, running, healthy, unhealthy) = counts(app);
                o.insert("tasksStaged".into(), json!(staged));
                o.insert("tasksRunning".into(), json!(running));
                o.insert("tasksHealthy".into(), json!(healthy));
                o.insert("tasksUnhealthy".into(), json!(unhealthy));
            }
            if embeds.deployments {
                let deps: Vec<Value> = self
                    .locked_by(id)
                    .iter()
                    .map(|d| json!({ "id": d.id }))
                    .collect();
                o.insert("deployments".into(), Value::Array(deps));
            }
            if embeds.tasks || (with_tasks_default && embeds.is_default) {
                let tasks: Vec<Value> = app.tasks.iter().map(|t| task_json(id, app, t)).collect();
                o.insert("tasks".into(), Value::Array(tasks));
            }
        }
        out
    }
}

/// (staged, running, healthy, unhealthy) task counts as `embed=app.counts` reports them.
fn counts(app: &App) -> (usize, usize, usize, usize) {
    let checks = has_health_checks(&app.def);
    let mut c = (0, 0, 0, 0);
    for t in &app.tasks {
        let (state, healthy) = match &t.live {
            Some(l) => (l.state, l.healthy),
            None => ("TASK_RUNNING", checks.then_some(true)),
        };
        if state == "TASK_STAGING" {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
        if checks {
            match healthy {
                Some(true) => c.2 += 1,
                Some(false) => c.3 += 1,
                None => {}
            }
        }
    }
    c
}

impl App {
    fn unplaced(&self) -> u64 {
        instances(&self.def).saturating_sub(self.tasks.len() as u64)
    }
}

pub(crate) fn has_health_checks(def: &Map<String, Value>) -> bool {
    def.get("healthChecks")
        .and_then(Value::as_array)
        .is_some_and(|h| !h.is_empty())
}

fn task_json(app_id: &str, app: &App, t: &Task) -> Value {
    let health: Vec<Value> = if let Some(l) = &t.live {
        match l.healthy {
            Some(alive) if has_health_checks(&app.def) => vec![json!({
                "alive": alive,
                "consecutiveFailures": l.consecutive_failures,
                "firstSuccess": l.first_success,
                "lastSuccess": l.last_success,
                "lastFailure": l.last_failure,
                "lastFailureCause": Value::Null,
                "instanceId": t.id,
            })],
            _ => Vec::new(),
        }
    } else if has_health_checks(&app.def) {
        vec![json!({
            "alive": true,
            "consecutiveFailures": 0,
            "firstSuccess": t.started_at,
            "lastSuccess": t.started_at,
            "lastFailure": Value::Null,
            "lastFailureCause": Value::Null,
            "instanceId": t.id,
        })]
    } else {
        Vec::new()
    };
    // A task keeps the resources of the version it was launched with.
    let res = t
        .live
        .as_ref()
        .map_or_else(|| resources(&app.def), |l| l.resources);
    json!({
        "id": t.id,
        "appId": app_id,
        "host": t.host,
        "slaveId": format!("agent-{}", t.host),
        "state": t.live.as_ref().map_or("TASK_RUNNING", |l| l.state),
        "stagedAt": t.staged_at,
        "startedAt": t.started_at,
        "version": t.version,
        "ports": [],
        "servicePorts": [],
        "ipAddresses": [],
        "localVolumes": [],
        "role": "*",
        "healthCheckResults": health,
        "cpus": res[0],
        "mem": res[1],
        "disk": res[2],
        "gpus": res[3],
    })
}

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "version": d.version,
        "affectedApps": [d.app_id],
        "affectedPods": [],
        "steps": [{ "actions": [{ "action": d.action, "app": d.app_id }] }],
        "currentActions": [{ "action": d.action, "app": d.app_id, "readinessCheckResults": [] }],
        "currentStep": 1,
        "totalSteps": 1,
    })
}

fn deployment_reply(status: u16, dep: &str, version: &str) -> Reply {
    Reply::json(status, json!({ "deploymentId": dep, "version": version }))
        .with_header("Marathon-Deployment-Id", dep.to_string())
}

fn not_found(id: &str) -> Reply {
    Reply::message(404, format!("App '{id}' does not exist"))
}

/// Which `embed=` parts a GET asked for.
#[derive(Debug, Clone)]
pub struct Embeds {
    pub counts: bool,
    pub deployments: bool,
    pub tasks: bool,
    /// No `embed` parameter was given.
    pub is_default: bool,
}

impl Embeds {
    pub fn all() -> Embeds {
        Embeds {
            counts: true,
            deployments: true,
            tasks: true,
            is_default: true,
        }
    }

    pub fn none() -> Embeds {
        Embeds {
            counts: false,
            deployments: false,
            tasks: false,
            is_default: false,
        }
    }

    /// From the `embed` values; none given means Marathon's single-app default (everything).
    pub fn from_values<'a>(values: impl Iterator<Item = &'a str>) -> Embeds {
        let values: Vec<&str> = values.collect();
        if values.is_empty() {
            return Embeds::all();
        }
        let has = |suffix: &str| {
            values
                .iter()
                .any(|v| *v == format!("app.{suffix}") || *v == format!("apps.{suffix}"))
        };
        Embeds {
            counts: has("counts"),
            deployments: has("deployments"),
            tasks: has("tasks"),
            is_default: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(hosts: &[&str]) -> State {
        State::new(
            hosts.iter().map(|h| h.to_string()).collect(),
            Duration::from_millis(0),
        )
    }

    fn def(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => Map::new(),
        }
    }

    #[test]
    fn unique_places_one_per_host_and_queues_the_rest() {
        let mut s = state(&["h1", "h2"]);
        let r = s.put_app(
            "/a",
            def(json!({"instances": 3, "constraints": [["hostname", "UNIQUE"]]})),
            true,
            false,
        );
        assert_eq!(r.status, 201);
        let tasks = s.app_tasks("/a").body.unwrap_or(Value::Null);
        assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(2));
        let q = s.queue(false).body.unwrap_or(Value::Null);
        assert_eq!(q["queue"][0]["count"], 1);
        // Deployment never finishes, next change is locked.
        let r = s.put_app("/a", def(json!({"instances": 2})), true, false);
        assert_eq!(r.status, 409);
        let r = s.put_app("/a", def(json!({"instances": 2})), true, true);
        assert_eq!(r.status, 200);
        s.tick();
        assert_eq!(s.list_deployments().body, Some(Value::Array(Vec::new())));
    }

    #[test]
    fn restart_stalls_without_spare_host_under_default_strategy() {
        let mut s = state(&["h1", "h2"]);
        s.put_app(
            "/a",
            def(json!({"instances": 2, "constraints": [["hostname", "UNIQUE"]], "cmd": "a"})),
            true,
            false,
        );
        s.tick();
        let r = s.put_app("/a", def(json!({"cmd": "b"})), true, false);
        assert_eq!(r.status, 200);
        s.tick();
        let q = s.queue(false).body.unwrap_or(Value::Null);
        assert_eq!(q["queue"][0]["count"], 2);
        // One-at-a-time strategy rolls.
        let r = s.put_app(
            "/a",
            def(json!({"upgradeStrategy": {"minimumHealthCapacity": 0.25, "maximumOverCapacity": 0}})),
            true,
            true,
        );
        assert_eq!(r.status, 200);
        s.tick();
        let q = s.queue(false).body.unwrap_or(Value::Null);
        assert_eq!(q["queue"].as_array().map(Vec::len), Some(0));
    }
}
