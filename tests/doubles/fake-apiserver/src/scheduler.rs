//! A minimal kube-scheduler: binds Pending pods (no `spec.nodeName`, schedulerName
//! default-scheduler) to a feasible node, re-trying unschedulable ones every tick.
//!
//! Filters, as the default plugins do them:
//! * NodeUnschedulable (pkg/scheduler/framework/plugins/nodeunschedulable): a cordoned
//!   node only takes pods tolerating `node.kubernetes.io/unschedulable:NoSchedule`;
//! * TaintToleration (.../plugins/tainttoleration): every NoSchedule/NoExecute taint must
//!   be tolerated (`v1helper.TolerationsTolerateTaint`);
//! * NodeAffinity, `spec.nodeSelector` only (.../plugins/nodeaffinity);
//! * NodeResourcesFit (.../plugins/noderesources/fit.go `fitsRequest`): pod count + 1 ≤
//!   allocatable pods; cpu and memory requests ≤ allocatable − the requests of the
//!   node's pods (terminating ones included, terminal ones not);
//! * readiness: upstream filters not-ready nodes through the
//!   `node.kubernetes.io/not-ready|unreachable:NoSchedule` taints that the node lifecycle
//!   controller keeps in sync with Ready; here a node whose Ready condition is not True
//!   is filtered directly with that taint's message, so this also holds without
//!   `--controllers nodelifecycle`.
//!
//! Score: NodeResourcesFit's default LeastAllocated (cpu and memory, weight 1, with the
//! non-zero defaults 100m / 200Mi for containers without requests); ties go to the
//! first node by name (upstream picks at random among the best).

use crate::controllers::{Stats, is_terminal, milli, set_condition};
use crate::resources::{NODES, PODS};
use crate::store::{State, is_terminating};
use crate::util::{meta_str, now_rfc3339};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const DEFAULT_MILLI_CPU: i128 = 100;
const DEFAULT_MEMORY_MILLI: i128 = 200 * 1024 * 1024 * 1000;

