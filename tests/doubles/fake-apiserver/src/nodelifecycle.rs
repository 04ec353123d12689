//! The node lifecycle controller's health monitoring
//! (pkg/controller/nodelifecycle/node_lifecycle_controller.go `tryUpdateNodeHealth`,
//! `doNoScheduleTaintingPass`, `doNoExecuteTaintingPass`).
//!
//! A node's probe time is when this controller last *observed* a change: a new Ready
//! `lastHeartbeatTime`, or a Lease `kube-node-lease/<node>` with a later `renewTime`
//! (its own clock, not the timestamps' values). First sight of a node with a Ready
//! condition counts as a probe; a node that never posted Ready starts at its
//! creationTimestamp with the startup grace period. When now > probe + grace, Ready,
//! MemoryPressure, DiskPressure and PIDPressure become Unknown ("NodeStatusUnknown",
//! "Kubelet stopped posting node status."; missing ones "NodeStatusNeverUpdated").
//!
//! Taints follow the conditions every tick: Ready False/Unknown →
//! `node.kubernetes.io/not-ready` / `unreachable` with NoSchedule and NoExecute (the
//! latter with timeAdded); pressure conditions → their NoSchedule taints;
//! `spec.unschedulable` → `node.kubernetes.io/unschedulable:NoSchedule`. They are removed
//! when the condition clears (the kubelet posting Ready=True again).
//!
//! Taint eviction (pkg/controller/tainteviction/taint_eviction.go): a pod bound to a node
//! with a NoExecute taint it does not tolerate is deleted (gracefully, after a
//! `DisruptionTarget` condition with reason `DeletionByTaintManager`); one tolerating it
//! for `tolerationSeconds` is deleted once `timeAdded + tolerationSeconds` has passed (the
//! shortest of its matching tolerations); one tolerating it without a limit stays. Terminal
//! and terminating pods are left alone.
//! Left out: zone-based rate limiting of evictions.

use crate::auth::NODE_LEASE_NS;
use crate::controllers::{Stats, is_terminal, set_condition};
use crate::resources::{self, LEASES, NODES, PODS};
use crate::scheduler::tolerates;
use crate::server;
use crate::store::{State, is_terminating};
use crate::util::{meta_str, parse_rfc3339, rfc3339};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

struct Health {
    heartbeat: String,
    renew: String,
    probe_ms: i64,
}

/// The controller's memory of each node.
pub struct NodeLifecycle {
    grace_ms: i64,
    startup_grace_ms: i64,
    health: HashMap<String, Health>,
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
}

fn condition_status<'a>(node: &'a Value, ty: &str) -> &'a str {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .and_then(|c| c.get("status").and_then(Value::as_str))
        .unwrap_or("")
}

/// The taints the controller wants for the node's current conditions.
fn wanted_taints(node: &Value) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    match condition_status(node, "Ready") {
        "False" => {
            v.push(("node.kubernetes.io/not-ready", "NoSchedule"));
            v.push(("node.kubernetes.io/not-ready", "NoExecute"));
        }
        "Unknown" => {
            v.push(("node.kubernetes.io/unreachable", "NoSchedule"));
            v.push(("node.kubernetes.io/unreachable", "NoExecute"));
        }
        _ => {}
    }
    for (cond, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if condition_status(node, cond) == "True" {
            v.push((key, "NoSchedule"));
        }
    }
    if node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        v.push(("node.kubernetes.io/unschedulable", "NoSchedule"));
    }
    v
}

/// Taint keys this controller owns (others, e.g. an operator's, are left alone).
fn managed(key: &str) -> bool {
    matches!(
        key,
        "node.kubernetes.io/not-ready"
            | "node.kubernetes.io/unreachable"
            | "node.kubernetes.io/memory-pressure"
            | "node.kubernetes.io/disk-pressure"
            | "node.kubernetes.io/pid-pressure"
            | "node.kubernetes.io/network-unavailable"
            | "node.kubernetes.io/unschedulable"
    )
}

