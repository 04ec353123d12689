//! The opt-in controllers (`--controllers`): scheduler, ReplicaSet controller with
//! garbage collection, node lifecycle from Leases.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MP: &str = "application/merge-patch+json";
const SMP: &str = "application/strategic-merge-patch+json";

fn ready_node(name: &str, cpu: &str, mem: &str, pods: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods.to_string()},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}})
}

fn pending_pod(name: &str, cpu: Option<&str>) -> Value {
    let mut c = json!({"name": "c", "image": "busybox"});
    if let Some(cpu) = cpu {
        c["resources"] = json!({"requests": {"cpu": cpu}});
    }
    json!({"metadata": {"name": name}, "spec": {"containers": [c]}})
}

/// Poll `f` until it returns Some, or fail after a generous deadline.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod_node(s: &Server, name: &str) -> String {
    let (_, p) = get(s, &format!("/api/v1/namespaces/default/pods/{name}"), ADMIN);
    p["spec"]["nodeName"].as_str().unwrap_or("").to_string()
}

fn scheduled_condition(s: &Server, name: &str) -> Value {
    let (_, p) = get(s, &format!("/api/v1/namespaces/default/pods/{name}"), ADMIN);
    condition(&p, "PodScheduled")
}

#[test]
fn scheduler_binds_by_fit_taints_and_cordon_and_retries_when_room_appears() {
    let mut tainted = ready_node("n3", "8", "8Gi", 110);
    tainted["spec"]["taints"] =
        json!([{"key": "example.com/dedicated", "value": "x", "effect": "NoSchedule"}]);
    let mut cordoned = ready_node("n2", "4", "8Gi", 110);
    cordoned["spec"]["unschedulable"] = json!(true);
    let s = start(Opts {
        seed: Some(json!([ready_node("n1", "1", "1Gi", 2), cordoned, tainted])),
        extra: &[
            "--controllers",
            "scheduler",
            "--controller-interval-ms",
            "50",
        ],
        ..Opts::default()
    });
    let pods = "/api/v1/namespaces/default/pods";
    assert_eq!(
        post(&s, pods, ADMIN, &pending_pod("small", Some("600m"))).0,
        201
    );
    eventually("small bound", || {
        (pod_node(&s, "small") == "n1").then_some(())
    });
    assert_eq!(scheduled_condition(&s, "small")["status"], "True");
    // 600m of n1's 1 CPU is taken: 500m no longer fits anywhere schedulable.
    assert_eq!(
        post(&s, pods, ADMIN, &pending_pod("big", Some("500m"))).0,
        201
    );
    let c = eventually("big unschedulable", || {
        let c = scheduled_condition(&s, "big");
        (c["status"] == "False").then_some(c)
    });
    assert_eq!(c["reason"], "Unschedulable");
    assert_eq!(
        c["message"],
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {example.com/dedicated: x}, 1 node(s) were unschedulable."
    );
    // A BestEffort pod still needs a pod slot: n1 has 2, one is used.
    assert_eq!(post(&s, pods, ADMIN, &pending_pod("be1", None)).0, 201);
    eventually("be1 bound", || (pod_node(&s, "be1") == "n1").then_some(()));
    assert_eq!(post(&s, pods, ADMIN, &pending_pod("be2", None)).0, 201);
    let c = eventually("be2 unschedulable", || {
        let c = scheduled_condition(&s, "be2");
        (c["status"] == "False").then_some(c)
    });
    assert!(
        c["message"].as_str().unwrap().contains("1 Too many pods"),
        "{c}"
    );
    assert_eq!(pod_node(&s, "big"), "", "still Pending");
    // Uncordoning n2 makes room: both pending pods are retried and bound there.
    let (code, _) = patch(
        &s,
        "/api/v1/nodes/n2",
        ADMIN,
        SMP,
        &json!({"spec": {"unschedulable": false}}),
    );
    assert_eq!(code, 200);
    eventually("big bound to n2", || {
        (pod_node(&s, "big") == "n2").then_some(())
    });
    eventually("be2 bound to n2", || {
        (pod_node(&s, "be2") == "n2").then_some(())
    });
    // A pod that tolerates the taint may land on n3 (LeastAllocated prefers the emptier node).
    let mut tol = pending_pod("tol", Some("1"));
    tol["spec"]["tolerations"] = json!([{"key": "example.com/dedicated", "operator": "Exists"}]);
    assert_eq!(post(&s, pods, ADMIN, &tol).0, 201);
    eventually("tol bound to n3", || {
        (pod_node(&s, "tol") == "n3").then_some(())
    });
    let (_, st) = get(&s, "/debug/fake-apiserver/controllers", ADMIN);
    assert_eq!(st["bindings"], 5);
}

