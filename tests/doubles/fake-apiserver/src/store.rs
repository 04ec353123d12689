//! In-memory object storage with a global resourceVersion, an event history for
//! watches, and the live PodDisruptionBudget status computation.

use crate::resources::{self, DEPLOYMENTS, PDBS, PODS, REPLICASETS, STATEFULSETS};
use crate::selectors::LabelSelector;
use crate::util::{meta_str, metadata_mut, now_rfc3339};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub kind: EventType,
    pub storage: &'static str,
    pub obj: Value,
    pub old: Option<Value>,
    pub rv: u64,
}

pub type Key = (String, String);

/// All objects, the global resourceVersion and the watch history.
pub struct State {
    pub rv: u64,
    tables: HashMap<&'static str, BTreeMap<Key, Value>>,
    pub history: VecDeque<Arc<Event>>,
    /// Events kept for watch resumption; older resourceVersions get 410 Expired.
    pub history_limit: usize,
    pub tx: broadcast::Sender<Arc<Event>>,
    /// The Node authorizer's AuthorizeNodeWithSelectors behaviour (on by default).
    pub node_selectors: bool,
    /// Revisions at or below this were compacted away (etcd compaction).
    compacted: u64,
    /// The revision recorded at the last compaction tick, compacted at the next one.
    compact_mark: u64,
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

impl State {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(8192);
        State {
            rv: 1000,
            tables: HashMap::new(),
            history: VecDeque::new(),
            history_limit: 20_000,
            tx,
            node_selectors: true,
            compacted: 0,
            compact_mark: 0,
        }
    }

    /// A detached copy for dry runs: same objects, its own (unobserved) event channel.
    pub fn dry_copy(&self) -> State {
        let (tx, _) = broadcast::channel(16);
        State {
            rv: self.rv,
            tables: self.tables.clone(),
            history: VecDeque::new(),
            history_limit: self.history_limit,
            tx,
            node_selectors: self.node_selectors,
            compacted: self.compacted,
            compact_mark: self.compact_mark,
        }
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.history
            .front()
            .map(|e| e.rv - 1)
            .unwrap_or(self.rv)
            .max(self.compacted)
    }

    /// The last compacted revision: continue tokens and watches from before it get 410.
    pub fn compacted_rv(&self) -> u64 {
        self.compacted
    }

    /// One tick of kube-apiserver's compactor (`--etcd-compaction-interval`, 5 min):
    /// compact to the revision seen at the previous tick, remember the current one
    /// (staging/src/k8s.io/apiserver/pkg/storage/etcd3/compact.go).
    pub fn compact(&mut self) {
        self.compacted = self.compacted.max(self.compact_mark);
        self.compact_mark = self.rv;
        let c = self.compacted;
        while self.history.front().is_some_and(|e| e.rv <= c) {
            self.history.pop_front();
        }
    }

    pub fn get(&self, storage: &str, ns: &str, name: &str) -> Option<&Value> {
        self.tables
            .get(storage)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a table, optionally restricted to one namespace, sorted by (ns, name).
    pub fn list(&self, storage: &str, ns: Option<&str>) -> Vec<&Value> {
        let Some(t) = self.tables.get(storage) else {
            return vec![];
        };
        match ns {
            Some(ns) => t
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v)
                .collect(),
            None => t.values().collect(),
        }
    }

