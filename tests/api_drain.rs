//! Task kill through the Kubernetes API (DESIGN §6, issue: API drain), through the Mesos task
//! emulator, with the fake kube-apiserver and the fake kubelet in API mode. The agent uses the
//! kubelet's own node credentials (its --kubeconfig), as it does by default.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const NODE: &str = "node-a";
const MARKER: &str = "kubelet-resource-wrapper/cordoned-at";

struct Cluster {
    api: ApiServer,
    scratch: Scratch,
    kubelet_args: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        let api = ApiServer::start(NODE);
        let scratch = Scratch::new(4, 8);
        let kubeconfig = scratch.path("kubelet.kubeconfig");
        api.node_kubeconfig(&kubeconfig);
        // Upstream's cadence: node status computed every 10 s and posted on change or every
        // 5 min; the node Lease renewed every 10 s (leaseDurationSeconds 40).
        let kubelet_args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={NODE}"),
        ];
        Cluster {
            api,
            scratch,
            kubelet_args,
        }
    }

    fn launch(&self, port: u16, env: &[(&str, &str)], grace: &str) -> Emulator {
        let mut app = test_app_with(&self.scratch, port, env, &self.kubelet_args);
        app["taskKillGracePeriodSeconds"] = json!(grace.parse::<u64>().expect("grace"));
        Emulator::launch(
            &app,
            &self.scratch.path(&format!("sandbox-{port}")),
            port,
            &["--health-max-failures", "1000", "--kill-grace", grace],
        )
    }

    /// [`Cluster::launch`] on a free health port with the agent's metrics served on another;
    /// returns the health port, the metrics port and the task.
    fn launch_with_metrics(&self, env: &[(&str, &str)], grace: &str) -> (u16, u16, Emulator) {
        let port = free_port();
        let metrics_port = free_port();
        let metrics = format!("127.0.0.1:{metrics_port}");
        let mut all = vec![("KRW_METRICS_ADDR", metrics.as_str())];
        all.extend_from_slice(env);
        (port, metrics_port, self.launch(port, &all, grace))
    }

    /// The pid of a pod's process as the kubelet double recorded it.
    fn pod_pid(&self, name: &str) -> Option<i32> {
        let st = self.scratch.kubelet_status()?;
        st["pods"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["pid"].as_i64())
            .map(|p| p as i32)
    }

    fn pod_object(&self, name: &str) -> Value {
        self.api
            .admin(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
            )
            .1
    }

    fn create_pdb(&self, app: &str, max_unavailable: u32) {
        let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": app, "namespace": "default"},
            "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": {"app": app}}}});
        let (code, body) = self.api.admin(
            "POST",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            Some(&pdb),
        );
        assert_eq!(code, 201, "{body}");
    }

    fn node(&self) -> Value {
        self.api
            .admin("GET", &format!("/api/v1/nodes/{NODE}"), None)
            .1
    }

    /// A one-replica ReplicaSet (no controller runs it) for a PDB to take its scale from,
    /// as the disruption controller does under maxUnavailable; returns its uid.
    fn create_replicaset(&self, name: &str, labels: &Value) -> String {
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        let (code, body) = self.api.admin(
            "POST",
            "/apis/apps/v1/namespaces/default/replicasets",
            Some(&rs),
        );
        assert_eq!(code, 201, "{body}");
        body["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn create_pod(&self, name: &str, owner: Option<&str>, requests: bool, extra: Value) {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name.split('-').next().unwrap_or(name)}},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}
        });
        if requests {
            pod["spec"]["containers"][0]["resources"] =
                json!({"requests": {"cpu": "50m", "memory": "64Mi"}});
        }
        if let Some(kind) = owner {
            let owner = format!("{name}-owner");
            let uid = if kind == "ReplicaSet" {
                self.create_replicaset(&owner, &pod["metadata"]["labels"])
            } else {
                format!("owner-{name}")
            };
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
                "name": owner, "uid": uid, "controller": true}]);
        }
        merge(&mut pod, extra);
        let (code, body) = self
            .api
            .admin("POST", "/api/v1/namespaces/default/pods", Some(&pod));
        assert_eq!(code, 201, "{body}");
    }

    fn wait_running(&self, n: usize) {
        assert!(
            wait_until(Duration::from_secs(15), || self
                .api
                .pods_on(NODE)
                .iter()
                .filter(|(_, phase, _)| phase == "Running")
                .count()
                >= n),
            "pods not running: {:?}",
            self.api.pods_on(NODE)
        );
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

fn summary(log: &str) -> Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "task kill finished")
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"))
}

