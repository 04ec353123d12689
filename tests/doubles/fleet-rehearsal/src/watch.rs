//! The invariants, sampled continuously on two threads: one reads the API server and Marathon
//! (schedulable nodes, PDBs, node unavailability), one reads /proc (kubelets per host, pod
//! processes on hosts that hold no lease).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubelet_resource_wrapper::quantity::{parse_bytes, parse_cpu_millicores};
use serde_json::Value;

use crate::fleet::{Fleet, Host, host_pods};
use crate::http;
use crate::procs::{alive, ppid, processes, start_time};
use crate::workload::{Workload, pdb_health};

/// A pod process on a lease-less host is an orphan once it outlives this (the standby kubelet
/// needs a sync and the pod's termination grace to kill what a SIGKILLed agent left).
const ORPHAN_TOLERANCE: Duration = Duration::from_secs(5);
const API_PERIOD: Duration = Duration::from_millis(200);
const PROC_PERIOD: Duration = Duration::from_millis(100);

/// What the current scenario expects.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub name: String,
    /// A rolling restart: schedulable nodes must stay ≥ N − 1.
    pub roll: bool,
    /// Voluntary disruption only: a PDB below its desired healthy count is a violation.
    pub voluntary: bool,
}

/// Counters since the watch started, and per phase.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub min_schedulable_roll: Option<usize>,
    pub phase_min_schedulable: Option<usize>,
    pub schedulable_now: usize,
    pub pdb_violations: u64,
    pub double_kubelets: u64,
    pub orphan_pods: u64,
    pub api_misses: u64,
    /// API samples taken so far (to wait for a fresh one).
    pub samples: u64,
    /// Longest unschedulable stretch of a lease-holding node in this phase (seconds).
    pub phase_longest_unavailable: f64,
    pub notes: Vec<String>,
}

#[derive(Default)]
struct Shared {
    phase: Phase,
    tally: Tally,
    down_since: BTreeMap<String, Instant>,
    violated: BTreeSet<String>,
    doubled: BTreeSet<String>,
    orphan_first_seen: BTreeMap<(i32, u64), Instant>,
    orphans_counted: BTreeSet<(i32, u64)>,
    /// host → the lease (cpu millicores, memory bytes) of the task on it; killing tasks included.
    leases: BTreeMap<String, (u64, u64)>,
    lease_known: bool,
    /// The first roll dip below N − 1 of the phase was described in a note.
    noted_roll_dip: bool,
    /// The PDB-guarded workloads, judged once every workload has been complete.
    pdb_workloads: Vec<Workload>,
}