    fn emit(&mut self, kind: EventType, storage: &'static str, obj: Value, old: Option<Value>) {
        let ev = Arc::new(Event {
            kind,
            storage,
            obj,
            old,
            rv: self.rv,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit.max(1) {
            self.history.pop_front();
        }
        let _ = self.tx.send(ev);
    }

    fn key_of(obj: &Value) -> Key {
        (
            meta_str(obj, "namespace").to_string(),
            meta_str(obj, "name").to_string(),
        )
    }

    /// Store a new object (metadata already prepared); assigns resourceVersion.
    pub fn insert(&mut self, storage: &'static str, mut obj: Value) -> Value {
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let key = Self::key_of(&obj);
        self.tables
            .entry(storage)
            .or_default()
            .insert(key, obj.clone());
        self.emit(EventType::Added, storage, obj.clone(), None);
        if storage == PODS || storage == PDBS {
            let ns = meta_str(&obj, "namespace").to_string();
            self.recompute_pdbs(&ns);
            if storage == PDBS {
                return self
                    .get(storage, &ns, meta_str(&obj, "name"))
                    .cloned()
                    .unwrap_or(obj);
            }
        }
        obj
    }

    /// Replace an existing object; a no-op write keeps the resourceVersion and emits nothing.
    pub fn replace(&mut self, storage: &'static str, mut obj: Value) -> Value {
        let key = Self::key_of(&obj);
        let old = self.tables.get(storage).and_then(|t| t.get(&key)).cloned();
        if let Some(o) = &old {
            let mut cmp = obj.clone();
            metadata_mut(&mut cmp).insert(
                "resourceVersion".into(),
                json!(meta_str(o, "resourceVersion")),
            );
            if &cmp == o {
                return o.clone();
            }
        }
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.tables
            .entry(storage)
            .or_default()
            .insert(key.clone(), obj.clone());
        self.emit(EventType::Modified, storage, obj.clone(), old);
        if storage == PODS {
            self.recompute_pdbs(&key.0);
        } else if storage == PDBS {
            self.recompute_pdbs(&key.0);
            return self.get(storage, &key.0, &key.1).cloned().unwrap_or(obj);
        }
        obj
    }

    pub fn remove(&mut self, storage: &'static str, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .tables
            .get_mut(storage)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.emit(EventType::Deleted, storage, obj.clone(), None);
        if storage == PODS {
            self.recompute_pdbs(ns);
        }
        Some(obj)
    }

    /// Remove every namespaced object in `ns` (namespace deletion).
    pub fn purge_namespace(&mut self, ns: &str) {
        for def in resources::RESOURCES.iter().filter(|d| d.namespaced) {
            let names: Vec<String> = self
                .list(def.storage, Some(ns))
                .iter()
                .map(|o| meta_str(o, "name").to_string())
                .collect();
            for n in names {
                self.remove(def.storage, ns, &n);
            }
        }
    }

    /// The status the disruption controller writes for `pdb` from its namespace's pods.
    pub fn pdb_status(&self, pdb: &Value) -> Value {
        let ns = meta_str(pdb, "namespace");
        let pods = self.list(PODS, Some(ns));
        pdb_status(pdb, &pods, &|cref| self.controller_scale(ns, cref))
    }

    /// The disruption controller's finders (`getPodReplicaSet`, `getPodDeployment`,
    /// `getPodStatefulSet`, `getScaleController`) over the workloads this store holds:
    /// the controller's uid and `.spec.replicas`; a ReplicaSet owned by a Deployment the
    /// store holds counts as the Deployment. None: no such controller with that uid
    /// (ReplicationControllers and custom scalable resources are not served).
    pub fn controller_scale(&self, ns: &str, cref: &Value) -> Option<(String, i64)> {
        let field = |f: &str| cref.get(f).and_then(Value::as_str).unwrap_or("");
        let group = field("apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
        let storage = match (field("kind"), group) {
            ("ReplicaSet", "apps" | "extensions") => REPLICASETS,
            ("Deployment", "apps" | "extensions") => DEPLOYMENTS,
            ("StatefulSet", "apps") => STATEFULSETS,
            _ => return None,
        };
        let obj = self
            .get(storage, ns, field("name"))
            .filter(|o| meta_str(o, "uid") == field("uid"))?;
        if storage == REPLICASETS
            && let Some(owner) = controller_ref(obj)
            && owner.get("kind").and_then(Value::as_str) == Some("Deployment")
            && let Some(found) = self.controller_scale(ns, owner)
        {
            return Some(found);
        }
        Some((meta_str(obj, "uid").to_string(), replicas(obj)))
    }

    /// Re-run the disruption controller for the PDBs of a namespace.
    pub fn recompute_pdbs(&mut self, ns: &str) {
        let pdbs: Vec<Value> = self.list(PDBS, Some(ns)).into_iter().cloned().collect();
        for pdb in pdbs {
            let mut status = self.pdb_status(&pdb);
            let mut new = pdb.clone();
            // Keep lastTransitionTime when the condition did not change.
            if let (Some(oc), Some(nc)) = (
                pdb.pointer("/status/conditions/0"),
                status.pointer_mut("/conditions/0"),
            ) && oc.get("status") == nc.get("status")
                && oc.get("reason") == nc.get("reason")
            {
                nc["lastTransitionTime"] = oc["lastTransitionTime"].clone();
            }
            if pdb.get("status") == Some(&status) {
                continue;
            }
            new["status"] = status;
            self.rv += 1;
            metadata_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
            let key = Self::key_of(&new);
            self.tables
                .entry(PDBS)
                .or_default()
                .insert(key, new.clone());
            self.emit(EventType::Modified, PDBS, new, Some(pdb));
        }
    }
}

/// Running with condition Ready=True (podutil.IsPodReady).
pub fn pod_is_ready(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Ready")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
}

/// The object has a deletionTimestamp.
pub fn is_terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// Scaled int-or-percent, rounding up (GetScaledValueFromIntOrPercent(.., true)).
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            if let Some(p) = s.strip_suffix('%') {
                let p: i64 = p.trim().parse().ok()?;
                Some((p * total + 99) / 100)
            } else {
                s.parse().ok()
            }
        }
        _ => None,
    }
}