#[test]
fn kill_cordons_evicts_twenty_pods_reports_the_pdb_and_uncordons_on_return() {
    let c = Cluster::new();
    let port = free_port();
    let mut emu = c.launch(port, &[("KRW_DRAIN_TIMEOUT", "8")], "10");
    emu.expect_healthy(Duration::from_secs(25));
    // 16 ReplicaSet pods, one emptyDir pod, one DaemonSet pod, one mirror pod, and one pod a
    // PodDisruptionBudget protects (with requests, so only the lease kubelet would run it).
    for i in 0..16 {
        c.create_pod(&format!("web-{i}"), Some("ReplicaSet"), true, json!({}));
    }
    c.create_pod(
        "cache-0",
        Some("ReplicaSet"),
        true,
        json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}),
    );
    c.create_pod("ds-0", Some("DaemonSet"), true, json!({}));
    c.create_pod(
        "static-0",
        None,
        false,
        json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}}),
    );
    c.create_pod("guarded-0", Some("ReplicaSet"), true, json!({}));
    c.create_pdb("guarded", 0);
    c.wait_running(20);

    emu.kill_task();
    let terminal = emu
        .wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(
        terminal["exit_code"],
        0,
        "{terminal}\n{}",
        emu.task_stderr()
    );
    assert!(
        terminal["seconds_after_kill"].as_f64().unwrap_or(99.0) < 10.0,
        "{terminal}"
    );
    assert!(!emu.seen.iter().any(|v| v["event"] == "escalated"));

    let node = c.node();
    assert_eq!(node["spec"]["unschedulable"], true, "{node}");
    assert!(
        node["metadata"]["annotations"][MARKER].is_string(),
        "{node}"
    );
    // Evicted pods are gone; what the drain skipped or the budget guarded was forced off the
    // node at the end of the budget (zero allocatable, --max-pods=0): Failed, not running.
    let mut left: Vec<(String, String, bool)> = c.api.pods_on(NODE);
    left.sort();
    let names: Vec<&str> = left.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        ["ds-0", "guarded-0", "static-0"],
        "evictable pods remain"
    );
    assert!(left.iter().all(|p| p.1 == "Failed"), "{left:?}");
    let log = emu.task_stderr();
    let s = summary(&log);
    assert_eq!(s["mode"], "api-drain", "{s}");
    assert_eq!(s["evicted"], 17, "{s}");
    assert_eq!(s["blocked_by_pdb"], 1, "{s}");
    assert_eq!(s["forced_past_pdb"], 1, "{s}");
    assert_eq!(s["left_behind"], 0, "{s}");
    assert_eq!(s["left_counted_from"], "api", "{s}");
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");

    // The task comes back on the same host, with the default 10 s node-check interval. Until
    // the agent's own cordon is lifted every /healthz answer is 503 (Marathon must not kill the
    // next host of a roll while this one is unschedulable): a 200 means the node read right
    // after it is schedulable again.
    let port = free_port();
    let mut again = c.launch(
        port,
        &[
            ("KRW_DRAIN_TIMEOUT", "3"),
            ("KRW_NODE_CHECK_INTERVAL", "10"),
        ],
        "6",
    );
    let mut answers: Vec<(u16, String)> = Vec::new();
    let healthy = wait_until(Duration::from_secs(30), || {
        let Some((code, body)) = http("GET", port, "/healthz") else {
            return false;
        };
        let node = c.node();
        assert!(
            code == 503 || node["spec"]["unschedulable"] != true,
            "/healthz {code} while the node is still cordoned: {body}\n{node}"
        );
        answers.push((code, body));
        code == 200
    });
    assert!(healthy, "never 200: {answers:?}\n{}", again.task_stderr());
    assert!(answers.iter().any(|(code, _)| *code == 503), "{answers:?}");
    assert!(c.node()["metadata"]["annotations"][MARKER].is_null());
    again.expect_healthy(Duration::from_secs(10));
    again.kill_task();
    again.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
}

