//! HTTP-level tests of the fake API server (plain HTTP, no kubectl).

mod common;

use common::*;
use serde_json::{Value, json};

const SMP: &str = "application/strategic-merge-patch+json";
const MP: &str = "application/merge-patch+json";
const JP: &str = "application/json-patch+json";

fn seeded(objs: Vec<Value>) -> Server {
    start(Opts {
        seed: Some(Value::Array(objs)),
        ..Opts::default()
    })
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn discovery_documents() {
    let s = seeded(vec![]);
    let (c, v) = get(&s, "/version", ADMIN);
    assert_eq!(c, 200);
    assert_eq!(v["gitVersion"], "v1.33.0");
    assert_eq!(v["major"], "1");
    let (_, v) = get(&s, "/api", ADMIN);
    assert_eq!(v["kind"], "APIVersions");
    assert_eq!(v["versions"], json!(["v1"]));
    let (_, v) = get(&s, "/api/v1", ADMIN);
    assert_eq!(v["kind"], "APIResourceList");
    let res = v["resources"].as_array().unwrap();
    let find = |n: &str| res.iter().find(|r| r["name"] == n).cloned().unwrap();
    let ev = find("pods/eviction");
    assert_eq!(
        (&ev["group"], &ev["version"], &ev["kind"]),
        (&json!("policy"), &json!("v1"), &json!("Eviction"))
    );
    for n in [
        "pods",
        "pods/status",
        "nodes",
        "nodes/status",
        "namespaces",
        "events",
    ] {
        find(n);
    }
    assert_eq!(find("nodes")["namespaced"], false);
    let (_, v) = get(&s, "/apis", ADMIN);
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in [
        "policy",
        "apps",
        "rbac.authorization.k8s.io",
        "coordination.k8s.io",
    ] {
        assert!(groups.contains(&g), "{g} in {groups:?}");
    }
    let (_, v) = get(&s, "/apis/policy", ADMIN);
    assert_eq!(v["preferredVersion"]["version"], "v1");
    let (c, v) = get(&s, "/apis/policy/v1beta1", ADMIN);
    assert_eq!(c, 200);
    assert_eq!(v["resources"][0]["name"], "poddisruptionbudgets");
    let (_, v) = get(&s, "/openapi/v3", BOB);
    let url = v["paths"]["apis/policy/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let (c, v) = get(&s, &url, BOB);
    assert_eq!(c, 200);
    let patch_op =
        &v["paths"]["/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}"]["patch"];
    assert_eq!(
        patch_op["x-kubernetes-group-version-kind"]["kind"],
        "PodDisruptionBudget"
    );
    let (c, v) = get(&s, "/apis/nope/v1", ADMIN);
    assert_eq!((c, v["reason"].as_str()), (404, Some("NotFound")));
}

#[test]
fn authentication_401() {
    let s = seeded(vec![]);
    let r = request(&s, "GET", "/api/v1/nodes", None, "application/json", b"");
    assert_eq!(r.code, 401);
    assert_eq!(
        r.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );
    let (c, _) = get(&s, "/api/v1/nodes", "wrong");
    assert_eq!(c, 401);
    let (c, _) = get(&s, "/version", "wrong");
    assert_eq!(c, 401);
    let (c, _) = get(&s, "/api/v1/nodes", ADMIN);
    assert_eq!(c, 200);
    // Discovery is open to every authenticated user.
    let (c, _) = get(&s, "/apis", BOB);
    assert_eq!(c, 200);
}

#[test]
fn crud_metadata_selectors_and_errors() {
    let s = seeded(vec![node("n1")]);
    let mut p = pod("default", "p1", "n1", "web");
    p["metadata"]["labels"]["tier"] = json!("fe");
    let (c, created) = post(&s, "/api/v1/namespaces/default/pods", ADMIN, &p);
    assert_eq!(c, 201, "{created}");
    assert_eq!(created["kind"], "Pod");
    assert_eq!(created["apiVersion"], "v1");
    assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(
        created["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    // API create resets status like the real PrepareForCreate.
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["spec"]["terminationGracePeriodSeconds"], 30);
    let (c, dup) = post(&s, "/api/v1/namespaces/default/pods", ADMIN, &p);
    assert_eq!(c, 409);
    assert_eq!(dup["reason"], "AlreadyExists");
    assert_eq!(dup["message"], "pods \"p1\" already exists");
    let (c, e) = post(
        &s,
        "/api/v1/namespaces/nope/pods",
        ADMIN,
        &pod("nope", "x", "n1", "a"),
    );
    assert_eq!(
        (c, e["message"].as_str()),
        (404, Some("namespaces \"nope\" not found"))
    );
    let mut g = pod("default", "", "", "web");
    g["metadata"]["generateName"] = json!("gen-");
    let (c, gen_pod) = post(&s, "/api/v1/namespaces/default/pods", ADMIN, &g);
    assert_eq!(c, 201);
    assert!(
        gen_pod["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("gen-")
    );
    assert!(rv(&gen_pod) > rv(&created));

    let (c, e) = get(&s, "/api/v1/namespaces/default/pods/missing", ADMIN);
    assert_eq!(c, 404);
    assert_eq!(
        e,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"missing\" not found", "reason": "NotFound",
            "details": {"name": "missing", "kind": "pods"}, "code": 404})
    );
    let (_, e) = get(&s, "/apis/apps/v1/namespaces/default/daemonsets/x", ADMIN);
    assert_eq!(e["message"], "daemonsets.apps \"x\" not found");
    assert_eq!(e["details"]["group"], "apps");

    // Lists and selectors.
    let (_, l) = get(&s, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", ADMIN);
    assert_eq!(l["kind"], "PodList");
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    assert!(rv(&l) >= rv(&gen_pod));
    let (_, l) = get(
        &s,
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
        ADMIN,
    );
    assert_eq!(l["items"].as_array().unwrap().len(), 2);
    let (_, l) = get(&s, "/api/v1/pods?labelSelector=tier+in+(fe,be),app", ADMIN);
    assert_eq!(l["items"][0]["metadata"]["name"], "p1");
    let (_, l) = get(
        &s,
        "/api/v1/pods?fieldSelector=metadata.name%3Dp1,metadata.namespace%3Ddefault",
        ADMIN,
    );
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let (_, l) = get(&s, "/api/v1/pods?limit=1", ADMIN);
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let cont = l["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, l2) = get(&s, &format!("/api/v1/pods?limit=1&continue={cont}"), ADMIN);
    assert_ne!(
        l2["items"][0]["metadata"]["name"],
        l["items"][0]["metadata"]["name"]
    );

    // PUT with a stale resourceVersion conflicts; the current one works.
    let mut upd = created.clone();
    upd["metadata"]["labels"]["x"] = json!("1");
    let (c, u) = put(&s, "/api/v1/namespaces/default/pods/p1", ADMIN, &upd);
    assert_eq!(c, 200, "{u}");
    assert!(rv(&u) > rv(&created));
    let (c, e) = put(&s, "/api/v1/namespaces/default/pods/p1", ADMIN, &upd);
    assert_eq!(c, 409);
    assert_eq!(e["reason"], "Conflict");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified")
    );

    // Patches: merge, strategic (status subresource), json patch.
    let (c, n) = patch(
        &s,
        "/api/v1/nodes/n1",
        ADMIN,
        SMP,
        &json!({"spec": {"unschedulable": true}}),
    );
    assert_eq!((c, &n["spec"]["unschedulable"]), (200, &json!(true)));
    let (_, n2) = patch(
        &s,
        "/api/v1/nodes/n1",
        ADMIN,
        MP,
        &json!({"spec": {"unschedulable": null}}),
    );
    assert!(n2["spec"].get("unschedulable").is_none());
    // A no-op patch keeps the resourceVersion.
    let (_, n3) = patch(
        &s,
        "/api/v1/nodes/n1",
        ADMIN,
        MP,
        &json!({"spec": {"unschedulable": null}}),
    );
    assert_eq!(rv(&n3), rv(&n2));
    let (_, n4) = patch(
        &s,
        "/api/v1/nodes/n1/status",
        ADMIN,
        SMP,
        &json!({"status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]}}),
    );
    assert_eq!(n4["status"]["conditions"].as_array().unwrap().len(), 2);
    // The main resource ignores status, the status subresource ignores spec.
    let (_, n5) = patch(
        &s,
        "/api/v1/nodes/n1",
        ADMIN,
        MP,
        &json!({"status": {"phase": "x"}}),
    );
    assert!(n5["status"].get("phase").is_none());
    let (_, n6) = patch(
        &s,
        "/api/v1/nodes/n1/status",
        ADMIN,
        MP,
        &json!({"spec": {"podCIDR": "x"}}),
    );
    assert!(n6["spec"].get("podCIDR").is_none());
    let (c, n7) = patch(
        &s,
        "/api/v1/nodes/n1",
        ADMIN,
        JP,
        &json!([{"op": "add", "path": "/metadata/labels/role", "value": "w"}]),
    );
    assert_eq!((c, &n7["metadata"]["labels"]["role"]), (200, &json!("w")));
    let (c, _) = patch(
        &s,
        "/api/v1/nodes/n1",
        ADMIN,
        "application/apply-patch+yaml",
        &json!({}),
    );
    assert_eq!(c, 415);
    let (c, _) = patch(&s, "/api/v1/nodes/zz", ADMIN, MP, &json!({}));
    assert_eq!(c, 404);

    // Namespaces, events and leases are accepted and stored.
    let (c, _) = post(
        &s,
        "/api/v1/namespaces",
        ADMIN,
        &json!({"metadata": {"name": "team"}}),
    );
    assert_eq!(c, 201);
    let (c, _) = post(
        &s,
        "/api/v1/namespaces/team/events",
        ADMIN,
        &json!({"metadata": {"generateName": "ev."}, "reason": "X", "involvedObject": {"kind": "Node", "name": "n1"}}),
    );
    assert_eq!(c, 201);
    let (c, _) = post(
        &s,
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        ADMIN,
        &json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}}),
    );
    assert_eq!(c, 201);
    // Generic-store deletes answer with a Success Status.
    let (c, st) = delete(
        &s,
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
        ADMIN,
        None,
    );
    assert_eq!(
        (c, &st["kind"], &st["status"]),
        (200, &json!("Status"), &json!("Success"))
    );
    assert_eq!(st["details"]["group"], "coordination.k8s.io");
    let (c, _) = delete(&s, "/api/v1/namespaces/team", ADMIN, None);
    assert_eq!(c, 200);
    let (_, l) = get(&s, "/api/v1/namespaces/team/events", ADMIN);
    assert_eq!(l["items"].as_array().unwrap().len(), 0);
}

#[test]
fn graceful_pod_deletion() {
    let mut long = pod("default", "long", "n1", "a");
    long["spec"]["terminationGracePeriodSeconds"] = json!(45);
    let mut unbound = pod("default", "unbound", "", "a");
    unbound["spec"].as_object_mut().unwrap().remove("nodeName");
    let mut done = pod("default", "done", "n1", "a");
    done["status"]["phase"] = json!("Succeeded");
    let s = seeded(vec![
        node("n1"),
        long,
        unbound,
        done,
        pod("default", "zero", "n1", "a"),
        pod("default", "opts", "n1", "a"),
    ]);
    let base = "/api/v1/namespaces/default/pods";

    let (c, d) = delete(&s, &format!("{base}/long"), ADMIN, None);
    assert_eq!(c, 200);
    assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 45);
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    let (c, still) = get(&s, &format!("{base}/long"), ADMIN);
    assert_eq!(
        c, 200,
        "a bound running pod is kept until the kubelet finishes"
    );
    assert_eq!(still["metadata"]["deletionGracePeriodSeconds"], 45);
    // A second delete with a longer grace period changes nothing.
    let (_, again) = delete(
        &s,
        &format!("{base}/long"),
        ADMIN,
        Some(&json!({"gracePeriodSeconds": 60})),
    );
    assert_eq!(again["metadata"]["deletionGracePeriodSeconds"], 45);
    // Wrong UID precondition → 409.
    let (c, e) = delete(
        &s,
        &format!("{base}/long"),
        ADMIN,
        Some(&json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "nope"}})),
    );
    assert_eq!(c, 409);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed: UID in precondition: nope")
    );
    // The kubelet's final delete.
    let uid = still["metadata"]["uid"].as_str().unwrap();
    let (c, _) = delete(
        &s,
        &format!("{base}/long"),
        ADMIN,
        Some(&json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})),
    );
    assert_eq!(c, 200);
    assert_eq!(get(&s, &format!("{base}/long"), ADMIN).0, 404);

    for name in ["unbound", "done"] {
        let (c, _) = delete(&s, &format!("{base}/{name}"), ADMIN, None);
        assert_eq!(c, 200);
        assert_eq!(
            get(&s, &format!("{base}/{name}"), ADMIN).0,
            404,
            "{name} removed at once"
        );
    }
    let (c, _) = delete(
        &s,
        &format!("{base}/zero?gracePeriodSeconds=0"),
        ADMIN,
        None,
    );
    assert_eq!(c, 200);
    assert_eq!(get(&s, &format!("{base}/zero"), ADMIN).0, 404);
    let (_, d) = delete(
        &s,
        &format!("{base}/opts"),
        ADMIN,
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 7})),
    );
    assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 7);
    assert_eq!(delete(&s, &format!("{base}/missing"), ADMIN, None).0, 404);
}

