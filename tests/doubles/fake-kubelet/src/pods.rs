//! Pods: manifests, kubelet-style admission (fitsRequest), running pods as detached processes,
//! adopting them after a restart, and terminating them.

use crate::procs;
use crate::quantity::Quantity;
use crate::util::{self, log};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Api,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub creation: String,
    pub command: Vec<String>,
    pub container_name: String,
    pub image: String,
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    pub grace_secs: i64,
    pub restart_policy: String,
    pub source: Source,
    /// status.phase as the API reports it (API pods only)
    pub api_phase: Option<String>,
    /// Some(grace seconds) when metadata.deletionTimestamp is set
    pub deletion_grace: Option<i64>,
}

impl PodSpec {
    pub fn key(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }
    fn best_effort(&self) -> bool {
        self.cpu_millicores == 0 && self.memory_bytes == 0
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Parse a v1 Pod object.
pub fn pod_from_value(
    v: &Value,
    source: Source,
    fallback_uid: &str,
    fallback_creation: &str,
) -> Result<PodSpec, String> {
    let name = str_at(v, &["metadata", "name"])
        .filter(|s| !s.is_empty())
        .ok_or("metadata.name is required")?
        .to_string();
    let namespace = str_at(v, &["metadata", "namespace"])
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let uid = str_at(v, &["metadata", "uid"])
        .filter(|s| !s.is_empty())
        .unwrap_or(fallback_uid)
        .to_string();
    let creation = str_at(v, &["metadata", "creationTimestamp"])
        .filter(|s| !s.is_empty())
        .unwrap_or(fallback_creation)
        .to_string();
    let containers = v
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or("spec.containers must have at least one container")?;
    let c0 = &containers[0];
    let strings = |k: &str| -> Vec<String> {
        c0.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut command = strings("command");
    command.extend(strings("args"));
    if command.is_empty() {
        // no image entrypoint to fall back on: behave like a long-running container
        command = vec!["sleep".into(), "infinity".into()];
    }
    let mut cpu = 0i64;
    let mut mem = 0i64;
    for c in containers {
        let get = |res: &str| -> Result<Option<Quantity>, String> {
            let q = c
                .pointer(&format!("/resources/requests/{res}"))
                .or_else(|| c.pointer(&format!("/resources/limits/{res}")));
            match q {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Quantity::parse(s)
                    .map(Some)
                    .map_err(|e| format!("resources.requests.{res}: {s:?}: {e}")),
                Some(Value::Number(n)) => Quantity::parse(&n.to_string())
                    .map(Some)
                    .map_err(|e| format!("resources.requests.{res}: {n}: {e}")),
                Some(other) => Err(format!("resources.requests.{res}: invalid {other}")),
            }
        };
        if let Some(q) = get("cpu")? {
            cpu += q.milli_value();
        }
        if let Some(q) = get("memory")? {
            mem += q.value();
        }
    }
    let grace_secs = v
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30)
        .max(0);
    let deletion_grace = if v
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        Some(
            v.pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(grace_secs)
                .max(0),
        )
    } else {
        None
    };
    Ok(PodSpec {
        namespace,
        name,
        uid,
        creation,
        command,
        container_name: c0
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("c0")
            .to_string(),
        image: c0
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        cpu_millicores: cpu,
        memory_bytes: mem,
        grace_secs,
        restart_policy: str_at(v, &["spec", "restartPolicy"])
            .unwrap_or("Always")
            .to_string(),
        source,
        api_phase: str_at(v, &["status", "phase"]).map(String::from),
        deletion_grace,
    })
}

/// Read static pods from a manifest directory (`*.json`, hidden files ignored).
pub fn read_manifest_dir(dir: &Path, bad: &mut HashMap<PathBuf, u64>) -> Vec<PodSpec> {
    if dir.is_file() {
        // --pod-manifest-path may name a single file
        return read_files(vec![dir.to_path_buf()], bad);
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && p.is_file()
        })
        .collect();
    read_files(paths, bad)
}