#[test]
fn an_operators_cordon_is_kept_through_kill_and_return() {
    let c = Cluster::new();
    let port = free_port();
    let mut emu = c.launch(port, &[("KRW_DRAIN_TIMEOUT", "5")], "6");
    emu.expect_healthy(Duration::from_secs(25));
    let cordon = json!({"spec": {"unschedulable": true}});
    let (code, body) = c
        .api
        .admin("PATCH", &format!("/api/v1/nodes/{NODE}"), Some(&cordon));
    assert_eq!(code, 200, "{body}\n{}", emu.task_stderr());
    c.create_pod("web-0", Some("ReplicaSet"), true, json!({}));
    c.wait_running(1);
    emu.kill_task();
    let terminal = emu
        .wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    assert!(
        c.node()["metadata"]["annotations"][MARKER].is_null(),
        "agent marked an operator's cordon"
    );
    assert!(c.api.pods_on(NODE).is_empty(), "pod not evicted");
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");

    let port = free_port();
    let mut again = c.launch(port, &[], "6");
    again.expect_healthy(Duration::from_secs(25));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.node()["spec"]["unschedulable"],
        true,
        "operator's cordon was lifted"
    );
    // An operator's cordon never fails the check.
    let (code, body) = http("GET", port, "/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    assert!(again.task_stderr().contains("cordoned by an operator"));
    again.kill_task();
    again.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
}