fn eviction(name: &str, ns: &str, version: &str, grace: Option<i64>) -> Value {
    let mut e = json!({"apiVersion": format!("policy/{version}"), "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns}});
    if let Some(g) = grace {
        e["deleteOptions"] = json!({"gracePeriodSeconds": g});
    }
    e
}

#[test]
fn eviction_404_200_429_and_success() {
    let s = seeded(vec![
        node("n1"),
        pod("default", "a", "n1", "guarded"),
        pod("default", "b", "n1", "guarded"),
        pod("default", "free", "n1", "free"),
        pdb("default", "guard", "guarded", json!({"minAvailable": 1})),
    ]);
    let ev = |n: &str| format!("/api/v1/namespaces/default/pods/{n}/eviction");
    let (c, e) = post(
        &s,
        &ev("nope"),
        ADMIN,
        &eviction("nope", "default", "v1", None),
    );
    assert_eq!((c, e["reason"].as_str()), (404, Some("NotFound")));

    // dryRun=All answers like the real thing and changes nothing.
    let (c, _) = post(
        &s,
        &format!("{}?dryRun=All", ev("free")),
        ADMIN,
        &eviction("free", "default", "v1", Some(3)),
    );
    assert_eq!(c, 201);
    let (_, p) = get(&s, "/api/v1/namespaces/default/pods/free", ADMIN);
    assert!(p["metadata"].get("deletionTimestamp").is_none());
    let (c, _) = post(
        &s,
        "/api/v1/namespaces/default/pods?dryRun=All",
        ADMIN,
        &pod("default", "ghost", "n1", "x"),
    );
    assert_eq!(c, 201);
    assert_eq!(
        get(&s, "/api/v1/namespaces/default/pods/ghost", ADMIN).0,
        404
    );

    // No PDB: evicted gracefully with the eviction's DeleteOptions.
    let (c, st) = post(
        &s,
        &ev("free"),
        ADMIN,
        &eviction("free", "default", "v1", Some(3)),
    );
    assert_eq!(c, 201, "{st}");
    assert_eq!(
        st,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
    );
    let (_, p) = get(&s, "/api/v1/namespaces/default/pods/free", ADMIN);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 3);
    // The eviction marked it first (PodDisruptionConditions).
    let dt = condition(&p, "DisruptionTarget");
    assert_eq!(
        (&dt["status"], &dt["reason"], &dt["message"]),
        (
            &json!("True"),
            &json!("EvictionByEvictionAPI"),
            &json!("Eviction API: evicting")
        )
    );
    // Already terminating: canIgnorePDB, deleted again (a shorter grace wins) → 201.
    let (c, _) = post(
        &s,
        &ev("free"),
        ADMIN,
        &eviction("free", "default", "v1", Some(1)),
    );
    assert_eq!(c, 201);
    let (_, p) = get(&s, "/api/v1/namespaces/default/pods/free", ADMIN);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 1);

    // PDB: 2 healthy, needs 1 → first eviction allowed, second 429 (v1beta1 body).
    let (c, _) = post(&s, &ev("a"), ADMIN, &eviction("a", "default", "v1", None));
    assert_eq!(c, 201);
    let (_, pdbv) = get(
        &s,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/guard",
        ADMIN,
    );
    assert_eq!(pdbv["status"]["disruptionsAllowed"], 0);
    assert_eq!(pdbv["status"]["currentHealthy"], 1);
    let (c, e) = post(
        &s,
        &ev("b"),
        ADMIN,
        &eviction("b", "default", "v1beta1", None),
    );
    assert_eq!(c, 429);
    assert_eq!(
        e,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "reason": "TooManyRequests",
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget guard needs 1 healthy pods and has 1 currently"}]},
            "code": 429})
    );
    assert!(
        get(&s, "/api/v1/namespaces/default/pods/b", ADMIN).1["metadata"]
            .get("deletionTimestamp")
            .is_none()
    );
    // Mismatched name → 400.
    let (c, _) = post(
        &s,
        &ev("b"),
        ADMIN,
        &eviction("other", "default", "v1", None),
    );
    assert_eq!(c, 400);
    // Once the evicted pod is gone and a replacement is Ready, the budget allows one again.
    delete(
        &s,
        "/api/v1/namespaces/default/pods/a",
        ADMIN,
        Some(&json!({"gracePeriodSeconds": 0})),
    );
    post(
        &s,
        "/api/v1/namespaces/default/pods",
        ADMIN,
        &pod("default", "c", "n1", "guarded"),
    );
    let (_, p) = patch(
        &s,
        "/api/v1/namespaces/default/pods/c/status",
        ADMIN,
        SMP,
        &json!({"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    assert_eq!(p["status"]["phase"], "Running");
    let (c, _) = post(&s, &ev("b"), ADMIN, &eviction("b", "default", "v1", None));
    assert_eq!(c, 201);
}

/// A pod of `app` owned by the ReplicaSet `rs` (uid `<rs>-uid`).
fn owned_pod(name: &str, app: &str, rs: &str) -> Value {
    let mut p = pod("default", name, "n1", app);
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": rs, "uid": format!("{rs}-uid"), "controller": true}]);
    p
}

#[test]
fn pdb_counts_the_replicaset_scale_not_failed_pods_and_fails_safe_without_a_controller() {
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web", "namespace": "default", "uid": "web-uid"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let mut objs = vec![node("n1"), rs];
    for i in 0..4 {
        objs.push(owned_pod(&format!("web-{i}"), "web", "web"));
    }
    // Two Failed pods the ReplicaSet already replaced: still matched by the selector.
    for i in 4..6 {
        let mut p = owned_pod(&format!("web-{i}"), "web", "web");
        p["status"] = json!({"phase": "Failed", "reason": "Evicted",
            "conditions": [{"type": "Ready", "status": "False"}]});
        objs.push(p);
    }
    objs.push(pdb("default", "web", "web", json!({"maxUnavailable": 1})));
    // A pod whose controlling ReplicaSet does not exist.
    objs.push(owned_pod("lost-0", "lost", "gone"));
    objs.push(pdb("default", "lost", "lost", json!({"maxUnavailable": 1})));
    let s = seeded(objs);
    let status = |n: &str| {
        let (_, v) = get(
            &s,
            &format!("/apis/policy/v1/namespaces/default/poddisruptionbudgets/{n}"),
            ADMIN,
        );
        v["status"].clone()
    };
    let web = status("web");
    assert_eq!(
        [
            &web["expectedPods"],
            &web["currentHealthy"],
            &web["desiredHealthy"],
            &web["disruptionsAllowed"]
        ],
        [&json!(4), &json!(4), &json!(3), &json!(1)],
        "{web}"
    );
    let ev = |n: &str| format!("/api/v1/namespaces/default/pods/{n}/eviction");
    let (c, e) = post(
        &s,
        &ev("web-0"),
        ADMIN,
        &eviction("web-0", "default", "v1", None),
    );
    assert_eq!(c, 201, "{e}");
    let web = status("web");
    assert_eq!(
        (
            &web["expectedPods"],
            &web["currentHealthy"],
            &web["disruptionsAllowed"]
        ),
        (&json!(4), &json!(3), &json!(0))
    );
    let (c, _) = post(
        &s,
        &ev("web-1"),
        ADMIN,
        &eviction("web-1", "default", "v1", None),
    );
    assert_eq!(c, 429);
    // failSafe: no disruption, reason SyncFailed, the error as the message.
    let lost = status("lost");
    assert_eq!(lost["disruptionsAllowed"], 0);
    assert_eq!(
        condition(&json!({"status": lost}), "DisruptionAllowed")["reason"],
        "SyncFailed"
    );
    assert_eq!(
        lost["conditions"][0]["message"],
        "found no controllers for pod \"lost-0\""
    );
    let (c, _) = post(
        &s,
        &ev("lost-0"),
        ADMIN,
        &eviction("lost-0", "default", "v1", None),
    );
    assert_eq!(c, 429);
}

#[test]
fn pdb_status_math_live() {
    let mut objs = vec![node("n1")];
    for i in 0..4 {
        objs.push(pod("default", &format!("w{i}"), "n1", "w"));
    }
    let mut unready = pod("default", "w4", "n1", "w");
    unready["status"]["conditions"][0]["status"] = json!("False");
    objs.push(unready);
    objs.push(pdb("default", "int", "w", json!({"minAvailable": 2})));
    objs.push(pdb("default", "pct", "w", json!({"minAvailable": "50%"})));
    objs.push(pdb("default", "maxu", "w", json!({"maxUnavailable": 1})));
    objs.push(pdb(
        "default",
        "maxpct",
        "w",
        json!({"maxUnavailable": "25%"}),
    ));
    let s = seeded(objs);
    let st = |n: &str| {
        let (_, v) = get(
            &s,
            &format!("/apis/policy/v1/namespaces/default/poddisruptionbudgets/{n}"),
            ADMIN,
        );
        let st = &v["status"];
        (
            st["expectedPods"].as_i64().unwrap(),
            st["currentHealthy"].as_i64().unwrap(),
            st["desiredHealthy"].as_i64().unwrap(),
            st["disruptionsAllowed"].as_i64().unwrap(),
        )
    };
    assert_eq!(st("int"), (5, 4, 2, 2));
    // Bare pods have no controller to take a scale from: a percentage or maxUnavailable
    // expects 0 pods, and 0 expected pods allow no disruption (getExpectedScale,
    // updatePdbStatus). The controller-scale cases: pdb_counts_the_replicaset_scale_*.
    assert_eq!(st("pct"), (0, 4, 0, 0));
    assert_eq!(st("maxu"), (0, 4, 0, 0));
    assert_eq!(st("maxpct"), (0, 4, 0, 0));
    let (_, v) = get(
        &s,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/int",
        ADMIN,
    );
    assert_eq!(v["status"]["conditions"][0]["type"], "DisruptionAllowed");
    assert_eq!(v["status"]["conditions"][0]["status"], "True");
    // A terminating pod no longer counts as healthy.
    delete(&s, "/api/v1/namespaces/default/pods/w0", ADMIN, None);
    assert_eq!(st("int"), (5, 3, 2, 1));
    // v1beta1 reads the same objects.
    let (c, l) = get(
        &s,
        "/apis/policy/v1beta1/namespaces/default/poddisruptionbudgets",
        ADMIN,
    );
    assert_eq!(c, 200);
    assert_eq!(l["apiVersion"], "policy/v1beta1");
    assert_eq!(l["items"].as_array().unwrap().len(), 4);
    // More than one PDB matching a pod is refused by the eviction API.
    let (c, _) = post(
        &s,
        "/api/v1/namespaces/default/pods/w4/eviction",
        ADMIN,
        &eviction("w4", "default", "v1", None),
    );
    assert_eq!(c, 500, "four PDBs match: the eviction API refuses");
}

#[test]
fn watch_events_resume_and_filters() {
    let s = seeded(vec![
        node("n1"),
        node("n2"),
        pod("default", "p1", "n1", "a"),
    ]);
    let (_, list) = get(&s, "/api/v1/pods", ADMIN);
    let list_rv = rv(&list);

    let mut w = Watch::open(
        &s,
        "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=5",
        ADMIN,
    );
    assert_eq!(
        w.next_kind(),
        ("ADDED".into(), "p1".into()),
        "initial state without resourceVersion"
    );
    let mut wf = Watch::open(
        &s,
        &format!(
            "/api/v1/pods?watch=1&resourceVersion={list_rv}&fieldSelector=spec.nodeName%3Dn1&timeoutSeconds=5"
        ),
        ADMIN,
    );

    post(
        &s,
        "/api/v1/namespaces/default/pods",
        ADMIN,
        &pod("default", "p2", "n2", "a"),
    );
    assert_eq!(w.next_kind(), ("ADDED".into(), "p2".into()));
    patch(
        &s,
        "/api/v1/namespaces/default/pods/p1",
        ADMIN,
        MP,
        &json!({"metadata": {"labels": {"x": "y"}}}),
    );
    let e = w.next().unwrap();
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(e["object"]["metadata"]["labels"]["x"], "y");
    assert_eq!(e["object"]["kind"], "Pod");
    delete(&s, "/api/v1/namespaces/default/pods/p2", ADMIN, None);
    assert_eq!(
        w.next_kind(),
        ("MODIFIED".into(), "p2".into()),
        "graceful delete is a MODIFIED"
    );
    delete(
        &s,
        "/api/v1/namespaces/default/pods/p2",
        ADMIN,
        Some(&json!({"gracePeriodSeconds": 0})),
    );
    assert_eq!(w.next_kind(), ("DELETED".into(), "p2".into()));
    // The field-selected watch only saw p1.
    assert_eq!(wf.next_kind(), ("MODIFIED".into(), "p1".into()));

    // Resume from a resourceVersion replays history.
    let mut wr = Watch::open(
        &s,
        &format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={list_rv}&timeoutSeconds=1"
        ),
        ADMIN,
    );
    let kinds: Vec<(String, String)> = std::iter::from_fn(|| wr.next())
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("ADDED".into(), "p2".into()),
            ("MODIFIED".into(), "p1".into()),
            ("MODIFIED".into(), "p2".into()),
            ("DELETED".into(), "p2".into())
        ]
    );
    // timeoutSeconds ended that stream (the collect above returned).

    // sendInitialEvents ends the initial list with an annotated BOOKMARK.
    let mut wi = Watch::open(
        &s,
        "/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=2",
        ADMIN,
    );
    assert_eq!(wi.next_kind().0, "ADDED");
    assert_eq!(wi.next_kind().0, "ADDED");
    let b = wi.next().unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // A pod moving onto n1 enters a field-selected watch as ADDED.
    let (_, l) = get(&s, "/api/v1/pods", ADMIN);
    let mut wm = Watch::open(
        &s,
        &format!(
            "/api/v1/watch/pods?resourceVersion={}&fieldSelector=spec.nodeName%3Dn1&timeoutSeconds=5",
            rv(&l)
        ),
        ADMIN,
    );
    let mut p3 = pod("default", "p3", "", "a");
    p3["spec"].as_object_mut().unwrap().remove("nodeName");
    post(&s, "/api/v1/namespaces/default/pods", ADMIN, &p3);
    // Pod specs are immutable but for a few fields: nodeName goes through binding.
    let (c, e) = patch(
        &s,
        "/api/v1/namespaces/default/pods/p3",
        ADMIN,
        MP,
        &json!({"spec": {"nodeName": "n1"}}),
    );
    assert_eq!(c, 422);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("Pod \"p3\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"),
        "{e}"
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p3"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
    let (c, e) = post(
        &s,
        "/api/v1/namespaces/default/pods/p3/binding",
        ADMIN,
        &binding,
    );
    assert_eq!(c, 201, "{e}");
    assert_eq!(wm.next_kind(), ("ADDED".into(), "p3".into()));
    let (c, e) = post(
        &s,
        "/api/v1/namespaces/default/pods/p3/binding",
        ADMIN,
        &binding,
    );
    assert_eq!(c, 409);
    assert_eq!(
        e["message"],
        "Operation cannot be fulfilled on pods/binding \"p3\": pod p3 is already assigned to node \"n1\""
    );
    // The image may change.
    let (c, _) = patch(
        &s,
        "/api/v1/namespaces/default/pods/p3",
        ADMIN,
        SMP,
        &json!({"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}),
    );
    assert_eq!(c, 200);

    // Bad resourceVersion → 400.
    let r = request(
        &s,
        "GET",
        "/api/v1/pods?watch=true&resourceVersion=abc",
        Some(ADMIN),
        "application/json",
        b"",
    );
    assert_eq!(r.code, 400);
}

#[test]
fn node_identity_authorization() {
    let mut mine = pod("default", "mine", "n1", "a");
    mine["metadata"]["labels"]["keep"] = json!("1");
    let s = seeded(vec![
        node("n1"),
        node("n2"),
        mine,
        pod("default", "theirs", "n2", "a"),
        pod("default", "mine2", "n1", "a"),
    ]);
    // Reads (AuthorizeNodeWithSelectors): its own Node only, pods only by its
    // spec.nodeName selector or bound to it.
    let (c, e) = get(&s, "/api/v1/nodes", NODE1);
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "nodes is forbidden: User \"system:node:n1\" cannot list resource \"nodes\" in API group \"\" at the cluster scope: node 'n1' cannot read all nodes, only its own Node object"
    );
    assert_eq!(
        get(&s, "/api/v1/nodes?fieldSelector=metadata.name%3Dn1", NODE1).0,
        200
    );
    assert_eq!(get(&s, "/api/v1/nodes/n1", NODE1).0, 200);
    let (c, e) = get(&s, "/api/v1/nodes/n2", NODE1);
    assert_eq!(c, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .ends_with("node 'n1' cannot read 'n2', only its own Node object")
    );
    assert_eq!(
        get(&s, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", NODE1).0,
        200
    );
    let (c, e) = get(&s, "/api/v1/namespaces/default/pods", NODE1);
    assert_eq!(c, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .ends_with("can only list/watch pods with spec.nodeName field selector")
    );
    assert_eq!(
        get(&s, "/api/v1/namespaces/default/pods/mine", NODE1).0,
        200
    );
    // Another node's pod, or one that does not exist: no relationship, 403 not 404.
    for p in ["theirs", "nope"] {
        let (c, e) = get(&s, &format!("/api/v1/namespaces/default/pods/{p}"), NODE1);
        assert_eq!(c, 403, "{p}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .ends_with("no relationship found between node 'n1' and this object")
        );
    }
    // Own node: cordon via strategic merge patch and status patch are fine.
    let (c, n) = patch(
        &s,
        "/api/v1/nodes/n1",
        NODE1,
        SMP,
        &json!({"spec": {"unschedulable": true}}),
    );
    assert_eq!(c, 200, "{n}");
    assert_eq!(n["spec"]["unschedulable"], true);
    let (c, _) = patch(
        &s,
        "/api/v1/nodes/n1/status",
        NODE1,
        SMP,
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}),
    );
    assert_eq!(c, 200);
    // Taints: 403.
    let (c, e) = patch(
        &s,
        "/api/v1/nodes/n1",
        NODE1,
        MP,
        &json!({"spec": {"taints": null}}),
    );
    assert_eq!(c, 403);
    assert_eq!(e["reason"], "Forbidden");
    assert_eq!(
        e["message"],
        "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints"
    );
    assert_eq!(e["details"], json!({"name": "n1", "kind": "nodes"}));
    // Other node: 403.
    let (c, e) = patch(
        &s,
        "/api/v1/nodes/n2",
        NODE1,
        SMP,
        &json!({"spec": {"unschedulable": true}}),
    );
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
    );
    // Restricted labels: 403.
    let (c, e) = patch(
        &s,
        "/api/v1/nodes/n1",
        NODE1,
        MP,
        &json!({"metadata": {"labels": {"node-role.kubernetes.io/master": ""}}}),
    );
    assert_eq!(c, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("is not allowed to modify labels: node-role.kubernetes.io/master")
    );
    // Delete a node: not granted at all.
    let (c, e) = delete(&s, "/api/v1/nodes/n1", NODE1, None);
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "nodes \"n1\" is forbidden: User \"system:node:n1\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
    );

    // Evictions: own pod yes, another node's pod no.
    let ev = |n: &str| format!("/api/v1/namespaces/default/pods/{n}/eviction");
    let (c, e) = post(
        &s,
        &ev("theirs"),
        NODE1,
        &eviction("theirs", "default", "v1", None),
    );
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "pods \"theirs\" is forbidden: node n1 can only evict pods with spec.nodeName set to itself"
    );
    let (c, _) = post(
        &s,
        &ev("mine"),
        NODE1,
        &eviction("mine", "default", "v1", Some(5)),
    );
    assert_eq!(c, 201);
    // Pod status: own only, no label changes.
    let (c, e) = patch(
        &s,
        "/api/v1/namespaces/default/pods/theirs/status",
        NODE1,
        SMP,
        &json!({"status": {"phase": "Failed"}}),
    );
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "pods \"theirs\" is forbidden: node \"n1\" can only update pod status for pods with spec.nodeName set to itself"
    );
    let (c, _) = patch(
        &s,
        "/api/v1/namespaces/default/pods/mine2/status",
        NODE1,
        SMP,
        &json!({"status": {"phase": "Running"}}),
    );
    assert_eq!(c, 200);
    let (c, _) = patch(
        &s,
        "/api/v1/namespaces/default/pods/mine2/status",
        NODE1,
        MP,
        &json!({"metadata": {"labels": {"x": "y"}}}),
    );
    assert_eq!(c, 403);
    // Pod spec updates are not granted to nodes.
    let (c, e) = patch(
        &s,
        "/api/v1/namespaces/default/pods/mine2",
        NODE1,
        MP,
        &json!({"metadata": {"labels": {"x": "y"}}}),
    );
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "pods \"mine2\" is forbidden: User \"system:node:n1\" cannot patch resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // Deletes: own pods only.
    let (c, e) = delete(
        &s,
        "/api/v1/namespaces/default/pods/theirs",
        NODE1,
        Some(&json!({"gracePeriodSeconds": 0})),
    );
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "pods \"theirs\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself"
    );
    let (c, _) = delete(
        &s,
        "/api/v1/namespaces/default/pods/mine",
        NODE1,
        Some(&json!({"gracePeriodSeconds": 0})),
    );
    assert_eq!(c, 200);
    // Creating pods: mirror pods bound to itself only.
    let mut plain = pod("default", "plain", "n1", "a");
    let (c, e) = post(&s, "/api/v1/namespaces/default/pods", NODE1, &plain);
    assert_eq!(c, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("can only create mirror pods")
    );
    plain["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
    plain["spec"]["nodeName"] = json!("n2");
    let (c, _) = post(&s, "/api/v1/namespaces/default/pods", NODE1, &plain);
    assert_eq!(c, 403);
    let (_, n1) = get(&s, "/api/v1/nodes/n1", ADMIN);
    plain["spec"]["nodeName"] = json!("n1");
    plain["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node", "name": "n1",
        "uid": n1["metadata"]["uid"], "controller": true}]);
    let (c, e) = post(&s, "/api/v1/namespaces/default/pods", NODE1, &plain);
    assert_eq!(c, 201, "{e}");
    // Other resources: forbidden.
    let (c, e) = get(&s, "/apis/apps/v1/namespaces/default/daemonsets/x", NODE1);
    assert_eq!(c, 403);
    assert_eq!(
        e["details"],
        json!({"name": "x", "group": "apps", "kind": "daemonsets"})
    );
    // Own lease in kube-node-lease only.
    let (c, _) = post(
        &s,
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        NODE1,
        &json!({"metadata": {"name": "n1"}}),
    );
    assert_eq!(c, 201);
    let (c, _) = put(
        &s,
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2",
        NODE1,
        &json!({"metadata": {"name": "n2"}}),
    );
    assert_eq!(c, 403);
}