/// The disruption controller's numbers for one PDB.
pub struct PdbMath {
    /// `expectedPods`: the controllers' summed scale, or the pod count for an integer minAvailable.
    pub expected: i64,
    /// `currentHealthy`: matching pods with Ready=True and no deletionTimestamp.
    pub current_healthy: i64,
    /// `desiredHealthy`.
    pub desired_healthy: i64,
    /// `disruptionsAllowed`: 0 unless expected > 0 and healthy exceeds desired.
    pub disruptions_allowed: i64,
}

/// The controller (owner reference with `controller: true`) of an object.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
}

/// `.spec.replicas`, defaulted to 1 as the API server defaults it.
fn replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// `getExpectedScale`: the sum of the scale of the matching pods' controllers, each counted
/// once. Pods without a controller are skipped (upstream: an `UnmanagedPods` event); a
/// controller `scale_of` cannot find is an error (`found no controllers for pod`).
fn expected_scale(
    pods: &[&&Value],
    scale_of: &dyn Fn(&Value) -> Option<(String, i64)>,
) -> Result<i64, String> {
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for pod in pods {
        let Some(cref) = controller_ref(pod) else {
            continue;
        };
        let uid = cref.get("uid").and_then(Value::as_str).unwrap_or("");
        if seen.contains_key(uid) {
            continue;
        }
        let (uid, scale) = scale_of(cref)
            .ok_or_else(|| format!("found no controllers for pod {:?}", meta_str(pod, "name")))?;
        seen.insert(uid, scale);
    }
    Ok(seen.values().sum())
}