#[test]
fn a_fifo_as_the_drain_kubeconfig_neither_hangs_health_nor_the_task_kill() {
    let c = Cluster::new();
    let fifo = c.scratch.path("drain.kubeconfig");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let port = free_port();
    let fifo_env = fifo.display().to_string();
    let mut emu = c.launch(port, &[("KRW_KUBECONFIG", fifo_env.as_str())], "6");
    // Reported, never a 503: the API cannot be read with these credentials.
    emu.expect_healthy(Duration::from_secs(25));
    emu.kill_task();
    let terminal = emu
        .wait_for(Duration::from_secs(12), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    let log = emu.task_stderr();
    assert!(log.contains("is a FIFO, not a regular file"), "{log}");
    assert_eq!(summary(&log)["mode"], "zero-allocatable", "{log}");
}

#[test]
fn api_down_falls_back_to_zero_allocatable_within_the_grace_period() {
    let c = Cluster::new();
    c.scratch.pod("static-web", "100m", "128Mi");
    let port = free_port();
    let mut emu = c.launch(port, &[("KRW_DRAIN_TIMEOUT", "4")], "6");
    emu.expect_healthy(Duration::from_secs(25));
    assert!(wait_until(Duration::from_secs(5), || !c
        .scratch
        .pod_pids()
        .is_empty()));
    let pods = c.scratch.pod_pids();
    std::fs::write(&c.api.fault_file, "down").expect("fault");
    emu.kill_task();
    let terminal = emu
        .wait_for(Duration::from_secs(12), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    assert!(
        terminal["seconds_after_kill"].as_f64().unwrap_or(99.0) < 6.0,
        "{terminal}"
    );
    let log = emu.task_stderr();
    assert_eq!(log.matches("API drain not possible").count(), 1, "{log}");
    assert_eq!(summary(&log)["ending"], "SIGTERM");
    assert_eq!(summary(&log)["mode"], "zero-allocatable");
    // The API never answered: what was forced past a budget is not known, and says so.
    assert_eq!(summary(&log)["forced_past_pdb_known"], false, "{log}");
    // Zero allocatable still stopped the pod that requests resources.
    assert!(wait_until(Duration::from_secs(3), || pods
        .iter()
        .all(|p| !alive(*p))));
}

#[test]
fn an_api_back_two_seconds_after_the_signal_still_drains_through_the_api() {
    let c = Cluster::new();
    let port = free_port();
    let mut emu = c.launch(port, &[("KRW_DRAIN_TIMEOUT", "14")], "16");
    emu.expect_healthy(Duration::from_secs(25));
    for i in 0..4 {
        c.create_pod(&format!("web-{i}"), Some("ReplicaSet"), true, json!({}));
    }
    c.wait_running(4);
    std::fs::write(&c.api.fault_file, "down").expect("fault");
    emu.kill_task();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(&c.api.fault_file).expect("fault");
    let terminal = emu
        .wait_for(Duration::from_secs(25), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    assert!(
        terminal["seconds_after_kill"].as_f64().unwrap_or(99.0) < 16.0,
        "{terminal}"
    );
    assert!(!emu.seen.iter().any(|v| v["event"] == "escalated"));
    let log = emu.task_stderr();
    let s = summary(&log);
    assert_eq!(s["mode"], "api-drain", "{s}\n{log}");
    assert_eq!(s["evicted"], 4, "{s}");
    assert_eq!(s["zero_allocatable_kubelets"], 0, "{s}");
    assert_eq!(s["left_behind"], 0, "{s}");
    assert!(log.contains("API drain failed; retrying"), "{log}");
    assert!(!log.contains("API drain not possible"), "{log}");
    assert!(c.api.pods_on(NODE).is_empty(), "{:?}", c.api.pods_on(NODE));
    let node = c.node();
    assert_eq!(node["spec"]["unschedulable"], true, "{node}");
    assert!(
        node["metadata"]["annotations"][MARKER].is_string(),
        "{node}"
    );
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");
}

#[test]
fn node_allocatable_that_differs_from_the_lease_is_logged_and_exported() {
    let c = Cluster::new();
    // The kubelet double measures a host with more memory than the agent was shown.
    let other = Scratch::new(4, 16);
    let host = other.host_root().display().to_string();
    let (_, metrics_port, mut emu) =
        c.launch_with_metrics(&[("FAKE_KUBELET_HOST_ROOT", host.as_str())], "6");
    assert!(
        wait_until(Duration::from_secs(25), || http(
            "GET",
            metrics_port,
            "/metrics"
        )
        .is_some_and(|(_, m)| m
            .lines()
            .any(|l| l == "krw_allocatable_mismatch 1"))),
        "no mismatch metric; agent log:\n{}",
        emu.task_stderr()
    );
    let log = emu.task_stderr();
    assert!(
        log.contains("node allocatable differs from the lease"),
        "{log}"
    );
    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
}

/// The least-privilege identity the Ansible role's RBAC manifest grants (kept in step with
/// `ansible/roles/kubelet_resource_wrapper/templates/rbac.yaml.j2` by `scripts/check_rbac.py`).
fn least_privilege_role() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
    "metadata": {"name": "kubelet-resource-wrapper-drain"},
    "rules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}
    ]})
}