fn read_files(mut paths: Vec<PathBuf>, bad: &mut HashMap<PathBuf, u64>) -> Vec<PodSpec> {
    let mut out = Vec::new();
    paths.sort();
    for p in paths {
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        let mut h = p.as_os_str().as_encoded_bytes().to_vec();
        h.extend_from_slice(&data);
        let hash = util::fnv64(&h);
        let parsed = serde_json::from_slice::<Value>(&data)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                let created = std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .map(util::rfc3339)
                    .unwrap_or_else(|_| util::now_rfc3339());
                pod_from_value(&v, Source::File, &format!("{hash:016x}"), &created)
            });
        match parsed {
            Ok(pod) => {
                bad.remove(&p);
                out.push(pod);
            }
            Err(e) => {
                if bad.insert(p.clone(), hash) != Some(hash) {
                    log(
                        'E',
                        &format!(
                            "\"Could not process manifest file\" err=\"{e}\" path=\"{}\"",
                            p.display()
                        ),
                    );
                }
            }
        }
    }
    out
}

/// What the engine needs from the API server (implemented by the API client).
pub trait ApiSink {
    fn patch_pod_status(&mut self, ns: &str, name: &str, patch: &Value) -> bool;
    /// true when the pod is gone (deleted, 404, or uid precondition no longer matches)
    fn delete_pod(&mut self, ns: &str, name: &str, uid: &str) -> bool;
}

struct PodState {
    spec: PodSpec,
    phase: String,
    reason: String,
    message: String,
    admitted: bool,
    finished: bool,
    proc_: Option<(i32, u64)>,
    started_at: Option<String>,
    restarts: u32,
    backoff: Duration,
    next_start: Instant,
    kill: Option<Arc<AtomicBool>>,
    removing: bool,
    vanished: bool,
    transition: String,
    reported: Option<String>,
}

impl PodState {
    fn new(spec: PodSpec) -> PodState {
        PodState {
            spec,
            phase: "Pending".into(),
            reason: String::new(),
            message: String::new(),
            admitted: false,
            finished: false,
            proc_: None,
            started_at: None,
            restarts: 0,
            backoff: container_backoff(),
            next_start: Instant::now(),
            kill: None,
            removing: false,
            vanished: false,
            transition: util::now_rfc3339(),
            reported: None,
        }
    }

    fn set_phase(&mut self, phase: &str) {
        if self.phase != phase {
            self.phase = phase.to_string();
            self.transition = util::now_rfc3339();
        }
    }

    fn kill_done(&self) -> bool {
        self.kill.as_ref().is_none_or(|k| k.load(Ordering::SeqCst))
    }

    fn begin_kill(&mut self, grace: i64) {
        if self.kill.is_some() {
            return;
        }
        if let Some((pid, st)) = self.proc_ {
            log(
                'I',
                &format!(
                    "\"Killing pod\" pod=\"{}/{}\" pid={pid} gracePeriod={grace}",
                    self.spec.namespace, self.spec.name
                ),
            );
            self.kill = Some(procs::terminate(pid, st, Duration::from_secs(grace as u64)));
        }
    }

    fn status_json(&self) -> Value {
        json!({
            "namespace": self.spec.namespace,
            "name": self.spec.name,
            "uid": self.spec.uid,
            "source": self.spec.source.as_str(),
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "admitted": self.admitted,
            "pid": self.proc_.map(|p| p.0),
            "start_time": self.proc_.map(|p| p.1),
            "restarts": self.restarts,
            "terminating": self.removing || self.kill.is_some(),
            "cpu_millicores": self.spec.cpu_millicores,
            "memory_bytes": self.spec.memory_bytes,
            "grace_seconds": self.spec.grace_secs,
        })
    }

