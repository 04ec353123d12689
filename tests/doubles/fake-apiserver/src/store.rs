//! In-memory object storage with a global resourceVersion, an event history for
//! watches, and the live PodDisruptionBudget status computation.

use crate::resources::{self, PDBS, PODS};
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

    /// Re-run the disruption controller for the PDBs of a namespace.
    pub fn recompute_pdbs(&mut self, ns: &str) {
        let pdbs: Vec<Value> = self.list(PDBS, Some(ns)).into_iter().cloned().collect();
        for pdb in pdbs {
            let pods: Vec<&Value> = self.list(PODS, Some(ns));
            let status = pdb_status(&pdb, &pods);
            let mut new = pdb.clone();
            let mut status = status;
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
    pub expected: i64,
    pub current_healthy: i64,
    pub desired_healthy: i64,
    pub disruptions_allowed: i64,
}

/// Compute a PDB's expected, healthy and allowed counts from the namespace's pods.
pub fn pdb_math(pdb: &Value, pods: &[&Value]) -> PdbMath {
    let sel = LabelSelector::from_object(pdb.pointer("/spec/selector"));
    let matching: Vec<&&Value> = pods.iter().filter(|p| sel.matches(p)).collect();
    let expected = matching.len() as i64;
    let current_healthy = matching
        .iter()
        .filter(|p| !is_terminating(p) && pod_is_ready(p))
        .count() as i64;
    let desired_healthy =
        if let Some(mu) = pdb.pointer("/spec/maxUnavailable").filter(|v| !v.is_null()) {
            (expected - scaled(mu, expected).unwrap_or(0)).max(0)
        } else if let Some(ma) = pdb.pointer("/spec/minAvailable").filter(|v| !v.is_null()) {
            scaled(ma, expected).unwrap_or(0)
        } else {
            0
        };
    PdbMath {
        expected,
        current_healthy,
        desired_healthy,
        disruptions_allowed: (current_healthy - desired_healthy).max(0),
    }
}

/// A PDB's `.status` as the disruption controller writes it.
pub fn pdb_status(pdb: &Value, pods: &[&Value]) -> Value {
    let m = pdb_math(pdb, pods);
    let generation = pdb
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, term: bool) -> Value {
        let mut p = json!({"metadata": {"name": name, "labels": {"app": "a"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if term {
            p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
        p
    }

    #[test]
    fn math_int_and_percent() {
        let pods = [
            pod("a", true, false),
            pod("b", true, false),
            pod("c", false, false),
            pod("d", true, true),
        ];
        let refs: Vec<&Value> = pods.iter().collect();
        let sel = json!({"matchLabels": {"app": "a"}});
        let m = pdb_math(
            &json!({"spec": {"selector": sel, "minAvailable": 1}}),
            &refs,
        );
        assert_eq!(
            (
                m.expected,
                m.current_healthy,
                m.desired_healthy,
                m.disruptions_allowed
            ),
            (4, 2, 1, 1)
        );
        let m = pdb_math(
            &json!({"spec": {"selector": sel, "minAvailable": "50%"}}),
            &refs,
        );
        assert_eq!((m.desired_healthy, m.disruptions_allowed), (2, 0));
        let m = pdb_math(
            &json!({"spec": {"selector": sel, "minAvailable": "30%"}}),
            &refs,
        );
        assert_eq!(m.desired_healthy, 2); // ceil(1.2)
        let m = pdb_math(
            &json!({"spec": {"selector": sel, "maxUnavailable": 1}}),
            &refs,
        );
        assert_eq!((m.desired_healthy, m.disruptions_allowed), (3, 0));
        let m = pdb_math(
            &json!({"spec": {"selector": sel, "maxUnavailable": "50%"}}),
            &refs,
        );
        assert_eq!((m.desired_healthy, m.disruptions_allowed), (2, 0));
        let m = pdb_math(
            &json!({"spec": {"selector": sel, "maxUnavailable": "100%"}}),
            &refs,
        );
        assert_eq!((m.desired_healthy, m.disruptions_allowed), (0, 2));
        let m = pdb_math(&json!({"spec": {"minAvailable": 1}}), &refs);
        assert_eq!(m.expected, 0);
    }
}