#[test]
fn a_dedicated_identity_with_only_the_shipped_rbac_can_drain() {
    let c = Cluster::new();
    assert_eq!(
        c.api
            .admin(
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                Some(&least_privilege_role())
            )
            .0,
        201
    );
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "kubelet-resource-wrapper-drain"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubelet-resource-wrapper-drain"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "drainer"}]});
    assert_eq!(
        c.api
            .admin(
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                Some(&binding)
            )
            .0,
        201
    );
    // `get` on leases in kube-node-lease only (the node liveness check), as the RBAC manifest.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "kubelet-resource-wrapper-lease", "namespace": "kube-node-lease"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}]});
    let path = "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-node-lease";
    assert_eq!(
        c.api.admin("POST", &format!("{path}/roles"), Some(&role)).0,
        201
    );
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "kubelet-resource-wrapper-lease", "namespace": "kube-node-lease"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubelet-resource-wrapper-lease"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "drainer"}]});
    assert_eq!(
        c.api
            .admin("POST", &format!("{path}/rolebindings"), Some(&binding))
            .0,
        201
    );
    let kubeconfig = c.scratch.path("drainer.kubeconfig");
    std::fs::write(&kubeconfig, json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": format!("http://127.0.0.1:{}", c.api.port)}}],
        "users": [{"name": "drainer", "user": {"token": "drainer-token"}}],
        "contexts": [{"name": "d", "context": {"cluster": "fake", "user": "drainer"}}],
        "current-context": "d"
    }).to_string()).expect("kubeconfig");
    let port = free_port();
    let kc = kubeconfig.display().to_string();
    let mut emu = c.launch(
        port,
        &[("KRW_KUBECONFIG", kc.as_str()), ("KRW_DRAIN_TIMEOUT", "5")],
        "6",
    );
    emu.expect_healthy(Duration::from_secs(25));
    // The dedicated identity reads the node Lease: no "Lease not readable" in the 200 body.
    assert!(
        wait_until(Duration::from_secs(5), || http("GET", port, "/healthz")
            .is_some_and(|(code, body)| code == 200 && body.trim() == "ok")),
        "{:?}\n{}",
        http("GET", port, "/healthz"),
        emu.task_stderr()
    );
    for i in 0..3 {
        c.create_pod(&format!("web-{i}"), Some("ReplicaSet"), true, json!({}));
    }
    c.wait_running(3);
    emu.kill_task();
    let terminal = emu
        .wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    let log = emu.task_stderr();
    assert_eq!(summary(&log)["mode"], "api-drain", "{log}");
    assert!(c.api.pods_on(NODE).is_empty());
    assert_eq!(c.node()["spec"]["unschedulable"], true);
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = http("GET", port, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn ready_heartbeat_age_seconds(node: &Value) -> f64 {
    let hb = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .map(str::to_string)
        .expect("Ready heartbeat");
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &hb, "+%s"])
        .output()
        .expect("date");
    let then: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("epoch");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    now - then
}