/// The sampler threads; stopped on drop.
pub struct Watch {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn start(fleet: &Fleet) -> Watch {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (s, st) = (Arc::clone(&shared), Arc::clone(&stop));
            let (api, marathon) = (fleet.api_port, fleet.marathon_port);
            threads.push(std::thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    sample_api(&s, api, marathon);
                    std::thread::sleep(API_PERIOD);
                }
            }));
        }
        {
            let (s, st) = (Arc::clone(&shared), Arc::clone(&stop));
            let hosts = fleet.hosts.clone();
            threads.push(std::thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    sample_procs(&s, &hosts);
                    std::thread::sleep(PROC_PERIOD);
                }
            }));
        }
        Watch {
            shared,
            stop,
            threads,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a phase: resets the per-phase figures.
    pub fn begin(&self, phase: Phase) {
        let mut g = self.lock();
        g.phase = phase;
        g.tally.phase_min_schedulable = None;
        g.tally.phase_longest_unavailable = 0.0;
        g.down_since.clear();
        g.noted_roll_dip = false;
    }

    /// Ends the phase: closes the unavailability of nodes that still hold a lease.
    pub fn end(&self) -> Tally {
        let mut g = self.lock();
        let now = Instant::now();
        let open: Vec<f64> = g
            .down_since
            .iter()
            .filter(|(h, _)| g.leases.contains_key(*h))
            .map(|(_, t)| now.duration_since(*t).as_secs_f64())
            .collect();
        for d in open {
            g.tally.phase_longest_unavailable = g.tally.phase_longest_unavailable.max(d);
        }
        g.phase = Phase::default();
        g.tally.clone()
    }

    /// From now on a PDB below its desired healthy count is a violation (in voluntary phases).
    pub fn arm_pdbs(&self, workloads: &[Workload]) {
        let mut g = self.lock();
        if g.pdb_workloads.is_empty() {
            g.pdb_workloads = workloads.to_vec();
        }
    }

    /// The figures so far.
    pub fn tally(&self) -> Tally {
        self.lock().tally.clone()
    }

    /// Hosts holding a lease (a task of any state) as Marathon reports them.
    pub fn leased_hosts(&self) -> BTreeSet<String> {
        self.lock().leases.keys().cloned().collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn leases(marathon: u16) -> Option<BTreeMap<String, (u64, u64)>> {
    let tasks = http::get(marathon, "/v2/apps/k8s/kubelet/tasks")?;
    Some(
        tasks["tasks"]
            .as_array()?
            .iter()
            .filter_map(|t| {
                let cpu = (t["cpus"].as_f64()? * 1000.0).round() as u64;
                let mem = (t["mem"].as_f64()? * 1_048_576.0).round() as u64;
                Some((t["host"].as_str()?.to_string(), (cpu, mem)))
            })
            .collect(),
    )
}

fn ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn sample_api(shared: &Mutex<Shared>, api: u16, marathon: u16) {
    let leases_now = leases(marathon);
    let nodes = http::get(api, "/api/v1/nodes");
    let guarded = shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pdb_workloads
        .clone();
    let pdbs = pdb_health(api, &guarded);
    let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
    // Marathon has no app yet (404): no host holds a lease.
    g.leases = leases_now.unwrap_or_default();
    g.lease_known = true;
    let (Some(nodes), Some(pdbs)) = (nodes, pdbs) else {
        g.tally.api_misses += 1;
        return;
    };
    g.tally.samples += 1;
    let now = Instant::now();
    let mut schedulable = 0;
    let mut down = Vec::new();
    for n in nodes["items"].as_array().into_iter().flatten() {
        let Some(name) = n["metadata"]["name"].as_str() else {
            continue;
        };
        let alloc = &n["status"]["allocatable"];
        let matches = g.leases.get(name).is_some_and(|(cpu, mem)| {
            alloc["cpu"]
                .as_str()
                .and_then(|q| parse_cpu_millicores(q).ok())
                == Some(*cpu)
                && alloc["memory"].as_str().and_then(|q| parse_bytes(q).ok()) == Some(*mem)
        });
        let ok = ready(n) && n["spec"]["unschedulable"] != Value::Bool(true) && matches;
        if ok {
            schedulable += 1;
            if let Some(since) = g.down_since.remove(name) {
                let d = now.duration_since(since).as_secs_f64();
                g.tally.phase_longest_unavailable = g.tally.phase_longest_unavailable.max(d);
            }
        } else if g.leases.contains_key(name) || g.down_since.contains_key(name) {
            g.down_since.entry(name.to_string()).or_insert(now);
            let why = if !g.leases.contains_key(name) {
                "no lease"
            } else if !ready(n) {
                "not Ready"
            } else if n["spec"]["unschedulable"] == Value::Bool(true) {
                "cordoned"
            } else {
                "allocatable != lease"
            };
            down.push(format!("{name} {why}"));
        }
    }
    g.tally.schedulable_now = schedulable;
    let expected = g.leases.len();
    if g.phase.roll && schedulable + 1 < expected && !g.noted_roll_dip {
        g.noted_roll_dip = true;
        let phase = g.phase.name.clone();
        g.tally.notes.push(format!(
            "{phase}: {schedulable} of {expected} nodes schedulable: {}",
            down.join(", ")
        ));
    }
    if !g.phase.name.is_empty() {
        let m = g
            .tally
            .phase_min_schedulable
            .map_or(schedulable, |m| m.min(schedulable));
        g.tally.phase_min_schedulable = Some(m);
        if g.phase.roll {
            let r = g
                .tally
                .min_schedulable_roll
                .map_or(schedulable, |m| m.min(schedulable));
            g.tally.min_schedulable_roll = Some(r);
        }
    }
    for (name, cur, want) in pdbs {
        if cur < want && g.phase.voluntary {
            if g.violated.insert(name.clone()) {
                g.tally.pdb_violations += 1;
                let phase = g.phase.name.clone();
                g.tally.notes.push(format!(
                    "{phase}: PDB {name} at {cur} healthy < {want} desired"
                ));
            }
        } else if cur >= want {
            g.violated.remove(&name);
        }
    }
}

fn threads(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

fn sample_procs(shared: &Mutex<Shared>, hosts: &[Host]) {
    let procs = processes();
    let (lease_known, leased) = {
        let g = shared.lock().unwrap_or_else(|p| p.into_inner());
        (
            g.lease_known,
            g.leases.keys().cloned().collect::<BTreeSet<_>>(),
        )
    };
    let now = Instant::now();
    let mut doubles = Vec::new();
    let mut orphans = Vec::new();
    for h in hosts {
        let needle = format!("{} ", h.root_dir_arg());
        let is_kubelet = |c: &str| c.contains("fake-kubelet") && c.contains(&needle);
        let mut candidates: Vec<&(i32, String)> =
            procs.iter().filter(|(_, c)| is_kubelet(c)).collect();
        if candidates.len() > 1 {
            // A pod process between kubelet's double fork and its exec still shows kubelet's
            // command line: it is single-threaded and either still a child of that kubelet
            // (first fork) or already reparented to init (second fork). A second kubelet is
            // started by an agent, never by a kubelet.
            let pids: BTreeSet<i32> = candidates.iter().map(|(pid, _)| *pid).collect();
            candidates.retain(|(pid, _)| {
                let parent = ppid(*pid);
                let forked_pod = threads(*pid) == Some(1)
                    && (parent == Some(1) || parent.is_some_and(|p| pids.contains(&p)));
                !forked_pod
            });
        }
        let kubelets: Vec<String> = candidates
            .into_iter()
            .map(|(pid, c)| {
                let zero = c.contains("--max-pods=0");
                format!(
                    "pid {pid} (parent {}{})",
                    ppid(*pid).unwrap_or(0),
                    if zero { ", --max-pods=0" } else { "" }
                )
            })
            .collect();
        if kubelets.len() > 1 {
            doubles.push((h.name.clone(), kubelets.join(" and ")));
        }
        if lease_known && !leased.contains(&h.name) {
            for (pid, start) in host_pods(&h.kubelet_dir()) {
                if alive(pid) && start_time(pid) == Some(start) {
                    orphans.push((h.name.clone(), pid, start));
                }
            }
        }
    }
    let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
    for (host, which) in doubles {
        if g.doubled.insert(host.clone()) {
            g.tally.double_kubelets += 1;
            let phase = g.phase.name.clone();
            g.tally
                .notes
                .push(format!("{phase}: two kubelets at once on {host}: {which}"));
        }
    }
    let current: BTreeSet<(i32, u64)> = orphans.iter().map(|(_, p, s)| (*p, *s)).collect();
    g.orphan_first_seen.retain(|k, _| current.contains(k));
    for (host, pid, start) in orphans {
        let first = *g.orphan_first_seen.entry((pid, start)).or_insert(now);
        if now.duration_since(first) >= ORPHAN_TOLERANCE && g.orphans_counted.insert((pid, start)) {
            g.tally.orphan_pods += 1;
            let phase = g.phase.name.clone();
            g.tally.notes.push(format!(
                "{phase}: pod process {pid} still runs on {host}, which holds no lease"
            ));
        }
    }
}
