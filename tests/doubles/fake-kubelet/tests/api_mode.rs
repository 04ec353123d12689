//! API mode against a minimal in-test API server that records every request.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Req {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    reqs: Vec<Req>,
    pods: Vec<Value>,
    lease: Option<Value>,
}

struct ApiServer {
    port: u16,
    state: Arc<Mutex<State>>,
}

fn read_req(s: &mut TcpStream) -> Option<Req> {
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let he = loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..he]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < he + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[he..(he + len).min(buf.len())]).unwrap_or(Value::Null);
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl ApiServer {
    fn start() -> ApiServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut s) = c else { continue };
                let Some(req) = read_req(&mut s) else {
                    continue;
                };
                let (code, body) = {
                    let mut g = st.lock().unwrap();
                    g.reqs.push(req.clone());
                    route(&mut g, &req)
                };
                let b = body.to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                );
            }
        });
        ApiServer { port, state }
    }

    fn wait_req(&self, what: &str, pred: impl Fn(&Req) -> bool) -> Req {
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            if let Some(r) = self.state.lock().unwrap().reqs.iter().find(|r| pred(r)) {
                return r.clone();
            }
            if Instant::now() > deadline {
                let g = self.state.lock().unwrap();
                let seen: Vec<String> = g
                    .reqs
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.body))
                    .collect();
                panic!("no request matching {what}; seen:\n{}", seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, pred: impl Fn(&Req) -> bool) -> usize {
        self.state
            .lock()
            .unwrap()
            .reqs
            .iter()
            .filter(|r| pred(r))
            .count()
    }
}

fn route(g: &mut State, r: &Req) -> (u16, Value) {
    let path = r.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (r.method.as_str(), parts.as_slice()) {
        ("POST", ["api", "v1", "nodes"]) => (201, r.body.clone()),
        ("PATCH", ["api", "v1", "nodes", _, "status"]) => (200, json!({"kind": "Node"})),
        ("GET", ["api", "v1", "pods"]) => {
            let sel = r
                .path
                .split("fieldSelector=")
                .nth(1)
                .unwrap_or("")
                .replace("%3D", "=");
            let node = sel.strip_prefix("spec.nodeName=").unwrap_or("");
            let items: Vec<Value> = g
                .pods
                .iter()
                .filter(|p| p["spec"]["nodeName"] == node)
                .cloned()
                .collect();
            (
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items}),
            )
        }
        ("PATCH", ["api", "v1", "namespaces", ns, "pods", name, "status"]) => {
            match g
                .pods
                .iter_mut()
                .find(|p| p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == *name)
            {
                Some(p) => {
                    let mut patch = r.body.clone();
                    if let Some(m) = patch.as_object_mut() {
                        m.remove("metadata");
                    }
                    merge(p, &patch);
                    (200, p.clone())
                }
                None => (404, json!({"kind": "Status", "code": 404})),
            }
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "pods", name]) => {
            let idx = g
                .pods
                .iter()
                .position(|p| p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == *name);
            match idx {
                None => (404, json!({"kind": "Status", "code": 404})),
                Some(i) if r.body["preconditions"]["uid"] != g.pods[i]["metadata"]["uid"] => {
                    (409, json!({"kind": "Status", "code": 409}))
                }
                Some(i) => (200, g.pods.remove(i)),
            }
        }
        (
            "GET",
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                "kube-node-lease",
                "leases",
                _,
            ],
        ) => match &g.lease {
            Some(l) => (200, l.clone()),
            None => (404, json!({"kind": "Status", "code": 404})),
        },
        (
            "POST",
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                "kube-node-lease",
                "leases",
            ],
        ) => {
            let mut l = r.body.clone();
            l["metadata"]["resourceVersion"] = json!("1");
            g.lease = Some(l.clone());
            (201, l)
        }
        (
            "PUT",
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                "kube-node-lease",
                "leases",
                _,
            ],
        ) => {
            let current = g
                .lease
                .as_ref()
                .map(|l| l["metadata"]["resourceVersion"].clone());
            if current != Some(r.body["metadata"]["resourceVersion"].clone()) {
                return (
                    409,
                    json!({"kind": "Status", "code": 409, "reason": "Conflict"}),
                );
            }
            let mut l = r.body.clone();
            let rv: u64 = l["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            l["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
            g.lease = Some(l.clone());
            (200, l)
        }
        _ => (404, json!({"kind": "Status", "code": 404})),
    }
}

fn api_pod(name: &str, node: &str, cpu: &str, created: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"), "creationTimestamp": created},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep"], "args": ["300"],
                            "resources": {"requests": {"cpu": cpu}}}],
        },
        "status": {"phase": "Pending"},
    })
}