#[test]
fn healthy_for_ten_emulated_minutes_with_one_status_post() {
    // Ten minutes of a healthy kubelet, emulated: the node Lease at a tenth of upstream's
    // timing (4 s instead of leaseDurationSeconds 40, renewed every quarter of it), so 75 s are
    // 12.5 emulated minutes of renewals; the node status at kubelet's real cadence (posted at
    // start, then every 5 min), so the Ready heartbeat ends well past the old 60 s rule. The
    // agent's rule is not shortened: it reads the duration from the Lease, as for upstream's 40 s.
    let c = Cluster::new();
    let (port, metrics_port, mut emu) =
        c.launch_with_metrics(&[("FAKE_KUBELET_NODE_LEASE_DURATION_SECONDS", "4")], "6");
    emu.expect_healthy(Duration::from_secs(25));
    let until = std::time::Instant::now() + Duration::from_secs(75);
    while std::time::Instant::now() < until {
        let (code, body) = http("GET", port, "/healthz").expect("answer");
        assert_eq!(code, 200, "{body}\n{}", emu.task_stderr());
        assert_eq!(body.trim(), "ok", "{body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The heartbeat is well past the old rule's 60 s; the Lease carries liveness.
    let node = c.node();
    assert!(ready_heartbeat_age_seconds(&node) > 60.0, "{node}");
    assert_eq!(metric(metrics_port, "krw_node_lease_expired"), Some(0.0));
    assert_eq!(metric(metrics_port, "krw_node_ready"), Some(1.0));
    assert_eq!(metric(metrics_port, "krw_api_reachable"), Some(1.0));
    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
}

#[test]
fn api_down_for_several_probe_intervals_stays_healthy_and_says_so() {
    let c = Cluster::new();
    let (port, metrics_port, mut emu) = c.launch_with_metrics(&[], "6");
    emu.expect_healthy(Duration::from_secs(25));
    std::fs::write(&c.api.fault_file, "down").expect("fault");
    // Node checks every 0.5 s, probes every 0.3 s: 8 s is many of both.
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let mut said_so = false;
    while std::time::Instant::now() < until {
        let (code, body) = http("GET", port, "/healthz").expect("answer");
        assert_eq!(code, 200, "{body}");
        said_so |= body.contains("Kubernetes API not answering");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(said_so, "the outage is reported in the 200 body");
    assert_eq!(metric(metrics_port, "krw_api_reachable"), Some(0.0));
    assert_eq!(metric(metrics_port, "krw_node_lease_expired"), Some(0.0));
    std::fs::remove_file(&c.api.fault_file).expect("fault");
    assert!(
        wait_until(Duration::from_secs(10), || http("GET", port, "/healthz")
            .is_some_and(|(code, body)| code == 200 && body.trim() == "ok")),
        "not back to a plain ok"
    );
    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
}

#[test]
fn a_kubelet_that_stops_renewing_its_lease_while_the_api_answers_gets_503() {
    let c = Cluster::new();
    let stuck = c.scratch.path("lease-stuck");
    let fault = format!("no-lease-while={}", stuck.display());
    // The double's Lease lasts 4 s (renewed every 1 s); the agent's rule reads the duration
    // from the Lease, as it does for upstream's 40 s.
    let (port, metrics_port, mut emu) = c.launch_with_metrics(
        &[
            ("FAKE_KUBELET_NODE_LEASE_DURATION_SECONDS", "4"),
            ("FAKE_KUBELET_FAULT", fault.as_str()),
        ],
        "6",
    );
    emu.expect_healthy(Duration::from_secs(25));
    assert_eq!(metric(metrics_port, "krw_node_lease_expired"), Some(0.0));
    // Every node and drain series exists from start.
    for name in [
        "krw_drain_left_behind_pods",
        "krw_drain_forced_pods_total",
        "krw_api_throttled_total",
    ] {
        assert_eq!(metric(metrics_port, name), Some(0.0), "{name}");
    }
    for name in ["krw_node_ready", "krw_api_reachable"] {
        assert!(metric(metrics_port, name).is_some(), "{name}");
    }
    std::fs::write(&stuck, "").expect("fault");
    assert!(
        wait_until(Duration::from_secs(12), || http("GET", port, "/healthz")
            .is_some_and(|(code, body)| code == 503
                && body.contains(
                    "not renewing its node Lease while the API answers"
                ))),
        "{:?}",
        http("GET", port, "/healthz")
    );
    assert_eq!(metric(metrics_port, "krw_node_lease_expired"), Some(1.0));
    std::fs::remove_file(&stuck).expect("fault");
    assert!(
        wait_until(Duration::from_secs(10), || http("GET", port, "/healthz")
            .is_some_and(|(code, _)| code == 200)),
        "not healthy again once the Lease is renewed"
    );
    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
}

#[test]
fn a_guarded_pod_with_requests_survives_the_first_half_of_the_budget_then_is_forced() {
    let c = Cluster::new();
    let mut emu = c.launch(free_port(), &[("KRW_DRAIN_TIMEOUT", "10")], "12");
    emu.expect_healthy(Duration::from_secs(25));
    c.create_pod("guarded-0", Some("ReplicaSet"), true, json!({}));
    c.create_pdb("guarded", 0);
    c.wait_running(1);
    let pid = c.pod_pid("guarded-0").expect("pid");
    let killed = std::time::Instant::now();
    emu.kill_task();
    std::thread::sleep(Duration::from_millis(4500).saturating_sub(killed.elapsed()));
    assert!(
        alive(pid),
        "guarded pod killed in the first half of the budget"
    );
    assert_eq!(c.pod_object("guarded-0")["status"]["phase"], "Running");
    let terminal = emu
        .wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    assert!(
        wait_until(Duration::from_secs(2), || !alive(pid)),
        "forced pod survived"
    );
    let s = summary(&emu.task_stderr());
    assert_eq!(s["blocked_by_pdb"], 1, "{s}");
    assert_eq!(s["forced_past_pdb"], 1, "{s}");
    assert_eq!(s["left_behind"], 0, "{s}");
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");
}

#[test]
fn a_budget_freed_after_3s_is_used_within_1s() {
    let c = Cluster::new();
    let port = free_port();
    let mut emu = c.launch(port, &[("KRW_DRAIN_TIMEOUT", "12")], "14");
    emu.expect_healthy(Duration::from_secs(25));
    c.create_pod("guarded-0", Some("ReplicaSet"), true, json!({}));
    c.create_pdb("guarded", 0);
    c.wait_running(1);
    emu.kill_task();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.pod_object("guarded-0")["metadata"]["deletionTimestamp"].is_null(),
        "evicted past its budget"
    );
    let patch = json!({"spec": {"maxUnavailable": 1}});
    let (code, body) = c.api.admin(
        "PATCH",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/guarded",
        Some(&patch),
    );
    assert_eq!(code, 200, "{body}");
    let freed = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let p = c.pod_object("guarded-0");
            p["metadata"]["deletionTimestamp"].is_string() || p["kind"] == "Status"
        }),
        "never evicted"
    );
    let took = freed.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "budget used after {took:?}"
    );
    let terminal = emu
        .wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    let s = summary(&emu.task_stderr());
    assert_eq!(s["evicted"], 1, "{s}");
    assert_eq!(s["forced_past_pdb"], 0, "{s}");
    let note = s["note"].as_str().unwrap_or("");
    let refusals: u64 = note
        .split("; ")
        .find_map(|p| p.strip_suffix(" PodDisruptionBudget refusals retried"))
        .and_then(|n| n.parse().ok())
        .expect("refusal count in the note");
    assert!(refusals > 0, "{s}");
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");
}