/// (cpu, memory) requests in milli-units: max(sum of containers, each init container)
/// plus overhead (resource helpers `PodRequests`). Limits stand in for missing requests
/// (API defaulting copies them). `non_zero` applies the scoring defaults.
pub fn pod_requests(pod: &Value, non_zero: bool) -> (i128, i128) {
    let get = |c: &Value, r: &str| {
        c.pointer(&format!("/resources/requests/{r}"))
            .or_else(|| c.pointer(&format!("/resources/limits/{r}")))
            .and_then(milli)
    };
    let list = |k: &str| {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in list("containers") {
        let (c_cpu, c_mem) = (get(&c, "cpu"), get(&c, "memory"));
        cpu += c_cpu.unwrap_or(if non_zero { DEFAULT_MILLI_CPU } else { 0 });
        mem += c_mem.unwrap_or(if non_zero { DEFAULT_MEMORY_MILLI } else { 0 });
    }
    for c in list("initContainers") {
        cpu = cpu.max(get(&c, "cpu").unwrap_or(0));
        mem = mem.max(get(&c, "memory").unwrap_or(0));
    }
    let over = |r: &str| {
        pod.pointer(&format!("/spec/overhead/{r}"))
            .and_then(milli)
            .unwrap_or(0)
    };
    (cpu + over("cpu"), mem + over("memory"))
}

fn allocatable(node: &Value, r: &str) -> i128 {
    node.pointer(&format!("/status/allocatable/{r}"))
        .and_then(milli)
        .unwrap_or(0)
}

/// `ToleratesTaint`: effect (empty tolerates all), key (empty + Exists tolerates all),
/// operator Exists or Equal (default) with the value.
pub fn tolerates(pod: &Value, taint: &Value) -> bool {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .is_some_and(|ts| {
            ts.iter().any(|t| {
                let effect = s(t, "effect");
                if !effect.is_empty() && effect != s(taint, "effect") {
                    return false;
                }
                let key = s(t, "key");
                if !key.is_empty() && key != s(taint, "key") {
                    return false;
                }
                match s(t, "operator").as_str() {
                    "Exists" => true,
                    "" | "Equal" => s(t, "value") == s(taint, "value"),
                    _ => false,
                }
            })
        })
}

fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The node's usage as the scheduler cache sees it: pods bound to it, not terminal.
#[derive(Default, Clone, Copy)]
struct Usage {
    pods: i128,
    cpu: i128,
    mem: i128,
    score_cpu: i128,
    score_mem: i128,
}

fn usage(st: &State) -> BTreeMap<String, Usage> {
    let mut m: BTreeMap<String, Usage> = BTreeMap::new();
    for p in st.list(PODS, None) {
        let node = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() || is_terminal(p) {
            continue;
        }
        let (cpu, mem) = pod_requests(p, false);
        let (scpu, smem) = pod_requests(p, true);
        let u = m.entry(node.to_string()).or_default();
        u.pods += 1;
        u.cpu += cpu;
        u.mem += mem;
        u.score_cpu += scpu;
        u.score_mem += smem;
    }
    m
}

/// Why `node` cannot take `pod` (the plugin's reason string), or None when it fits.
fn filter(pod: &Value, node: &Value, u: Usage) -> Option<String> {
    let unschedulable = node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cordon = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
    if unschedulable && !tolerates(pod, &cordon) {
        return Some("node(s) were unschedulable".into());
    }
    let not_ready = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
    if !is_ready(node) && !tolerates(pod, &not_ready) {
        return Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
    }
    for t in node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
        if matches!(effect, "NoSchedule" | "NoExecute") && !tolerates(pod, t) {
            let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("");
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                s("key"),
                s("value")
            ));
        }
    }
    if let Some(sel) = pod.pointer("/spec/nodeSelector").and_then(Value::as_object) {
        let labels = node.pointer("/metadata/labels");
        if sel
            .iter()
            .any(|(k, v)| labels.and_then(|l| l.get(k)) != Some(v))
        {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    if u.pods + 1 > allocatable(node, "pods") / 1000 {
        return Some("Too many pods".into());
    }
    let (cpu, mem) = pod_requests(pod, false);
    if cpu > 0 && cpu > allocatable(node, "cpu") - u.cpu {
        return Some("Insufficient cpu".into());
    }
    if mem > 0 && mem > allocatable(node, "memory") - u.mem {
        return Some("Insufficient memory".into());
    }
    None
}

/// LeastAllocated: mean over cpu and memory of free fraction × 100 after placing the pod.
fn score(pod: &Value, node: &Value, u: Usage) -> i128 {
    let (cpu, mem) = pod_requests(pod, true);
    let part = |alloc: i128, used: i128| {
        if alloc <= 0 || used > alloc {
            0
        } else {
            (alloc - used) * 100 / alloc
        }
    };
    (part(allocatable(node, "cpu"), u.score_cpu + cpu)
        + part(allocatable(node, "memory"), u.score_mem + mem))
        / 2
}

fn pending(st: &State) -> Vec<Value> {
    let mut v: Vec<Value> = st
        .list(PODS, None)
        .into_iter()
        .filter(|p| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
                && matches!(
                    p.pointer("/spec/schedulerName").and_then(Value::as_str),
                    None | Some("default-scheduler")
                )
                && !is_terminating(p)
                && !is_terminal(p)
        })
        .cloned()
        .collect();
    // The active queue orders by priority, then by creation time.
    v.sort_by(|a, b| {
        let prio = |p: &Value| {
            p.pointer("/spec/priority")
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        prio(b)
            .cmp(&prio(a))
            .then_with(|| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")))
            .then_with(|| meta_str(a, "name").cmp(meta_str(b, "name")))
    });
    v
}

/// One scheduling pass over every pending pod.
pub fn tick(st: &mut State, stats: &mut Stats) {
    let pods = pending(st);
    if pods.is_empty() {
        return;
    }
    let nodes: Vec<Value> = st.list(NODES, None).into_iter().cloned().collect();
    let mut used = usage(st);
    for mut pod in pods {
        let mut best: Option<(i128, &Value)> = None;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for n in &nodes {
            let u = used.get(meta_str(n, "name")).copied().unwrap_or_default();
            match filter(&pod, n, u) {
                Some(r) => *reasons.entry(r).or_default() += 1,
                None => {
                    let s = score(&pod, n, u);
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, n));
                    }
                }
            }
        }
        let now = now_rfc3339();
        match best {
            Some((_, node)) => {
                let name = meta_str(node, "name").to_string();
                pod["spec"]["nodeName"] = json!(name);
                set_condition(
                    &mut pod,
                    json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null}),
                    &now,
                );
                let (cpu, mem) = pod_requests(&pod, false);
                let (scpu, smem) = pod_requests(&pod, true);
                let u = used.entry(name).or_default();
                u.pods += 1;
                u.cpu += cpu;
                u.mem += mem;
                u.score_cpu += scpu;
                u.score_mem += smem;
                st.replace(PODS, pod);
                stats.bindings += 1;
            }
            None => {
                let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                let msg = format!(
                    "0/{} nodes are available: {}.",
                    nodes.len(),
                    detail.join(", ")
                );
                let changed = set_condition(
                    &mut pod,
                    json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                        "reason": "Unschedulable", "message": msg}),
                    &now,
                );
                if changed {
                    st.replace(PODS, pod);
                    stats.unschedulable += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_with_init_containers_limits_and_defaults() {
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"resources": {"limits": {"cpu": "1"}}},
                {}],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}]}});
        let mi = 1024 * 1024 * 1000;
        assert_eq!(pod_requests(&pod, false), (2000, 64 * mi));
        assert_eq!(pod_requests(&pod, true), (2000, (64 + 2 * 200) * mi));
    }

    #[test]
    fn tolerations() {
        let t = json!({"key": "k", "value": "v", "effect": "NoSchedule"});
        let p = |tol: Value| json!({"spec": {"tolerations": [tol]}});
        assert!(tolerates(&p(json!({"operator": "Exists"})), &t));
        assert!(tolerates(&p(json!({"key": "k", "operator": "Exists"})), &t));
        assert!(tolerates(&p(json!({"key": "k", "value": "v"})), &t));
        assert!(!tolerates(&p(json!({"key": "k", "value": "w"})), &t));
        assert!(!tolerates(
            &p(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
            &t
        ));
        assert!(!tolerates(&json!({"spec": {}}), &t));
    }
}
