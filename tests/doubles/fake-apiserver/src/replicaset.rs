//! A minimal ReplicaSet controller (pkg/controller/replicaset/replica_set.go
//! `syncReplicaSet` / `manageReplicas`), plus the garbage collector's background
//! deletion of pods whose controlling ReplicaSet is gone
//! (pkg/controller/garbagecollector).
//!
//! Per ReplicaSet: its pods are those whose controller ownerReference carries its uid;
//! active pods (`controller.FilterActivePods`: not Succeeded/Failed, no
//! deletionTimestamp) are compared with `.spec.replicas` (default 1). Missing ones are
//! created from the template at once (upstream: slow-start batches, at most 500 per
//! sync); extra ones are deleted gracefully, the least valuable first
//! (`controller.ActivePods` ranking: unassigned, then Pending before Running, then not
//! ready, then newest). An evicted or deleted pod is terminating, hence no longer
//! active, so its replacement is created right away, as upstream. Status:
//! replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (minReadySeconds 0),
//! observedGeneration.
//! Left out: adoption and release of orphans by selector, minReadySeconds, expectations.

use crate::auth::User;
use crate::controllers::{Stats, is_terminal};
use crate::resources::{self, PODS};
use crate::selectors::LabelSelector;
use crate::server;
use crate::store::{State, is_terminating, pod_is_ready};
use crate::util::meta_str;
use serde_json::{Value, json};
use std::collections::HashSet;

const RS: &str = resources::REPLICASETS;

fn controller_uid(pod: &Value) -> Option<(&str, &str)> {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|o| {
            (
                o.get("kind").and_then(Value::as_str).unwrap_or(""),
                o.get("uid").and_then(Value::as_str).unwrap_or(""),
            )
        })
}

fn active(pod: &Value) -> bool {
    !is_terminal(pod) && !is_terminating(pod)
}

/// Deletion order: lower sorts first (is deleted first).
fn rank(pod: &Value) -> (bool, u8, bool, std::cmp::Reverse<String>) {
    let assigned = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.pointer("/status/phase").and_then(Value::as_str) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    (
        assigned,
        phase,
        pod_is_ready(pod),
        std::cmp::Reverse(meta_str(pod, "creationTimestamp").to_string()),
    )
}

fn new_pod(rs: &Value) -> Value {
    let tmpl = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut md = tmpl.get("metadata").cloned().unwrap_or(json!({}));
    if !md.is_object() {
        md = json!({});
    }
    md["generateName"] = json!(format!("{}-", meta_str(rs, "name")));
    md["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": meta_str(rs, "name"),
        "uid": meta_str(rs, "uid"), "controller": true, "blockOwnerDeletion": true,
    }]);
    if let Some(m) = md.as_object_mut() {
        m.remove("name");
        m.remove("namespace");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": md,
        "spec": tmpl.get("spec").cloned().unwrap_or(json!({}))})
}

fn sync_one(st: &mut State, rs: &Value, stats: &mut Stats) {
    let ns = meta_str(rs, "namespace").to_string();
    let uid = meta_str(rs, "uid").to_string();
    let Some(sel_obj) = rs.pointer("/spec/selector").filter(|s| s.is_object()) else {
        return;
    };
    let sel = LabelSelector::from_object(Some(sel_obj));
    let owned: Vec<Value> = st
        .list(PODS, Some(&ns))
        .into_iter()
        .filter(|p| controller_uid(p) == Some(("ReplicaSet", uid.as_str())))
        .cloned()
        .collect();
    let mut live: Vec<&Value> = owned.iter().filter(|p| active(p)).collect();
    let want = rs
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    let pod_def = resources::storage_def(PODS);
    if live.len() < want && !is_terminating(rs) {
        for _ in live.len()..want {
            if server::create(st, pod_def, &ns, &User::admin(), new_pod(rs), false).is_ok() {
                stats.pods_created += 1;
            }
        }
    } else if live.len() > want {
        live.sort_by_key(|p| rank(p));
        for p in &live[..live.len() - want] {
            server::delete_pod(st, pod_def, (*p).clone(), None);
            stats.pods_deleted += 1;
        }
    }
    // Status from the pods as they are now.
    let now: Vec<Value> = st
        .list(PODS, Some(&ns))
        .into_iter()
        .filter(|p| controller_uid(p) == Some(("ReplicaSet", uid.as_str())) && active(p))
        .cloned()
        .collect();
    let ready = now.iter().filter(|p| pod_is_ready(p)).count();
    let labeled = now.iter().filter(|p| sel.matches(p)).count();
    let mut new = rs.clone();
    new["status"] = json!({
        "replicas": now.len(),
        "fullyLabeledReplicas": labeled,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    if new != *rs {
        st.replace(RS, new);
    }
}

/// One pass over every ReplicaSet, then the garbage collection of orphaned pods.
pub fn tick(st: &mut State, stats: &mut Stats) {
    let all: Vec<Value> = st.list(RS, None).into_iter().cloned().collect();
    for rs in &all {
        sync_one(st, rs, stats);
    }
    let uids: HashSet<String> = all.iter().map(|r| meta_str(r, "uid").to_string()).collect();
    let orphans: Vec<Value> = st
        .list(PODS, None)
        .into_iter()
        .filter(|p| {
            !is_terminating(p)
                && matches!(controller_uid(p), Some(("ReplicaSet", u)) if !uids.contains(u))
        })
        .cloned()
        .collect();
    let pod_def = resources::storage_def(PODS);
    for p in orphans {
        server::delete_pod(st, pod_def, p, None);
        stats.pods_deleted += 1;
    }
}