/// Compute a PDB's expected, healthy and allowed counts from the namespace's pods
/// (`getExpectedPodCount`, `countHealthyPods`, `updatePdbStatus`); `scale_of` maps a
/// controller reference to its uid and scale. Err: the controller's `failSafe` message.
pub fn pdb_math(
    pdb: &Value,
    pods: &[&Value],
    scale_of: &dyn Fn(&Value) -> Option<(String, i64)>,
) -> Result<PdbMath, String> {
    let sel = LabelSelector::from_object(pdb.pointer("/spec/selector"));
    let matching: Vec<&&Value> = pods.iter().filter(|p| sel.matches(p)).collect();
    let current_healthy = matching
        .iter()
        .filter(|p| !is_terminating(p) && pod_is_ready(p))
        .count() as i64;
    let spec = |f: &str| pdb.pointer(f).filter(|v| !v.is_null());
    let (expected, desired_healthy) = if let Some(mu) = spec("/spec/maxUnavailable") {
        let expected = expected_scale(&matching, scale_of)?;
        let mu =
            scaled(mu, expected).ok_or_else(|| format!("invalid value for IntOrString: {mu}"))?;
        (expected, (expected - mu).max(0))
    } else if let Some(ma) = spec("/spec/minAvailable") {
        if let Some(n) = ma.as_i64() {
            (matching.len() as i64, n)
        } else {
            let expected = expected_scale(&matching, scale_of)?;
            let ma = scaled(ma, expected)
                .ok_or_else(|| format!("invalid value for IntOrString: {ma}"))?;
            (expected, ma)
        }
    } else {
        (0, 0)
    };
    let allowed = current_healthy - desired_healthy;
    Ok(PdbMath {
        expected,
        current_healthy,
        desired_healthy,
        disruptions_allowed: if expected <= 0 || allowed <= 0 {
            0
        } else {
            allowed
        },
    })
}

/// A PDB's `.status` as the disruption controller writes it: `updatePdbStatus`, or on an
/// error `failSafe` (the old counts kept, disruptionsAllowed 0, reason `SyncFailed`).
pub fn pdb_status(
    pdb: &Value,
    pods: &[&Value],
    scale_of: &dyn Fn(&Value) -> Option<(String, i64)>,
) -> Value {
    let generation = pdb
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let m = match pdb_math(pdb, pods, scale_of) {
        Ok(m) => m,
        Err(msg) => return fail_safe(pdb, &msg),
    };
    let ok = m.disruptions_allowed > 0;
    json!({
        "observedGeneration": generation,
        "disruptionsAllowed": m.disruptions_allowed,
        "currentHealthy": m.current_healthy,
        "desiredHealthy": m.desired_healthy,
        "expectedPods": m.expected,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": if ok { "True" } else { "False" },
            "reason": if ok { "SufficientPods" } else { "InsufficientPods" },
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": now_rfc3339(),
        }],
    })
}