#[test]
fn registers_heartbeats_runs_and_deletes_pods() {
    let api = ApiServer::start();
    api.state.lock().unwrap().pods = vec![
        api_pod("small", "node-x", "100m", "2024-01-01T00:00:00Z"),
        api_pod("huge", "node-x", "8", "2024-01-01T00:00:01Z"),
        api_pod("elsewhere", "node-y", "100m", "2024-01-01T00:00:00Z"),
    ];
    let host = HostRoot::new(4_194_304).flat_cpus(2);
    let kc = tempfile::tempdir().unwrap();
    let kubeconfig = kc.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
            "clusters": [{"name": "c", "cluster": {"server": format!("http://127.0.0.1:{}", api.port)}}],
            "users": [{"name": "u", "user": {"token": "sekret"}}],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        })
        .to_string(),
    )
    .unwrap();
    let mut reaper = PodReaper::default();
    let k = Kubelet::start(
        Opts::new(host.path())
            .arg("--healthz-port=0")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--hostname-override=Node-X")
            .arg("--node-status-update-frequency=300ms")
            .arg("--system-reserved=cpu=500m")
            .env("FAKE_KUBELET_SYNC_INTERVAL_MS", "100"),
    );
    let reg = api.wait_req("node registration", |r| {
        r.method == "POST" && r.path == "/api/v1/nodes"
    });
    assert_eq!(reg.header("Authorization"), Some("Bearer sekret"));
    assert_eq!(reg.body["kind"], "Node");
    assert_eq!(reg.body["metadata"]["name"], "node-x");
    assert_eq!(reg.body["status"]["capacity"]["cpu"], "2");
    assert_eq!(reg.body["status"]["capacity"]["memory"], "4294967296");
    assert_eq!(reg.body["status"]["allocatable"]["cpu"], "1500m");
    assert_eq!(
        reg.body["status"]["allocatable"]["memory"],
        (4294967296i64 - (100 << 20)).to_string()
    );
    let ready_of = |body: &Value| {
        body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["status"]
            .clone()
    };
    // Registered NotReady until the runtime check passes; the flip is posted as a change.
    assert_eq!(ready_of(&reg.body), "False");
    api.wait_req("Ready=True posted", |r| {
        r.method == "PATCH"
            && r.path == "/api/v1/nodes/node-x/status"
            && ready_of(&r.body) == "True"
    });

    let hb = |r: &Req| r.method == "PATCH" && r.path == "/api/v1/nodes/node-x/status";
    let first = api.wait_req("heartbeat", hb);
    assert_eq!(
        first.header("Content-Type"),
        Some("application/merge-patch+json")
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(api.count(hb) >= 2, "heartbeats every 300ms");

    let list = api.wait_req("pod list", |r| {
        r.method == "GET" && r.path.starts_with("/api/v1/pods?")
    });
    assert_eq!(
        list.path,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-x"
    );

    let running = api.wait_req("small Running", |r| {
        r.method == "PATCH"
            && r.path == "/api/v1/namespaces/apps/pods/small/status"
            && r.body["status"]["phase"] == "Running"
    });
    assert_eq!(
        running.header("Content-Type"),
        Some("application/merge-patch+json")
    );
    let ready = running.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    let rejected = api.wait_req("huge Failed", |r| {
        r.path == "/api/v1/namespaces/apps/pods/huge/status"
    });
    assert_eq!(rejected.body["status"]["phase"], "Failed");
    assert_eq!(rejected.body["status"]["reason"], "OutOfcpu");
    assert!(
        rejected.body["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Pod was rejected: ")
    );

    let st = k.wait_status(Duration::from_secs(3), |s| {
        pod(s, "small").is_some_and(|p| p["pid"].is_i64())
    });
    reaper.track(&st);
    assert!(pod(&st, "elsewhere").is_none());
    let pid = pod(&st, "small").unwrap()["pid"].as_i64().unwrap() as i32;
    assert!(alive(pid));

    // graceful deletion: the API server sets deletionTimestamp; kubelet kills, then DELETEs
    {
        let mut g = api.state.lock().unwrap();
        let p = g
            .pods
            .iter_mut()
            .find(|p| p["metadata"]["name"] == "small")
            .unwrap();
        p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:01:00Z");
        p["metadata"]["deletionGracePeriodSeconds"] = json!(1);
    }
    let del = api.wait_req("DELETE small", |r| {
        r.method == "DELETE" && r.path == "/api/v1/namespaces/apps/pods/small"
    });
    assert!(!alive(pid), "process is gone before the final DELETE");
    assert_eq!(
        del.body,
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": "uid-small"}})
    );
    k.wait_status(Duration::from_secs(3), |s| pod(s, "small").is_none());
    assert!(
        api.state
            .lock()
            .unwrap()
            .pods
            .iter()
            .all(|p| p["metadata"]["name"] != "small")
    );
    // the rejected pod is never deleted by the kubelet
    assert_eq!(
        api.count(|r| r.method == "DELETE" && r.path.ends_with("/huge")),
        0
    );
}

