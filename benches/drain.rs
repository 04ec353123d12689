//! Drain benchmark (issue: API drain): 100 pods with grace periods 0–5 s and one
//! PodDisruptionBudget on one node of the fake kube-apiserver. The agent's drain (the library
//! function `run` calls on SIGTERM) against the real `kubectl drain`, on the same server with
//! the same emulated kubelet, alternating, several rounds. Prints wall times and the ratio.
//!
//! `cargo bench --bench drain` (needs kubectl: `scripts/test.sh` installs it into .venv-tools).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ApiServer, api};
use kubelet_resource_wrapper::drain::{self, DrainOptions, Politeness};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;

const NODE: &str = "bench-node";
const PODS: usize = 100;
const ROUNDS: usize = 3;
/// The agent's default `--drain-max-in-flight`.
const MAX_IN_FLIGHT: usize = 8;

/// A double built in this (release) profile, building it first if needed.
fn double(name: &str, package: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", package])
            .status()
            .expect("cargo build");
        assert!(status.success(), "cannot build {package}");
    }
    path
}

fn kubectl() -> PathBuf {
    std::env::var_os("KRW_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tools/bin/kubectl"))
}

/// The fake kube-apiserver without a token file, so every request is an administrator's:
/// kubectl works over plain HTTP (client-go sends credentials only over TLS), and both drains
/// talk to the same server.
struct Server {
    _api: ApiServer,
    port: u16,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// The fake API server's API Priority and Fairness seats per priority level
/// (`KRW_BENCH_MAX_INFLIGHT`, default 4; 0 = unlimited). The bench's identity is an
/// administrator, so `--apf-limit-masters` puts it under the limit like any client.
fn max_inflight() -> u32 {
    std::env::var("KRW_BENCH_MAX_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn start_server() -> Server {
    let limit = max_inflight();
    let args: Vec<String> = if limit == 0 {
        Vec::new()
    } else {
        vec![
            "--max-inflight".into(),
            limit.to_string(),
            "--apf-limit-masters".into(),
        ]
    };
    let api = ApiServer::open_with(double("fake-apiserver", "fake-apiserver"), &args);
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    api.anonymous_kubeconfig(&kubeconfig);
    Server {
        port: api.port,
        _api: api,
        kubeconfig,
        _dir: dir,
    }
}

/// `api()`, retried while API Priority and Fairness answers 429.
fn api_patient(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    loop {
        let (code, value) = api(port, method, path, "x", body);
        if code != 429 {
            return (code, value);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 429s the fake API server answered since the last call (its APF debug counters).
fn rejected_since_last(port: u16) -> u64 {
    let (_, v) = api(
        port,
        "GET",
        "/debug/fake-apiserver/apf?reset=true",
        "x",
        None,
    );
    v["rejected"].as_u64().unwrap_or(0)
}

/// Creates the node (schedulable) and the 100 pods, all Running and Ready.
fn populate(port: u16) {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}});
    let (code, _) = api_patient(port, "POST", "/api/v1/nodes", Some(&node));
    if code == 409 {
        api_patient(
            port,
            "PATCH",
            &format!("/api/v1/nodes/{NODE}"),
            Some(&json!({"spec": {"unschedulable": false}})),
        );
    }
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "db"}}}});
    api_patient(
        port,
        "POST",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
        Some(&pdb),
    );
    // The ReplicaSets the pods name as controller: under maxUnavailable the disruption
    // controller takes the budget's scale from them (a missing one fails safe: no eviction).
    let mut uids = std::collections::HashMap::new();
    for (app, replicas) in [("db", 2), ("web", PODS - 2)] {
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": app, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                "template": {"metadata": {"labels": {"app": app}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        let (mut code, mut body) = api_patient(
            port,
            "POST",
            "/apis/apps/v1/namespaces/default/replicasets",
            Some(&rs),
        );
        if code == 409 {
            let path = format!("/apis/apps/v1/namespaces/default/replicasets/{app}");
            (code, body) = api_patient(port, "GET", &path, None);
        }
        assert!(code == 201 || code == 200, "{body}");
        uids.insert(
            app,
            body["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    for i in 0..PODS {
        // Two pods share the budget (grace 2 s and 3 s): the second eviction gets 429 until
        // the first pod is gone. The rest have grace periods 0..5 s.
        let (name, app, grace) = match i {
            0 => ("db-0".to_string(), "db", 2),
            1 => ("db-1".to_string(), "db", 3),
            _ => (format!("web-{i}"), "web", (i % 6) as i64),
        };
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app,
                    "uid": uids[app], "controller": true}]},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": grace,
                "containers": [{"name": "c", "image": "busybox"}]}});
        let (code, body) = api_patient(port, "POST", "/api/v1/namespaces/default/pods", Some(&pod));
        assert_eq!(code, 201, "{body}");
        let status = json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        api_patient(
            port,
            "PATCH",
            &format!("/api/v1/namespaces/default/pods/{name}/status"),
            Some(&status),
        );
    }
}