#[test]
fn rbac_allow_and_deny() {
    let s = seeded(vec![
        node("n1"),
        pod("default", "p", "n1", "a"),
        pod("other", "q", "n1", "a"),
    ]);
    let (c, e) = get(&s, "/api/v1/pods", BOB);
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
    );
    post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        ADMIN,
        &json!({
        "metadata": {"name": "drainer"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"], "resourceNames": ["n1"]},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
    );
    let (c, _) = post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        ADMIN,
        &json!({
        "metadata": {"name": "devs-drain"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "drainer"},
        "subjects": [{"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}]}),
    );
    assert_eq!(c, 201);
    assert_eq!(get(&s, "/api/v1/pods", BOB).0, 200);
    let (c, _) = post(
        &s,
        "/api/v1/namespaces/default/pods/p/eviction",
        BOB,
        &eviction("p", "default", "v1", None),
    );
    assert_eq!(c, 201);
    let (c, e) = delete(&s, "/api/v1/namespaces/other/pods/q", BOB, None);
    assert_eq!(c, 403);
    assert_eq!(
        e["message"],
        "pods \"q\" is forbidden: User \"bob\" cannot delete resource \"pods\" in API group \"\" in the namespace \"other\""
    );
    assert_eq!(
        patch(
            &s,
            "/api/v1/nodes/n1",
            BOB,
            SMP,
            &json!({"spec": {"unschedulable": true}})
        )
        .0,
        200
    );
    assert_eq!(patch(&s, "/api/v1/nodes/n2", BOB, SMP, &json!({})).0, 403);
    let (c, e) = patch(
        &s,
        "/api/v1/namespaces/default/pods/p/status",
        BOB,
        SMP,
        &json!({}),
    );
    assert_eq!(c, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("cannot patch resource \"pods/status\"")
    );
    // Namespaced RoleBinding to a Role, for a User subject.
    post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/other/roles",
        ADMIN,
        &json!({
        "metadata": {"name": "deleter"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]}),
    );
    post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/other/rolebindings",
        ADMIN,
        &json!({
        "metadata": {"name": "bob-deleter"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deleter"},
        "subjects": [{"kind": "User", "name": "bob"}]}),
    );
    assert_eq!(
        delete(&s, "/api/v1/namespaces/other/pods/q", BOB, None).0,
        200
    );
    assert_eq!(
        delete(&s, "/api/v1/namespaces/default/pods/p", BOB, None).0,
        403
    );
    // Nodes can be granted more through RBAC too, and admins are unaffected.
    assert_eq!(
        get(&s, "/apis/rbac.authorization.k8s.io/v1/clusterroles", BOB).0,
        403
    );
    assert_eq!(
        get(&s, "/apis/rbac.authorization.k8s.io/v1/clusterroles", ADMIN).0,
        200
    );
}

#[test]
fn seed_errors_and_no_auth_mode() {
    let s = start(Opts {
        tokens: false,
        seed: Some(json!([node("n1")])),
        ..Opts::default()
    });
    let r = request(&s, "GET", "/api/v1/nodes/n1", None, "application/json", b"");
    assert_eq!(r.code, 200, "without --token-auth-file everyone is admin");
    let dir = TempDir::new("badseed");
    let bad = dir.write(
        "seed.json",
        r#"[{"apiVersion":"v9","kind":"Nope","metadata":{"name":"x"}}]"#,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .arg("--seed")
        .arg(bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported apiVersion/kind"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "non-loopback listen is refused");
}

#[test]
fn fault_file_and_port_file() {
    let dir = TempDir::new("fault");
    let fault = dir.path("fault");
    let portf = dir.path("port");
    let extra = [
        "--fault-file",
        fault.to_str().unwrap(),
        "--port-file",
        portf.to_str().unwrap(),
        "--latency-ms",
        "30",
    ];
    let s = start(Opts {
        extra: &extra,
        ..Opts::default()
    });
    assert_eq!(
        std::fs::read_to_string(&portf).unwrap().trim(),
        s.port.to_string()
    );
    let t = std::time::Instant::now();
    assert_eq!(get(&s, "/api/v1/nodes", ADMIN).0, 200);
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(30),
        "latency applied"
    );
    std::fs::write(&fault, "forbidden\n").unwrap();
    let (c, e) = get(&s, "/api/v1/nodes", ADMIN);
    assert_eq!((c, e["reason"].as_str()), (403, Some("Forbidden")));
    std::fs::write(&fault, "unavailable").unwrap();
    assert_eq!(get(&s, "/api/v1/nodes", ADMIN).0, 503);
    std::fs::write(&fault, "down").unwrap();
    assert!(
        try_request(
            &s,
            "GET",
            "/api/v1/nodes",
            Some(ADMIN),
            "application/json",
            b""
        )
        .is_err()
    );
    std::fs::remove_file(&fault).unwrap();
    assert_eq!(get(&s, "/api/v1/nodes", ADMIN).0, 200);
    // A running watch is cut when the server goes down.
    let mut w = Watch::open(&s, "/api/v1/nodes?watch=true&resourceVersion=0", ADMIN);
    std::fs::write(&fault, "down").unwrap();
    assert!(w.next().is_none());
    std::fs::remove_file(&fault).unwrap();
}

#[test]
fn watch_too_old_resource_version_is_410() {
    let s = start(Opts {
        extra: &["--watch-history", "2"],
        seed: Some(json!([node("n1")])),
        ..Opts::default()
    });
    let (_, n) = get(&s, "/api/v1/nodes/n1", ADMIN);
    let old = rv(&n);
    for i in 0..4 {
        patch(
            &s,
            "/api/v1/nodes/n1",
            ADMIN,
            MP,
            &json!({"metadata": {"labels": {"i": i.to_string()}}}),
        );
    }
    let mut w = Watch::open(
        &s,
        &format!("/api/v1/nodes?watch=true&resourceVersion={old}"),
        ADMIN,
    );
    let e = w.next().unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(w.next().is_none(), "the stream ends after the error");
    // Recent enough: replayed.
    let mut w = Watch::open(
        &s,
        &format!(
            "/api/v1/nodes?watch=true&resourceVersion={}&timeoutSeconds=1",
            old + 3
        ),
        ADMIN,
    );
    assert_eq!(w.next_kind(), ("MODIFIED".into(), "n1".into()));
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

fn lease(name: &str, renew: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renew}})
}

#[test]
fn node_lease_crud_watch_and_conflicts() {
    let s = seeded(vec![node("n1")]);
    let (c, d) = get(&s, "/apis/coordination.k8s.io/v1", ADMIN);
    assert_eq!(c, 200);
    let names: Vec<&str> = d["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["leases"]);
    let mut w = Watch::open(&s, &format!("{LEASES}?watch=1&timeoutSeconds=10"), ADMIN);

    // The kubelet's cycle: create its own lease, then renew it with PUTs carrying the
    // resourceVersion it last saw.
    let (c, l) = post(
        &s,
        LEASES,
        NODE1,
        &lease("n1", "2026-01-01T00:00:00.000000Z"),
    );
    assert_eq!(c, 201, "{l}");
    assert_eq!(w.next_kind(), ("ADDED".into(), "n1".into()));
    let mut renewed = l.clone();
    renewed["spec"]["renewTime"] = json!("2026-01-01T00:00:10.000000Z");
    let (c, l2) = put(&s, &format!("{LEASES}/n1"), NODE1, &renewed);
    assert_eq!(c, 200, "{l2}");
    assert!(rv(&l2) > rv(&l));
    let e = w.next().unwrap();
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(
        e["object"]["spec"]["renewTime"],
        "2026-01-01T00:00:10.000000Z"
    );
    // A second writer with the stale resourceVersion loses with 409.
    let (c, e) = put(&s, &format!("{LEASES}/n1"), NODE1, &renewed);
    assert_eq!(c, 409);
    assert_eq!(e["reason"], "Conflict");
    assert_eq!(
        e["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"n1\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (c, l3) = patch(
        &s,
        &format!("{LEASES}/n1"),
        NODE1,
        MP,
        &json!({"spec": {"renewTime": "2026-01-01T00:00:20.000000Z"}}),
    );
    assert_eq!(c, 200);
    assert_eq!(l3["spec"]["holderIdentity"], "n1");
    let (c, g) = get(&s, &format!("{LEASES}/n1"), NODE1);
    assert_eq!(
        (c, &g["spec"]["renewTime"]),
        (200, &json!("2026-01-01T00:00:20.000000Z"))
    );
    let (c, e) = patch(
        &s,
        &format!("{LEASES}/n1"),
        NODE1,
        MP,
        &json!({"spec": {"leaseDurationSeconds": 0}}),
    );
    assert_eq!(c, 422);
    assert_eq!(
        e["message"],
        "Lease.coordination.k8s.io \"n1\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
    );
    let (c, list) = get(&s, LEASES, ADMIN);
    assert_eq!(c, 200);
    assert_eq!(list["kind"], "LeaseList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[test]
fn node_lease_authorization_as_node_authorizer_and_noderestriction() {
    let s = seeded(vec![
        node("n1"),
        node("n2"),
        lease("n2", "2026-01-01T00:00:00.000000Z"),
    ]);
    let deny = |c: u16, e: &Value, want: &str| {
        assert_eq!(c, 403, "{e}");
        assert_eq!(e["message"], want);
    };
    // Authorizer: another node's lease, by name.
    let (c, e) = get(&s, &format!("{LEASES}/n2"), NODE1);
    deny(
        c,
        &e,
        "leases.coordination.k8s.io \"n2\" is forbidden: User \"system:node:n1\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\": can only access node lease with the same name as the requesting node",
    );
    let (c, e) = patch(&s, &format!("{LEASES}/n2"), NODE1, MP, &json!({}));
    assert_eq!(c, 403, "{e}");
    // No list or watch for nodes.
    let (c, e) = get(&s, LEASES, NODE1);
    deny(
        c,
        &e,
        "leases.coordination.k8s.io is forbidden: User \"system:node:n1\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\": can only get, create, update, patch, or delete a node lease",
    );
    let (c, _) = get(&s, &format!("{LEASES}?watch=1"), NODE1);
    assert_eq!(c, 403);
    // Only kube-node-lease.
    let (c, e) = post(
        &s,
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        NODE1,
        &json!({"metadata": {"name": "n1"}}),
    );
    assert_eq!(c, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .ends_with("can only access leases in the \"kube-node-lease\" system namespace"),
        "{e}"
    );
    // Create passes the authorizer whatever the name; NodeRestriction checks the object.
    let (c, e) = post(
        &s,
        LEASES,
        NODE1,
        &lease("n3", "2026-01-01T00:00:00.000000Z"),
    );
    deny(
        c,
        &e,
        "leases.coordination.k8s.io \"n3\" is forbidden: can only access node lease with the same name as the requesting node",
    );
    // NodeRestriction also holds when RBAC grants the node more.
    post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        ADMIN,
        &json!({"metadata": {"name": "lease-admin"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]}]}),
    );
    post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        ADMIN,
        &json!({"metadata": {"name": "n1-leases"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "lease-admin"},
            "subjects": [{"kind": "User", "name": "system:node:n1"}]}),
    );
    assert_eq!(get(&s, LEASES, NODE1).0, 200, "RBAC grants list");
    let (c, e) = delete(&s, &format!("{LEASES}/n2"), NODE1, None);
    deny(
        c,
        &e,
        "leases.coordination.k8s.io \"n2\" is forbidden: can only access node lease with the same name as the requesting node",
    );
    let (c, _) = post(
        &s,
        LEASES,
        NODE1,
        &lease("n1", "2026-01-01T00:00:00.000000Z"),
    );
    assert_eq!(c, 201);
    assert_eq!(delete(&s, &format!("{LEASES}/n1"), NODE1, None).0, 200);

    // Other identities: RBAC only. The agent's grant: get on leases in kube-node-lease.
    let (c, e) = get(&s, &format!("{LEASES}/n2"), BOB);
    deny(
        c,
        &e,
        "leases.coordination.k8s.io \"n2\" is forbidden: User \"bob\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\"",
    );
    post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-node-lease/roles",
        ADMIN,
        &json!({"metadata": {"name": "lease-reader"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}]}),
    );
    post(
        &s,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-node-lease/rolebindings",
        ADMIN,
        &json!({"metadata": {"name": "bob-leases"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease-reader"},
            "subjects": [{"kind": "Group", "name": "devs"}]}),
    );
    assert_eq!(get(&s, &format!("{LEASES}/n2"), BOB).0, 200);
    assert_eq!(get(&s, LEASES, BOB).0, 403);
    assert_eq!(
        patch(&s, &format!("{LEASES}/n2"), BOB, MP, &json!({})).0,
        403
    );
}

fn apf_stats(s: &Server) -> Value {
    let r = request(
        s,
        "GET",
        "/debug/fake-apiserver/apf",
        None,
        "application/json",
        b"",
    );
    assert_eq!(r.code, 200);
    r.json()
}

fn header<'a>(r: &'a Resp, k: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(kk, _)| kk == k)
        .map(|(_, v)| v.as_str())
}