#[test]
fn unreachable_api_server_does_not_stop_static_pods_or_healthz() {
    let host = HostRoot::new(4_194_304).flat_cpus(2);
    let dead_port = free_port();
    let kc = tempfile::tempdir().unwrap();
    let kubeconfig = kc.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({"clusters": [{"name": "c", "cluster": {"server": format!("http://127.0.0.1:{dead_port}")}}],
               "users": [{"name": "u", "user": {"token": "t"}}]})
        .to_string(),
    )
    .unwrap();
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("s.json"),
        pod_manifest(
            "static",
            "2024-01-01T00:00:00Z",
            Some("100m"),
            None,
            &["sleep", "300"],
            1,
        ),
    )
    .unwrap();
    let mut reaper = PodReaper::default();
    let port = free_port();
    let mut k = Kubelet::start(
        Opts::new(host.path())
            .arg(format!("--healthz-port={port}"))
            .arg(format!(
                "--pod-manifest-path={}",
                manifests.path().display()
            ))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .env("FAKE_KUBELET_SYNC_INTERVAL_MS", "100"),
    );
    wait_http(port, "/healthz", 200, Duration::from_secs(3));
    let st = k.wait_status(Duration::from_secs(2), |s| {
        pod(s, "static").is_some_and(|p| p["phase"] == "Running")
    });
    reaper.track(&st);
    assert!(k.wait_exit(Duration::from_millis(300)).is_none());
    // a kubeconfig pointing at https is refused
    std::fs::write(
        &kubeconfig,
        json!({"clusters": [{"cluster": {"server": "https://10.0.0.1:6443"}}]}).to_string(),
    )
    .unwrap();
    let mut k2 = Kubelet::start(
        Opts::new(host.path())
            .arg("--healthz-port=0")
            .arg(format!("--kubeconfig={}", kubeconfig.display())),
    );
    assert_eq!(
        k2.wait_exit(Duration::from_secs(3)).expect("exit").code(),
        Some(1)
    );
}

#[test]
fn status_only_on_change_or_report_frequency_and_lease_renewed_every_quarter_duration() {
    let api = ApiServer::start();
    let host = HostRoot::new(4_194_304).flat_cpus(2);
    let kc = tempfile::tempdir().unwrap();
    let kubeconfig = kc.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": format!("http://127.0.0.1:{}", api.port)}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        })
        .to_string(),
    )
    .unwrap();
    // status computed every 100 ms but reported every 2 s (as kubelet's 10 s / 5 min);
    // Lease duration 2 s, renewed every 0.5 s (as 40 s / 10 s)
    let k = Kubelet::start(
        Opts::new(host.path())
            .arg("--healthz-port=0")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--hostname-override=node-l")
            .env("FAKE_KUBELET_NODE_STATUS_REPORT_FREQUENCY", "2s")
            .env("FAKE_KUBELET_NODE_LEASE_DURATION_SECONDS", "2")
            .env("FAKE_KUBELET_SYNC_INTERVAL_MS", "100"),
    );
    let _ = k.pid();
    let hb = |r: &Req| r.method == "PATCH" && r.path == "/api/v1/nodes/node-l/status";
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-l";
    api.wait_req("lease created", |r| {
        r.method == "POST" && r.path.ends_with("/leases")
    });
    api.wait_req("first status", hb);
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    let posts = api.count(hb);
    let renewals = api.count(|r| r.method == "PUT" && r.path == lease_path);
    assert!(
        (1..=4).contains(&posts),
        "status posted {posts} times in {:?}: only at start and every report period",
        start.elapsed()
    );
    assert!(renewals >= 4, "lease renewed {renewals} times in 3 s");
    let lease = api.state.lock().unwrap().lease.clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "node-l");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    let renew = lease["spec"]["renewTime"].as_str().unwrap();
    assert_eq!(renew.len(), "2026-01-01T00:00:00.000000Z".len(), "{renew}");
    assert_eq!(lease["metadata"]["namespace"], "kube-node-lease");
}