/// Plays kubelet: deletes each terminating pod (grace 0) once its deletionTimestamp passes.
fn emulated_kubelet(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (_, list) = api(
                port,
                "GET",
                &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
                "x",
                None,
            );
            let now = k8s_openapi::jiff::Timestamp::now();
            for pod in list["items"].as_array().cloned().unwrap_or_default() {
                let Some(ts) = pod["metadata"]["deletionTimestamp"].as_str() else {
                    continue;
                };
                let due: k8s_openapi::jiff::Timestamp = ts.parse().expect("timestamp");
                if due <= now {
                    let name = pod["metadata"]["name"].as_str().unwrap_or("");
                    let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0});
                    api(
                        port,
                        "DELETE",
                        &format!("/api/v1/namespaces/default/pods/{name}"),
                        "x",
                        Some(&opts),
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn pods_left(port: u16) -> usize {
    let (_, list) = api(
        port,
        "GET",
        &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        "x",
        None,
    );
    list["items"].as_array().map_or(0, Vec::len)
}

fn drain_with_agent(server: &Server, throttled: &Counter) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let report = runtime.block_on(async {
        let client = drain::connect(&server.kubeconfig).await.expect("connect");
        let opts = DrainOptions {
            skip_emptydir: false,
            skip_unmanaged: false,
        };
        let politeness = Politeness {
            max_in_flight: MAX_IN_FLIGHT,
            throttled: throttled.clone(),
        };
        drain::drain(
            &client,
            NODE,
            opts,
            &politeness,
            Instant::now() + Duration::from_secs(120),
        )
        .await
        .expect("drain")
    });
    let took = started.elapsed().as_secs_f64();
    assert!(report.left.is_empty(), "agent left pods: {:?}", report.left);
    assert_eq!(report.evicted.len(), PODS);
    took
}

fn drain_with_kubectl(server: &Server) -> f64 {
    let started = Instant::now();
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args([
            "drain",
            NODE,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            "--timeout=120s",
        ])
        .output()
        .expect("kubectl (install with scripts/test.sh)");
    let took = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "kubectl drain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: only build then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/drain.rs: not measuring (run `cargo bench --bench drain`)");
        return;
    }
    let server = start_server();
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = emulated_kubelet(server.port, stop.clone());
    let (mut agent, mut kubectl_times) = (Vec::new(), Vec::new());
    let (mut agent_429, mut kubectl_429) = (Vec::new(), Vec::new());
    let throttled = Counter::default();
    for round in 0..ROUNDS {
        for who in ["agent", "kubectl"] {
            populate(server.port);
            rejected_since_last(server.port);
            let took = if who == "agent" {
                drain_with_agent(&server, &throttled)
            } else {
                drain_with_kubectl(&server)
            };
            // 429s during the drain (the emulated kubelet's own included).
            let rejected = rejected_since_last(server.port);
            assert_eq!(pods_left(server.port), 0, "{who} left pods behind");
            println!(
                "round {round}: {who:<7} drained {PODS} pods in {took:.2} s ({rejected} requests answered 429)"
            );
            if who == "agent" {
                agent.push(took);
                agent_429.push(rejected as f64);
            } else {
                kubectl_times.push(took);
                kubectl_429.push(rejected as f64);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = kubelet.join();
    let (a, k) = (median(agent), median(kubectl_times));
    let ratio = a / k;
    println!();
    let limit = max_inflight();
    println!(
        "drain of {PODS} pods (grace 0-5 s, one PDB), median of {ROUNDS}, API Priority and Fairness seats per level: {}:",
        if limit == 0 {
            "unlimited".to_string()
        } else {
            limit.to_string()
        }
    );
    println!(
        "  agent   {a:.2} s  (--drain-max-in-flight {MAX_IN_FLIGHT}; 429s median {:.0}; counted by the agent: {})",
        median(agent_429),
        throttled.get()
    );
    println!(
        "  kubectl {k:.2} s  (429s median {:.0})",
        median(kubectl_429)
    );
    println!(
        "  ratio   {ratio:.2}  (target <= 0.80: {})",
        if ratio <= 0.80 { "PASS" } else { "MISS" }
    );
}