/// Wait until the priority level has `n` requests in flight.
fn wait_inflight(s: &Server, level: &str, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while apf_stats(s)["priorityLevels"][level]["inflight"] != n {
        assert!(std::time::Instant::now() < deadline, "never {n} in flight");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn apf_429_with_retry_after_beyond_the_inflight_limit() {
    let s = start(Opts {
        seed: Some(json!([node("n1")])),
        extra: &["--max-inflight", "2", "--latency-ms", "3000"],
        ..Opts::default()
    });
    let st = apf_stats(&s);
    assert_eq!(
        (st["maxInflight"].as_u64(), st["rejected"].as_u64()),
        (Some(2), Some(0))
    );
    let bob_nodes = || {
        request(
            &s,
            "GET",
            "/api/v1/nodes",
            Some(BOB),
            "application/json",
            b"",
        )
    };
    // Two slow requests of bob's (global-default) hold both seats.
    std::thread::scope(|sc| {
        let busy: Vec<_> = (0..2).map(|_| sc.spawn(|| bob_nodes().code)).collect();
        wait_inflight(&s, "global-default", 2);
        // The third is rejected at once: 429, Retry-After, http.Error's plain text.
        let r = bob_nodes();
        assert_eq!(r.code, 429);
        assert_eq!(header(&r, "retry-after"), Some("1"));
        assert_eq!(
            header(&r, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
        assert_eq!(
            header(&r, "x-kubernetes-pf-prioritylevel-uid"),
            Some("fake-pl-global-default")
        );
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "Too many requests, please try again later.\n"
        );
        // Other priority levels keep their own seats: the kubelet's lease (node-high)
        // and the exempt system:masters are served.
        let r = request(
            &s,
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
            Some(NODE1),
            "application/json",
            b"",
        );
        assert_eq!(r.code, 404, "node-high is not saturated");
        assert_eq!(
            header(&r, "x-kubernetes-pf-flowschema-uid"),
            Some("fake-fs-system-node-high")
        );
        assert_eq!(get(&s, "/api/v1/nodes", ADMIN).0, 200);
        for b in busy {
            // Served (403: bob may not list nodes; authorization runs after APF).
            assert_eq!(b.join().unwrap(), 403);
        }
    });
    let st = apf_stats(&s);
    let gd = &st["priorityLevels"]["global-default"];
    assert_eq!(gd["rejected"], 1);
    assert_eq!(gd["peakInflight"], 2);
    assert_eq!(gd["inflight"], 0);
    assert_eq!(st["rejected"], 1);
    // Seats free again.
    assert_eq!(get(&s, "/api/v1/nodes", BOB).0, 403);
    // reset=true reports, then zeroes the counters.
    assert_eq!(
        request(
            &s,
            "GET",
            "/debug/fake-apiserver/apf?reset=true",
            None,
            "application/json",
            b""
        )
        .json()["rejected"],
        1
    );
    assert_eq!(apf_stats(&s)["rejected"], 0);
}

#[test]
fn apf_queue_wait_and_masters_not_exempt_on_request() {
    let s = start(Opts {
        extra: &[
            "--max-inflight",
            "1",
            "--latency-ms",
            "1500",
            "--apf-queue-wait-ms",
            "20000",
            "--apf-limit-masters",
        ],
        ..Opts::default()
    });
    std::thread::scope(|sc| {
        let first = sc.spawn(|| get(&s, "/api/v1/nodes", ADMIN).0);
        wait_inflight(&s, "global-default", 1);
        // Queued until the first frees its seat, then served.
        assert_eq!(get(&s, "/api/v1/nodes", ADMIN).0, 200);
        assert_eq!(first.join().unwrap(), 200);
    });
    let gd = &apf_stats(&s)["priorityLevels"]["global-default"];
    assert_eq!(
        (gd["served"].as_u64(), gd["rejected"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(gd["peakInflight"], 1);
}

#[test]
fn compaction_expires_old_watches_and_continue_tokens() {
    let s = start(Opts {
        seed: Some(json!([node("n1"), node("n2"), node("n3")])),
        extra: &["--compaction-interval-s", "0.5"],
        ..Opts::default()
    });
    let (_, first) = get(&s, "/api/v1/nodes?limit=1", ADMIN);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let old_rv = rv(&first);
    // Fresh: the token and the resourceVersion still work.
    let (c, _) = get(
        &s,
        &format!("/api/v1/nodes?limit=1&continue={token}"),
        ADMIN,
    );
    assert_eq!(c, 200);
    // A write, then two compaction ticks: the revision of the first list is compacted.
    patch(
        &s,
        "/api/v1/nodes/n1",
        ADMIN,
        MP,
        &json!({"metadata": {"labels": {"x": "1"}}}),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (c, e) = loop {
        let (c, e) = get(
            &s,
            &format!("/api/v1/nodes?limit=1&continue={token}"),
            ADMIN,
        );
        if c != 200 || std::time::Instant::now() > deadline {
            break (c, e);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!((c, &e["reason"]), (410, &json!("Expired")));
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("The provided continue parameter is too old")
    );
    let mut w = Watch::open(
        &s,
        &format!("/api/v1/nodes?watch=1&resourceVersion={old_rv}&timeoutSeconds=5"),
        ADMIN,
    );
    let ev = w.next().unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
}

#[test]
fn admission_defaults_and_unhealthy_pod_eviction_rule() {
    let mut unready = pod("default", "u", "n1", "z");
    unready["status"]["conditions"][0]["status"] = json!("False");
    let s = seeded(vec![
        node("n1"),
        unready,
        pdb("default", "zero", "z", json!({"minAvailable": 0})),
    ]);
    // DefaultTolerationSeconds on API creates.
    let (c, p) = post(
        &s,
        "/api/v1/namespaces/default/pods",
        ADMIN,
        &json!({"metadata": {"name": "t"}, "spec": {"containers": [{"name": "c", "image": "x"}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]}}),
    );
    assert_eq!(c, 201);
    assert_eq!(
        p["spec"]["tolerations"],
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300}])
    );
    // An unready pod under a PDB whose desiredHealthy is 0 is not waved through:
    // disruptionsAllowed is 0, so 429 (eviction.go: `DesiredHealthy > 0`).
    let (c, e) = post(
        &s,
        "/api/v1/namespaces/default/pods/u/eviction",
        ADMIN,
        &eviction("u", "default", "v1", None),
    );
    assert_eq!(c, 429, "{e}");
    assert_eq!(e["reason"], "TooManyRequests");
}

#[test]
fn unsupported_field_selectors_and_node_reads_of_referenced_secrets() {
    let mut p = pod("default", "uses", "n1", "a");
    p["spec"]["volumes"] = json!([{"name": "v", "secret": {"secretName": "mine"}}]);
    let secret = |n: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": n}});
    let s = seeded(vec![node("n1"), p, secret("mine"), secret("other")]);
    let (c, e) = get(&s, "/api/v1/pods?fieldSelector=spec.containers%3Dx", ADMIN);
    assert_eq!(c, 400);
    assert_eq!(e["message"], "field label not supported: spec.containers");
    assert_eq!(
        get(
            &s,
            "/api/v1/nodes?fieldSelector=spec.unschedulable%3Dtrue",
            ADMIN
        )
        .0,
        200
    );
    // A node reads a secret only when one of its pods references it.
    assert_eq!(
        get(&s, "/api/v1/namespaces/default/secrets/mine", NODE1).0,
        200
    );
    let (c, e) = get(&s, "/api/v1/namespaces/default/secrets/other", NODE1);
    assert_eq!(c, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .ends_with("no relationship found between node 'n1' and this object")
    );
    assert_eq!(get(&s, "/api/v1/namespaces/default/secrets", NODE1).0, 403);
}

#[test]
fn watch_sends_a_bookmark_before_its_deadline() {
    let s = seeded(vec![node("n1")]);
    let (_, l) = get(&s, "/api/v1/nodes", ADMIN);
    let mut w = Watch::open(
        &s,
        &format!(
            "/api/v1/nodes?watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds=3",
            rv(&l)
        ),
        ADMIN,
    );
    let events: Vec<Value> = std::iter::from_fn(|| w.next()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "BOOKMARK");
    assert_eq!(
        events[0]["object"]["metadata"]["resourceVersion"],
        l["metadata"]["resourceVersion"]
    );
}