fn rs_pods(s: &Server) -> Vec<Value> {
    let (_, l) = get(
        s,
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
        ADMIN,
    );
    l["items"].as_array().unwrap().clone()
}

fn active(pods: &[Value]) -> Vec<&Value> {
    pods.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// What the kubelet would do: report the pod Running and Ready.
fn run(s: &Server, p: &Value) {
    let name = p["metadata"]["name"].as_str().unwrap();
    let (c, _) = patch(
        s,
        &format!("/api/v1/namespaces/default/pods/{name}/status"),
        ADMIN,
        SMP,
        &json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    assert_eq!(c, 200);
}

#[test]
fn replicaset_keeps_its_replicas_replaces_evicted_pods_and_is_garbage_collected() {
    let s = start(Opts {
        seed: Some(json!([
            ready_node("n1", "4", "8Gi", 110),
            ready_node("n2", "4", "8Gi", 110)
        ])),
        extra: &[
            "--controllers",
            "scheduler,replicaset",
            "--controller-interval-ms",
            "50",
        ],
        ..Opts::default()
    });
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx",
                    "resources": {"requests": {"cpu": "100m"}}}]}}}});
    let (c, rs) = post(
        &s,
        "/apis/apps/v1/namespaces/default/replicasets",
        ADMIN,
        &rs,
    );
    assert_eq!(c, 201);
    let pods = eventually("3 bound pods", || {
        let p = rs_pods(&s);
        (p.len() == 3 && p.iter().all(|p| p["spec"]["nodeName"].is_string())).then_some(p)
    });
    for p in &pods {
        assert!(p["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        let o = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&o["kind"], &o["uid"], &o["controller"]),
            (&json!("ReplicaSet"), &rs["metadata"]["uid"], &json!(true))
        );
        run(&s, p);
    }
    eventually("readyReplicas 3", || {
        let (_, r) = get(
            &s,
            "/apis/apps/v1/namespaces/default/replicasets/web",
            ADMIN,
        );
        (r["status"]["readyReplicas"] == 3 && r["status"]["replicas"] == 3).then_some(())
    });
    // Evict one: it terminates (bound, 30 s grace) and a replacement is created at once.
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let (c, e) = post(
        &s,
        &format!("/api/v1/namespaces/default/pods/{victim}/eviction"),
        ADMIN,
        &json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim}}),
    );
    assert_eq!(c, 201, "{e}");
    let after = eventually("replacement", || {
        let p = rs_pods(&s);
        (p.len() == 4 && active(&p).len() == 3).then_some(p)
    });
    let replacement = active(&after)
        .into_iter()
        .find(|p| {
            !pods
                .iter()
                .any(|o| o["metadata"]["name"] == p["metadata"]["name"])
        })
        .cloned()
        .expect("a new pod");
    eventually("replacement bound", || {
        let n = pod_node(&s, replacement["metadata"]["name"].as_str().unwrap());
        (!n.is_empty()).then_some(())
    });
    // Scale down to 1: two are deleted gracefully, the not-ready replacement first.
    let (c, _) = patch(
        &s,
        "/apis/apps/v1/namespaces/default/replicasets/web",
        ADMIN,
        MP,
        &json!({"spec": {"replicas": 1}}),
    );
    assert_eq!(c, 200);
    let left = eventually("1 active", || {
        let p = rs_pods(&s);
        let a: Vec<Value> = active(&p).into_iter().cloned().collect();
        (a.len() == 1).then_some(a)
    });
    assert_ne!(left[0]["metadata"]["name"], replacement["metadata"]["name"]);
    // Deleting the ReplicaSet: the garbage collector deletes its pods.
    let (c, _) = delete(
        &s,
        "/apis/apps/v1/namespaces/default/replicasets/web",
        ADMIN,
        None,
    );
    assert_eq!(c, 200);
    eventually("all terminating", || {
        active(&rs_pods(&s)).is_empty().then_some(())
    });
}