fn sync_taints(node: &mut Value, now_ms: i64) -> bool {
    let wanted = wanted_taints(node);
    let old: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let key_eff = |t: &Value| {
        (
            t.get("key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            t.get("effect")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    };
    let mut new: Vec<Value> = old
        .iter()
        .filter(|t| {
            let (k, e) = key_eff(t);
            !managed(&k) || wanted.iter().any(|(wk, we)| *wk == k && *we == e)
        })
        .cloned()
        .collect();
    for (k, e) in &wanted {
        if !new
            .iter()
            .any(|t| key_eff(t) == (k.to_string(), e.to_string()))
        {
            let mut t = json!({"key": k, "effect": e});
            if *e == "NoExecute" {
                t["timeAdded"] = json!(rfc3339(now_ms / 1000));
            }
            new.push(t);
        }
    }
    if new == old {
        return false;
    }
    if new.is_empty() {
        if let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("taints");
        }
    } else {
        node["spec"]["taints"] = Value::Array(new);
    }
    true
}

impl NodeLifecycle {
    /// A controller with the given grace periods and no observations yet.
    pub fn new(grace: Duration, startup_grace: Duration) -> Self {
        NodeLifecycle {
            grace_ms: grace.as_millis() as i64,
            startup_grace_ms: startup_grace.as_millis() as i64,
            health: HashMap::new(),
        }
    }

    /// Monitor every node once at wall-clock `now_ms`.
    pub fn tick(&mut self, st: &mut State, now_ms: i64, stats: &mut Stats) {
        let nodes: Vec<Value> = st.list(NODES, None).into_iter().cloned().collect();
        self.health
            .retain(|n, _| nodes.iter().any(|o| meta_str(o, "name") == n));
        for node in nodes {
            let name = meta_str(&node, "name").to_string();
            let ready = ready_condition(&node);
            let heartbeat = ready
                .and_then(|c| c.get("lastHeartbeatTime"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let renew = st
                .get(LEASES, NODE_LEASE_NS, &name)
                .and_then(|l| l.pointer("/spec/renewTime"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let created_ms = parse_rfc3339(meta_str(&node, "creationTimestamp"))
                .map(|s| s * 1000)
                .unwrap_or(now_ms);
            let h = self.health.entry(name).or_insert_with(|| Health {
                heartbeat: heartbeat.clone(),
                renew: String::new(),
                probe_ms: if ready.is_some() { now_ms } else { created_ms },
            });
            if h.heartbeat != heartbeat {
                h.heartbeat = heartbeat;
                h.probe_ms = now_ms;
            }
            // A later renewTime (RFC 3339 with fixed precision compares as text).
            if !renew.is_empty() && (h.renew.is_empty() || renew > h.renew) {
                h.renew = renew;
                h.probe_ms = now_ms;
            }
            let grace = if ready.is_some() {
                self.grace_ms
            } else {
                self.startup_grace_ms
            };
            let mut new = node.clone();
            let now = rfc3339(now_ms / 1000);
            if now_ms > h.probe_ms + grace {
                let was_unknown = condition_status(&node, "Ready") == "Unknown";
                for ty in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                    let exists = node
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
                        .cloned();
                    let cond = match exists {
                        Some(mut c) if c["status"] != "Unknown" => {
                            c["status"] = json!("Unknown");
                            c["reason"] = json!("NodeStatusUnknown");
                            c["message"] = json!("Kubelet stopped posting node status.");
                            c
                        }
                        Some(_) => continue,
                        None => json!({"type": ty, "status": "Unknown",
                            "reason": "NodeStatusNeverUpdated",
                            "message": "Kubelet never posted node status.",
                            "lastHeartbeatTime": meta_str(&node, "creationTimestamp")}),
                    };
                    set_condition(&mut new, cond, &now);
                }
                if !was_unknown {
                    stats.nodes_marked_unknown += 1;
                }
            }
            sync_taints(&mut new, now_ms);
            if new != node {
                st.replace(NODES, new);
            }
        }
        taint_eviction(st, now_ms, stats);
    }
}

/// When a pod on a NoExecute-tainted node must go: `Some(0)` now, `Some(t)` at unix ms
/// `t`, `None` never (tolerated without a limit).
fn eviction_due(pod: &Value, taints: &[Value]) -> Option<i64> {
    let mut due: Option<i64> = None;
    for t in taints {
        let added = t
            .get("timeAdded")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339)
            .map(|s| s * 1000)
            .unwrap_or(0);
        let tols: Vec<&Value> = pod
            .pointer("/spec/tolerations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|tol| tolerates(&json!({"spec": {"tolerations": [tol]}}), t))
            .collect();
        let this = if tols.is_empty() {
            Some(0)
        } else if tols
            .iter()
            .any(|tol| tol.get("tolerationSeconds").is_none())
        {
            None
        } else {
            tols.iter()
                .filter_map(|tol| tol.get("tolerationSeconds").and_then(Value::as_i64))
                .min()
                .map(|secs| added + secs.max(0) * 1000)
        };
        due = match (due, this) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    due
}

fn taint_eviction(st: &mut State, now_ms: i64, stats: &mut Stats) {
    let tainted: HashMap<String, Vec<Value>> = st
        .list(NODES, None)
        .into_iter()
        .filter_map(|n| {
            let ts: Vec<Value> = n
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| t.get("effect").and_then(Value::as_str) == Some("NoExecute"))
                .cloned()
                .collect();
            (!ts.is_empty()).then(|| (meta_str(n, "name").to_string(), ts))
        })
        .collect();
    if tainted.is_empty() {
        return;
    }
    let doomed: Vec<Value> = st
        .list(PODS, None)
        .into_iter()
        .filter(|p| !is_terminal(p) && !is_terminating(p))
        .filter(|p| {
            let node = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            tainted
                .get(node)
                .and_then(|ts| eviction_due(p, ts))
                .is_some_and(|due| due <= now_ms)
        })
        .cloned()
        .collect();
    let def = resources::storage_def(PODS);
    for mut pod in doomed {
        set_condition(
            &mut pod,
            json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint"}),
            &rfc3339(now_ms / 1000),
        );
        let pod = st.replace(PODS, pod);
        server::delete_pod(st, def, pod, None);
        stats.pods_deleted += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_due_by_tolerations() {
        let taints = [
            json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
            "timeAdded": "2026-01-01T00:00:00Z"}),
        ];
        let t0 = parse_rfc3339("2026-01-01T00:00:00Z").unwrap() * 1000;
        let pod = |tols: Value| json!({"spec": {"tolerations": tols}});
        assert_eq!(eviction_due(&pod(json!([])), &taints), Some(0));
        assert_eq!(
            eviction_due(
                &pod(
                    json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": 300}])
                ),
                &taints
            ),
            Some(t0 + 300_000)
        );
        assert_eq!(
            eviction_due(&pod(json!([{"operator": "Exists"}])), &taints),
            None
        );
    }

    #[test]
    fn taints_follow_conditions_and_keep_foreign_ones() {
        let mut n = json!({"spec": {"unschedulable": true,
            "taints": [{"key": "example.com/x", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        assert!(sync_taints(&mut n, 1_000_000));
        let keys: Vec<(&str, &str)> = n["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["key"].as_str().unwrap(), t["effect"].as_str().unwrap()))
            .collect();
        assert_eq!(
            keys,
            [
                ("example.com/x", "NoSchedule"),
                ("node.kubernetes.io/unreachable", "NoSchedule"),
                ("node.kubernetes.io/unreachable", "NoExecute"),
                ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ]
        );
        assert!(!sync_taints(&mut n, 2_000_000), "stable");
        n["status"]["conditions"][0]["status"] = json!("True");
        n["spec"]["unschedulable"] = json!(false);
        assert!(sync_taints(&mut n, 3_000_000));
        assert_eq!(n["spec"]["taints"].as_array().unwrap().len(), 1);
    }
}
