//! The cluster's workloads: ReplicaSets (some guarded by PodDisruptionBudgets), and the check
//! that every ReplicaSet is back at its replica count.

use serde_json::{Value, json};

use crate::http;

/// One ReplicaSet and its PDB (if any).
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub replicas: u64,
    pub pdb: Option<Value>,
}

/// `web` (N replicas, at most one unavailable), `db` (3, at least 2 available) and `batch`
/// (N/2, no PDB); requests small enough that N − 1 nodes of the smallest lease hold them all.
pub fn plan(nodes: u64) -> Vec<Workload> {
    vec![
        Workload {
            name: "web".into(),
            replicas: nodes,
            pdb: Some(json!({"maxUnavailable": 1})),
        },
        Workload {
            name: "db".into(),
            replicas: 3,
            pdb: Some(json!({"minAvailable": 2})),
        },
        Workload {
            name: "batch".into(),
            replicas: (nodes / 2).max(1),
            pdb: None,
        },
    ]
}

/// Creates the ReplicaSets and PDBs in `default`. `grace` is the pods' termination grace (s).
pub fn create(api: u16, workloads: &[Workload], grace: u64) -> Result<(), String> {
    for w in workloads {
        let labels = json!({"app": w.name});
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": w.name, "namespace": "default", "labels": labels},
            "spec": {
                "replicas": w.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": grace,
                        "containers": [{"name": "main", "image": "sleep",
                                        "command": ["sleep", "86400"],
                                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]
                    }
                }
            }
        });
        post(api, "/apis/apps/v1/namespaces/default/replicasets", &rs)?;
        if let Some(budget) = &w.pdb {
            let mut spec = budget.clone();
            spec["selector"] = json!({"matchLabels": labels});
            let pdb = json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": w.name, "namespace": "default"},
                "spec": spec,
            });
            post(
                api,
                "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
                &pdb,
            )?;
        }
    }
    Ok(())
}

fn post(api: u16, path: &str, body: &Value) -> Result<(), String> {
    match http::request(api, "POST", path, Some(body)) {
        Some((s, _)) if (200..300).contains(&s) || s == 409 => Ok(()),
        Some((s, v)) => Err(format!("POST {path}: {s} {v}")),
        None => Err(format!("POST {path}: no answer")),
    }
}

fn pods(api: u16, w: &Workload) -> Option<Vec<Value>> {
    let list = http::get(
        api,
        &format!(
            "/api/v1/namespaces/default/pods?labelSelector=app%3D{}",
            w.name
        ),
    )?;
    Some(list["items"].as_array().cloned().unwrap_or_default())
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["spec"]["nodeName"].is_string()
        && p["metadata"]["deletionTimestamp"].is_null()
}

fn ready(p: &Value) -> bool {
    running(p)
        && p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// For each workload: (name, wanted, running) where running counts pods bound to a node, phase
/// Running and not terminating. `None` if the API server does not answer.
pub fn status(api: u16, workloads: &[Workload]) -> Option<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    for w in workloads {
        let n = pods(api, w)?.iter().filter(|p| running(p)).count() as u64;
        out.push((w.name.clone(), w.replicas, n));
    }
    Some(out)
}

/// Each PDB as upstream's disruption controller judges it (`pkg/controller/disruption`,
/// `getExpectedPodCount`): `maxUnavailable` against the ReplicaSet's scale, an integer
/// `minAvailable` as given; healthy = Ready and not terminating. (name, healthy, desired).
pub fn pdb_health(api: u16, workloads: &[Workload]) -> Option<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    for w in workloads {
        let Some(budget) = &w.pdb else { continue };
        let desired = match (
            budget["maxUnavailable"].as_u64(),
            budget["minAvailable"].as_u64(),
        ) {
            (Some(mu), _) => w.replicas.saturating_sub(mu),
            (None, Some(ma)) => ma,
            _ => 0,
        };
        let healthy = pods(api, w)?.iter().filter(|p| ready(p)).count() as u64;
        out.push((w.name.clone(), healthy, desired));
    }
    Some(out)
}

/// Pods missing across all workloads (0 when every ReplicaSet is at its count).
pub fn missing(status: &[(String, u64, u64)]) -> u64 {
    status
        .iter()
        .map(|(_, want, have)| want.saturating_sub(*have))
        .sum()
}