/// `failSafe`: keep the last status, allow no disruption, say why.
fn fail_safe(pdb: &Value, msg: &str) -> Value {
    let mut status = pdb.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    for k in ["currentHealthy", "desiredHealthy", "expectedPods"] {
        status
            .as_object_mut()
            .map(|o| o.entry(k).or_insert(json!(0)));
    }
    let observed = status
        .get("observedGeneration")
        .cloned()
        .unwrap_or(json!(0));
    status["disruptionsAllowed"] = json!(0);
    status["conditions"] = json!([{
        "type": "DisruptionAllowed",
        "status": "False",
        "reason": "SyncFailed",
        "message": msg,
        "observedGeneration": observed,
        "lastTransitionTime": now_rfc3339(),
    }]);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod of app `a` owned by ReplicaSet `rs` (uid `rs-uid`) unless `owned` is false.
    fn pod(name: &str, ready: bool, term: bool, owned: bool) -> Value {
        let mut p = json!({"metadata": {"name": name, "labels": {"app": "a"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if term {
            p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
        if owned {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}]);
        }
        p
    }

    /// The ReplicaSet `rs` has `n` replicas; nothing else exists.
    fn rs_of(n: i64) -> impl Fn(&Value) -> Option<(String, i64)> {
        move |c: &Value| (c["uid"] == "rs-uid").then(|| ("rs-uid".to_string(), n))
    }

    fn nums(m: &PdbMath) -> (i64, i64, i64, i64) {
        (
            m.expected,
            m.current_healthy,
            m.desired_healthy,
            m.disruptions_allowed,
        )
    }

    fn math(budget: Value, pods: &[Value], rs: i64) -> Result<(i64, i64, i64, i64), String> {
        let refs: Vec<&Value> = pods.iter().collect();
        let mut pdb = json!({"spec": budget});
        pdb["spec"]["selector"] = json!({"matchLabels": {"app": "a"}});
        pdb_math(&pdb, &refs, &rs_of(rs)).map(|m| nums(&m))
    }

    #[test]
    fn integer_min_available_counts_pods_percent_and_max_unavailable_count_the_scale() {
        // ReplicaSet of 5: two Ready, one unready, one Ready but terminating.
        let pods = [
            pod("a", true, false, true),
            pod("b", true, false, true),
            pod("c", false, false, true),
            pod("d", true, true, true),
        ];
        assert_eq!(math(json!({"minAvailable": 1}), &pods, 5), Ok((4, 2, 1, 1)));
        assert_eq!(
            math(json!({"minAvailable": "50%"}), &pods, 5),
            Ok((5, 2, 3, 0))
        );
        assert_eq!(
            math(json!({"minAvailable": "30%"}), &pods, 5),
            Ok((5, 2, 2, 0))
        );
        assert_eq!(
            math(json!({"maxUnavailable": 1}), &pods, 5),
            Ok((5, 2, 4, 0))
        );
        assert_eq!(
            math(json!({"maxUnavailable": "50%"}), &pods, 5),
            Ok((5, 2, 2, 0))
        );
        assert_eq!(
            math(json!({"maxUnavailable": "100%"}), &pods, 5),
            Ok((5, 2, 0, 2))
        );
        let none = pdb_math(&json!({"spec": {"minAvailable": 1}}), &[], &rs_of(5));
        assert_eq!(none.map(|m| nums(&m)), Ok((0, 0, 1, 0)));
    }

    #[test]
    fn unmanaged_pods_add_no_scale_and_zero_expected_allows_nothing() {
        let pods = [pod("a", true, false, false), pod("b", true, false, false)];
        assert_eq!(
            math(json!({"maxUnavailable": 1}), &pods, 3),
            Ok((0, 2, 0, 0))
        );
        assert_eq!(math(json!({"minAvailable": 1}), &pods, 3), Ok((2, 2, 1, 1)));
        let mixed = [pod("a", true, false, true), pod("b", true, false, false)];
        assert_eq!(
            math(json!({"maxUnavailable": 1}), &mixed, 3),
            Ok((3, 2, 2, 0))
        );
    }

    #[test]
    fn a_controller_that_cannot_be_found_fails_safe() {
        let pods = [pod("a", true, false, true), pod("b", true, false, true)];
        let refs: Vec<&Value> = pods.iter().collect();
        let mut pdb = json!({"metadata": {"generation": 2},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "a"}}},
            "status": {"observedGeneration": 1, "disruptionsAllowed": 1, "currentHealthy": 2,
                "desiredHealthy": 1, "expectedPods": 2}});
        let err = pdb_math(&pdb, &refs, &|_| None).err();
        assert_eq!(err.as_deref(), Some("found no controllers for pod \"a\""));
        let st = pdb_status(&pdb, &refs, &|_| None);
        assert_eq!(st["disruptionsAllowed"], 0);
        assert_eq!(
            (st["expectedPods"].clone(), st["observedGeneration"].clone()),
            (json!(2), json!(1))
        );
        assert_eq!(st["conditions"][0]["reason"], "SyncFailed");
        assert_eq!(
            st["conditions"][0]["message"],
            "found no controllers for pod \"a\""
        );
        // The integer minAvailable path never looks at controllers.
        pdb["spec"] = json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "a"}}});
        let st = pdb_status(&pdb, &refs, &|_| None);
        assert_eq!(
            (
                st["disruptionsAllowed"].clone(),
                st["conditions"][0]["reason"].clone()
            ),
            (json!(1), json!("SufficientPods"))
        );
    }
}