#[test]
fn a_pod_that_traps_sigterm_gets_its_full_grace() {
    let c = Cluster::new();
    let port = free_port();
    let mut emu = c.launch(port, &[("KRW_DRAIN_TIMEOUT", "12")], "14");
    emu.expect_healthy(Duration::from_secs(25));
    c.create_pod(
        "stubborn-0",
        Some("ReplicaSet"),
        true,
        json!({"spec": {"terminationGracePeriodSeconds": 3,
            "containers": [{"name": "c", "image": "busybox",
                "command": ["sh", "-c", "trap '' TERM; sleep 3600"],
                "resources": {"requests": {"cpu": "50m"}}}]}}),
    );
    c.wait_running(1);
    let pid = c.pod_pid("stubborn-0").expect("pid");
    emu.kill_task();
    assert!(
        wait_until(Duration::from_secs(5), || {
            c.pod_object("stubborn-0")["metadata"]["deletionTimestamp"].is_string()
        }),
        "not evicted"
    );
    let evicted = std::time::Instant::now();
    assert_eq!(
        c.pod_object("stubborn-0")["metadata"]["deletionGracePeriodSeconds"],
        3
    );
    std::thread::sleep(Duration::from_millis(2300));
    assert!(alive(pid), "killed before its 3 s grace ran out");
    assert!(
        wait_until(Duration::from_secs(4), || !alive(pid)),
        "still running {:?} after eviction",
        evicted.elapsed()
    );
    let terminal = emu
        .wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["exit_code"], 0, "{}", emu.task_stderr());
    let s = summary(&emu.task_stderr());
    assert_eq!(s["evicted"], 1, "{s}");
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");
}