    /// The pod status patch (merge patch) the kubelet would send.
    fn api_patch(&self) -> Value {
        let t = &self.transition;
        let mut status = json!({"phase": self.phase});
        if !self.reason.is_empty() {
            status["reason"] = json!(self.reason);
            status["message"] = json!(self.message);
        }
        let ready = self.phase == "Running";
        let rs = if ready { "True" } else { "False" };
        if self.admitted {
            status["hostIP"] = json!("127.0.0.1");
            status["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
            status["podIP"] = json!("127.0.0.1");
            status["podIPs"] = json!([{"ip": "127.0.0.1"}]);
            status["startTime"] = json!(self.started_at.clone().unwrap_or_else(|| t.clone()));
            status["conditions"] = json!([
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "Ready", "status": rs, "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "ContainersReady", "status": rs, "lastProbeTime": null, "lastTransitionTime": t},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": t},
            ]);
            let state = match (self.phase.as_str(), self.proc_) {
                ("Running", Some((pid, _))) => {
                    json!({"running": {"startedAt": self.started_at}, "pid": pid})
                }
                ("Succeeded", _) => json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                _ => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            let mut cs = json!({
                "name": self.spec.container_name,
                "image": self.spec.image,
                "imageID": "",
                "ready": ready,
                "started": ready,
                "restartCount": self.restarts,
                "state": {},
            });
            if let Some(pid) = state.get("pid") {
                cs["containerID"] = json!(format!("fake://{pid}"));
            }
            let mut st = state;
            if let Some(o) = st.as_object_mut() {
                o.remove("pid");
            }
            cs["state"] = st;
            status["containerStatuses"] = json!([cs]);
        }
        json!({"metadata": {"uid": self.spec.uid}, "status": status})
    }
}

#[derive(Debug, Clone)]
struct Record {
    uid: String,
    pid: i32,
    start: u64,
}

/// The first restart delay of an exited container: kubelet's `backOffPeriod` (10 s), doubling
/// to `MaxContainerBackOff` (300 s = 30 × it). `FAKE_KUBELET_CONTAINER_BACKOFF` (a Go duration)
/// shortens it for tests.
fn container_backoff() -> Duration {
    std::env::var("FAKE_KUBELET_CONTAINER_BACKOFF")
        .ok()
        .and_then(|v| crate::flags::parse_go_duration(&v))
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(10))
}

/// `HandlePodCleanups` kills containers of pods unknown to the pod workers (rejected at
/// admission, or orphaned by a restart) with `PodTerminationGracePeriodSecondsOverride: &one`.
const ORPHAN_GRACE_SECS: i64 = 1;

pub struct Engine {
    records_dir: PathBuf,
    /// `<root-dir>/pods`: one `<uid>` directory per pod kubelet has not cleaned up.
    pod_dirs: PathBuf,
    max_pods: i64,
    alloc_cpu: i64,
    alloc_mem: i64,
    pods: BTreeMap<String, PodState>,
    orphans: HashMap<String, Record>,
    orphans_done: bool,
}