fn renew(s: &Server, node: &str, t: u64) {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}");
    let renew = format!("2026-01-01T00:{:02}:{:02}.000000Z", t / 60, t % 60);
    let (c, _) = patch(s, &path, NODE1, MP, &json!({"spec": {"renewTime": renew}}));
    assert_eq!(c, 200);
}

fn ready_of(s: &Server) -> (Value, Vec<String>) {
    let (_, n) = get(s, "/api/v1/nodes/n1", ADMIN);
    let ready = condition(&n, "Ready");
    let taints = n["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap(),
                        t["effect"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (ready, taints)
}

#[test]
fn node_lifecycle_marks_a_node_unknown_when_its_lease_is_not_renewed() {
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "n1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
            "renewTime": "2026-01-01T00:00:00.000000Z"}});
    // Seeds skip admission: this pod has no toleration for the unreachable taint.
    let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running"}});
    let s = start(Opts {
        seed: Some(json!([ready_node("n1", "4", "8Gi", 110), lease, bare])),
        extra: &[
            "--controllers",
            "all",
            "--controller-interval-ms",
            "50",
            "--node-monitor-grace-period-s",
            "3",
        ],
        ..Opts::default()
    });
    // Created through the API: DefaultTolerationSeconds tolerates unreachable for 300 s.
    let mut tolerant = pending_pod("tolerant", None);
    tolerant["spec"]["nodeName"] = json!("n1");
    assert_eq!(
        post(&s, "/api/v1/namespaces/default/pods", ADMIN, &tolerant).0,
        201
    );
    // The status was posted once (old heartbeat); renewing the Lease alone keeps the
    // node Ready, well past the grace period.
    let start_t = Instant::now();
    let mut t = 1;
    while start_t.elapsed() < Duration::from_millis(4500) {
        renew(&s, "n1", t);
        t += 1;
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            ready_of(&s).0["status"],
            "True",
            "lease renewals keep it Ready"
        );
    }
    // Renewals stop: Unknown after the grace period, with the unreachable taints.
    let (ready, taints) = eventually("Ready=Unknown", || {
        let (r, t) = ready_of(&s);
        (r["status"] == "Unknown").then_some((r, t))
    });
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    assert_eq!(
        ready["lastHeartbeatTime"], "2026-01-01T00:00:00Z",
        "heartbeat untouched"
    );
    assert!(taints.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()));
    assert!(taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()));
    // Taint eviction: the pod without a toleration is deleted (and stays Terminating:
    // no kubelet confirms), the tolerant one keeps running for its 300 s.
    let gone = eventually("bare evicted", || {
        let (_, p) = get(&s, "/api/v1/namespaces/default/pods/bare", ADMIN);
        p["metadata"]["deletionTimestamp"].is_string().then_some(p)
    });
    let dt = condition(&gone, "DisruptionTarget");
    assert_eq!(dt["reason"], "DeletionByTaintManager");
    let (_, tp) = get(&s, "/api/v1/namespaces/default/pods/tolerant", ADMIN);
    assert!(tp["metadata"]["deletionTimestamp"].is_null());
    // Nothing is scheduled there meanwhile.
    assert_eq!(
        post(
            &s,
            "/api/v1/namespaces/default/pods",
            ADMIN,
            &pending_pod("p", None)
        )
        .0,
        201
    );
    eventually("p unschedulable", || {
        (scheduled_condition(&s, "p")["status"] == "False").then_some(())
    });
    // The kubelet is back: renews its Lease and posts Ready=True; taints go, p is bound.
    renew(&s, "n1", t);
    let (c, _) = patch(
        &s,
        "/api/v1/nodes/n1/status",
        NODE1,
        SMP,
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": "2026-01-01T00:10:00Z"}]}}),
    );
    assert_eq!(c, 200);
    eventually("taints removed", || ready_of(&s).1.is_empty().then_some(()));
    eventually("p bound", || (pod_node(&s, "p") == "n1").then_some(()));
    let (_, st) = get(&s, "/debug/fake-apiserver/controllers", ADMIN);
    assert_eq!(st["nodesMarkedUnknown"], 1);
}
