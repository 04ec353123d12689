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
        let kubelet_args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={NODE}"),
            "--node-status-update-frequency=1s".to_string(),
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

    fn node(&self) -> Value {
        self.api
            .admin("GET", &format!("/api/v1/nodes/{NODE}"), None)
            .1
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
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
                "name": format!("{}-owner", name), "uid": format!("owner-{name}"), "controller": true}]);
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
    // PodDisruptionBudget protects (BestEffort, so zero allocatable does not reject it either).
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
    c.create_pod("guarded-0", Some("ReplicaSet"), false, json!({}));
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded", "namespace": "default"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "guarded"}}}});
    assert_eq!(
        c.api
            .admin(
                "POST",
                "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
                Some(&pdb)
            )
            .0,
        201
    );
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
    let mut left: Vec<String> = c.api.pods_on(NODE).into_iter().map(|p| p.0).collect();
    left.sort();
    assert_eq!(
        left,
        ["ds-0", "guarded-0", "static-0"],
        "evictable pods remain"
    );
    let log = emu.task_stderr();
    let s = summary(&log);
    assert_eq!(s["mode"], "api-drain", "{s}");
    assert_eq!(s["evicted"], 17, "{s}");
    assert_eq!(s["blocked_by_pdb"], 1, "{s}");
    assert_eq!(s["left_behind"], 3, "{s}");
    assert!(
        s["left"]
            .as_str()
            .unwrap_or("")
            .contains("default/guarded-0 (PodDisruptionBudget)"),
        "{s}"
    );
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");

    // The task comes back on the same host: the agent's own cordon is lifted.
    let port = free_port();
    let mut again = c.launch(port, &[("KRW_DRAIN_TIMEOUT", "3")], "6");
    again.expect_healthy(Duration::from_secs(25));
    assert!(
        wait_until(Duration::from_secs(5), || c.node()["spec"]["unschedulable"]
            != true),
        "not uncordoned: {}",
        c.node()
    );
    assert!(c.node()["metadata"]["annotations"][MARKER].is_null());
    again.kill_task();
    again.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
}

#[test]
fn an_operators_cordon_is_kept_through_kill_and_return() {
    let c = Cluster::new();
    let port = free_port();
    let mut emu = c.launch(port, &[], "6");
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
    assert!(again.task_stderr().contains("cordoned by an operator"));
    again.kill_task();
    again.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed");
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
    assert_eq!(summary(&log)["mode"], "zero-allocatable");
    // Zero allocatable still stopped the pod that requests resources.
    assert!(wait_until(Duration::from_secs(3), || pods
        .iter()
        .all(|p| !alive(*p))));
}

#[test]
fn node_allocatable_that_differs_from_the_lease_is_logged_and_exported() {
    let c = Cluster::new();
    // The kubelet double measures a host with more memory than the agent was shown.
    let other = Scratch::new(4, 16);
    let port = free_port();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let host = other.host_root().display().to_string();
    let mut emu = c.launch(
        port,
        &[
            ("FAKE_KUBELET_HOST_ROOT", host.as_str()),
            ("KRW_METRICS_ADDR", metrics.as_str()),
        ],
        "6",
    );
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
    let mut emu = c.launch(port, &[("KRW_KUBECONFIG", kc.as_str())], "6");
    emu.expect_healthy(Duration::from_secs(25));
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