impl Engine {
    pub fn new(root_dir: &Path, max_pods: i64, alloc_cpu: i64, alloc_mem: i64) -> Engine {
        let records_dir = root_dir.join("fake-kubelet/pods");
        let mut orphans = HashMap::new();
        if let Ok(rd) = std::fs::read_dir(&records_dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let Some(v) = std::fs::read(&p)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                else {
                    continue;
                };
                let key = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                if let (Some(pid), Some(start)) = (
                    v.get("pid").and_then(Value::as_i64),
                    v.get("start_time").and_then(Value::as_u64),
                ) {
                    orphans.insert(
                        key,
                        Record {
                            uid: v
                                .get("uid")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                            pid: pid as i32,
                            start,
                        },
                    );
                }
            }
        }
        Engine {
            records_dir,
            pod_dirs: root_dir.join("pods"),
            max_pods,
            alloc_cpu,
            alloc_mem,
            pods: BTreeMap::new(),
            orphans,
            orphans_done: false,
        }
    }

    fn admit(&self, spec: &PodSpec) -> Result<(), (String, String)> {
        let active: Vec<&PodState> = self
            .pods
            .values()
            .filter(|p| p.admitted && !p.removing && !p.finished)
            .collect();
        let n = active.len() as i64;
        if n + 1 > self.max_pods {
            return Err((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {n}, capacity: {}",
                    self.max_pods
                ),
            ));
        }
        if spec.best_effort() {
            return Ok(());
        }
        let used_cpu: i64 = active.iter().map(|p| p.spec.cpu_millicores).sum();
        let used_mem: i64 = active.iter().map(|p| p.spec.memory_bytes).sum();
        if spec.cpu_millicores > 0 && used_cpu + spec.cpu_millicores > self.alloc_cpu {
            return Err((
                "OutOfcpu".into(),
                format!(
                    "Node didn't have enough resource: cpu, requested: {}, used: {used_cpu}, capacity: {}",
                    spec.cpu_millicores, self.alloc_cpu
                ),
            ));
        }
        if spec.memory_bytes > 0 && used_mem + spec.memory_bytes > self.alloc_mem {
            return Err((
                "OutOfmemory".into(),
                format!(
                    "Node didn't have enough resource: memory, requested: {}, used: {used_mem}, capacity: {}",
                    spec.memory_bytes, self.alloc_mem
                ),
            ));
        }
        Ok(())
    }

    fn record_path(&self, key: &str) -> PathBuf {
        self.records_dir.join(format!("{key}.json"))
    }

    /// One sync-loop iteration.
    pub fn sync(
        &mut self,
        desired: Vec<PodSpec>,
        sources_ready: bool,
        mut api: Option<&mut dyn ApiSink>,
    ) {
        let mut want: BTreeMap<String, PodSpec> = BTreeMap::new();
        for p in desired {
            want.entry(p.key()).or_insert(p);
        }
        // 1. pods that went away, were replaced, or are being deleted
        for (k, st) in self.pods.iter_mut() {
            match want.get(k) {
                Some(d) if d.uid == st.spec.uid && d.deletion_grace.is_none() => {
                    st.spec.api_phase = d.api_phase.clone();
                }
                Some(d) if d.uid == st.spec.uid => {
                    st.spec.deletion_grace = d.deletion_grace;
                    if !st.removing {
                        st.removing = true;
                        st.begin_kill(d.deletion_grace.unwrap_or(st.spec.grace_secs));
                    }
                }
                _ => {
                    st.vanished = true;
                    if !st.removing {
                        st.removing = true;
                        let g = st.spec.deletion_grace.unwrap_or(st.spec.grace_secs);
                        st.begin_kill(g);
                    }
                }
            }
        }
        // 2. finish removals whose processes are gone
        let done: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, s)| s.removing && s.kill_done())
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            let st = &self.pods[&k];
            let gone = if st.spec.source == Source::Api && !st.vanished {
                match api.as_deref_mut() {
                    Some(a) => a.delete_pod(&st.spec.namespace, &st.spec.name, &st.spec.uid),
                    None => false,
                }
            } else {
                true
            };
            if gone {
                log(
                    'I',
                    &format!(
                        "\"Pod removed\" pod=\"{}/{}\"",
                        st.spec.namespace, st.spec.name
                    ),
                );
                let _ = std::fs::remove_file(self.record_path(&k));
                let _ = std::fs::remove_dir_all(self.pod_dirs.join(&st.spec.uid));
                self.pods.remove(&k);
            }
        }
        // 3. new pods, oldest first, through admission
        let mut new: Vec<PodSpec> = want
            .into_values()
            .filter(|p| !self.pods.contains_key(&p.key()))
            .collect();
        new.sort_by(|a, b| {
            (&a.creation, &a.namespace, &a.name).cmp(&(&b.creation, &b.namespace, &b.name))
        });
        for spec in new {
            let key = spec.key();
            let mut old_proc = None;
            if let Some(r) = self.orphans.remove(&key)
                && procs::is_alive(r.pid, r.start)
            {
                if r.uid == spec.uid {
                    old_proc = Some((r.pid, r.start));
                } else {
                    procs::terminate(
                        r.pid,
                        r.start,
                        Duration::from_secs(ORPHAN_GRACE_SECS as u64),
                    );
                }
            }
            let mut st = PodState::new(spec);
            st.proc_ = old_proc;
            let terminal = matches!(st.spec.api_phase.as_deref(), Some("Failed" | "Succeeded"));
            if let Some(g) = st.spec.deletion_grace {
                st.removing = true;
                st.begin_kill(g);
            } else if terminal {
                let ph = st.spec.api_phase.clone().unwrap_or_default();
                st.set_phase(&ph);
                st.finished = true;
                let g = st.spec.grace_secs;
                st.begin_kill(g);
                st.reported = Some(String::new()); // never re-report a terminal API pod
            } else {
                match self.admit(&st.spec) {
                    Ok(()) => {
                        st.admitted = true;
                        if let Some((pid, _)) = st.proc_ {
                            st.set_phase("Running");
                            st.started_at = Some(util::now_rfc3339());
                            log(
                                'I',
                                &format!(
                                    "\"Adopted running pod\" pod=\"{}/{}\" pid={pid}",
                                    st.spec.namespace, st.spec.name
                                ),
                            );
                        }
                    }
                    Err((reason, msg)) => {
                        log(
                            'W',
                            &format!(
                                "\"Pod admission failed\" pod=\"{}/{}\" reason=\"{reason}\" message=\"{msg}\"",
                                st.spec.namespace, st.spec.name
                            ),
                        );
                        st.set_phase("Failed");
                        st.reason = reason;
                        st.message = format!("Pod was rejected: {msg}");
                        // A rejected pod never reaches a pod worker (HandlePodAdditions →
                        // rejectPod); housekeeping (HandlePodCleanups) then kills its running
                        // containers as unknown to the pod workers, with a 1 s grace override.
                        st.begin_kill(ORPHAN_GRACE_SECS);
                    }
                }
            }
            self.pods.insert(key, st);
        }
        // 4. once every source has reported, kill processes of pods nobody wants any more
        if sources_ready && !self.orphans_done {
            self.orphans_done = true;
            for (k, r) in self.orphans.drain() {
                if procs::is_alive(r.pid, r.start) {
                    log(
                        'I',
                        &format!("\"Killing orphaned pod\" key=\"{k}\" pid={}", r.pid),
                    );
                    procs::terminate(
                        r.pid,
                        r.start,
                        Duration::from_secs(ORPHAN_GRACE_SECS as u64),
                    );
                }
                let _ = std::fs::remove_dir_all(self.pod_dirs.join(&r.uid));
                let _ = std::fs::remove_file(self.records_dir.join(format!("{k}.json")));
            }
        }
        // 5. run admitted pods; restart exited ones (restartPolicy Always)
        let now = Instant::now();
        for st in self.pods.values_mut() {
            if st.kill.is_some() && st.kill_done() {
                st.proc_ = None;
                if !st.removing {
                    st.kill = None;
                }
            }
            if !st.admitted || st.removing || st.finished {
                continue;
            }
            if let Some((pid, start)) = st.proc_ {
                if procs::is_alive(pid, start) {
                    continue;
                }
                st.proc_ = None;
                if st.spec.restart_policy != "Always" {
                    st.finished = true;
                    st.set_phase("Succeeded");
                    continue;
                }
                st.restarts += 1;
                st.next_start = now + st.backoff;
                st.backoff = (st.backoff * 2).min(container_backoff() * 30);
                st.set_phase("Pending");
                continue;
            }
            if now < st.next_start {
                continue;
            }
            match procs::spawn_detached(&st.spec.command) {
                Ok((pid, start)) => {
                    st.proc_ = Some((pid, start));
                    st.started_at = Some(util::now_rfc3339());
                    st.message.clear();
                    st.set_phase("Running");
                    log(
                        'I',
                        &format!(
                            "\"Started pod\" pod=\"{}/{}\" pid={pid}",
                            st.spec.namespace, st.spec.name
                        ),
                    );
                }
                Err(e) => {
                    st.message = e.to_string();
                    st.next_start = now + st.backoff;
                    st.backoff = (st.backoff * 2).min(container_backoff() * 30);
                    log(
                        'E',
                        &format!(
                            "\"Failed to start pod\" pod=\"{}/{}\" err=\"{e}\"",
                            st.spec.namespace, st.spec.name
                        ),
                    );
                }
            }
        }
        // 6. records, pod dirs + API status
        let _ = std::fs::create_dir_all(&self.records_dir);
        for (k, st) in self.pods.iter_mut() {
            // kubelet makes `pods/<uid>` in syncPod (makePodDataDirs) and removes it in
            // cleanupOrphanedPodDirs once the pod's containers are gone.
            let dir = self.pod_dirs.join(&st.spec.uid);
            let has_containers = st.proc_.is_some() && !(st.kill.is_some() && st.kill_done());
            if has_containers || (st.admitted && !st.finished && !st.removing) {
                let _ = std::fs::create_dir_all(&dir);
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let mut rec = st.status_json();
            rec["updated"] = json!(util::rfc3339(SystemTime::now()));
            let rec_path = self.records_dir.join(format!("{k}.json"));
            let _ = util::write_atomic(&rec_path, rec.to_string().as_bytes());
            if st.spec.source == Source::Api
                && !st.removing
                && let Some(a) = api.as_deref_mut()
            {
                let patch = st.api_patch();
                let s = patch.to_string();
                if st.reported.as_deref() != Some(s.as_str())
                    && st.reported.as_deref() != Some("")
                    && a.patch_pod_status(&st.spec.namespace, &st.spec.name, &patch)
                {
                    st.reported = Some(s);
                }
            }
        }
    }

    pub fn status(&self) -> Vec<Value> {
        self.pods.values().map(PodState::status_json).collect()
    }
}
