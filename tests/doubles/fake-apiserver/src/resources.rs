//! The served resource registry and the legacy discovery documents built from it.

use serde_json::{Value, json};

#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// "status" and/or "eviction" (pods only).
    pub subresources: &'static [&'static str],
    /// Storage table shared by all versions of one resource.
    pub storage: &'static str,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `pods`, `daemonsets.apps` — the form used in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
    pub fn is(&self, storage: &str) -> bool {
        self.storage == storage
    }
}

pub const PODS: &str = "pods";
pub const NODES: &str = "nodes";
pub const NAMESPACES: &str = "namespaces";
pub const PDBS: &str = "poddisruptionbudgets.policy";
pub const REPLICASETS: &str = "replicasets.apps";
pub const DEPLOYMENTS: &str = "deployments.apps";
pub const STATEFULSETS: &str = "statefulsets.apps";
pub const LEASES: &str = "leases.coordination.k8s.io";
pub const CLUSTERROLES: &str = "clusterroles.rbac.authorization.k8s.io";
pub const CLUSTERROLEBINDINGS: &str = "clusterrolebindings.rbac.authorization.k8s.io";
pub const ROLES: &str = "roles.rbac.authorization.k8s.io";
pub const ROLEBINDINGS: &str = "rolebindings.rbac.authorization.k8s.io";

macro_rules! r {
    ($g:expr, $v:expr, $p:expr, $s:expr, $k:expr, $ns:expr, $short:expr, $sub:expr, $st:expr) => {
        ResourceDef {
            group: $g,
            version: $v,
            plural: $p,
            singular: $s,
            kind: $k,
            namespaced: $ns,
            short_names: $short,
            subresources: $sub,
            storage: $st,
        }
    };
}

#[rustfmt::skip]
pub static RESOURCES: &[ResourceDef] = &[
    r!("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], &["status"], NAMESPACES),
    r!("", "v1", "nodes", "node", "Node", false, &["no"], &["status"], NODES),
    r!("", "v1", "pods", "pod", "Pod", true, &["po"], &["binding", "eviction", "status"], PODS),
    r!("", "v1", "events", "event", "Event", true, &["ev"], &[], "events"),
    r!("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], &[], "configmaps"),
    r!("", "v1", "secrets", "secret", "Secret", true, &[], &[], "secrets"),
    r!("", "v1", "services", "service", "Service", true, &["svc"], &["status"], "services"),
    r!("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], &[], "serviceaccounts"),
    r!("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, &["ds"], &["status"], "daemonsets.apps"),
    r!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], &["status"], "replicasets.apps"),
    r!("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], &["status"], "deployments.apps"),
    r!("apps", "v1", "statefulsets", "statefulset", "StatefulSet", true, &["sts"], &["status"], "statefulsets.apps"),
    r!("events.k8s.io", "v1", "events", "event", "Event", true, &["ev"], &[], "events.events.k8s.io"),
    r!("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", true, &["pdb"], &["status"], PDBS),
    r!("policy", "v1beta1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", true, &["pdb"], &["status"], PDBS),
    r!("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, &[], &[], CLUSTERROLES),
    r!("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, &[], &[], CLUSTERROLEBINDINGS),
    r!("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, &[], &[], ROLES),
    r!("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true, &[], &[], ROLEBINDINGS),
    r!("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, &[], &[], LEASES),
];

/// Group name, versions (preferred first).
pub static GROUPS: &[(&str, &[&str])] = &[
    ("apps", &["v1"]),
    ("events.k8s.io", &["v1"]),
    ("policy", &["v1", "v1beta1"]),
    ("rbac.authorization.k8s.io", &["v1"]),
    ("coordination.k8s.io", &["v1"]),
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The definition used for storage (first registered version).
pub fn storage_def(storage: &str) -> &'static ResourceDef {
    RESOURCES
        .iter()
        .find(|r| r.storage == storage)
        .expect("known storage")
}

pub fn find_by_type(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn version_doc(server_version: &str) -> Value {
    let v = server_version.trim_start_matches('v');
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "minCompatibilityMajor": major,
        "minCompatibilityMinor": minor,
        "gitVersion": server_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub fn api_versions(addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]
    })
}

fn group_doc(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs[0].clone(),
    })
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|(n, v)| group_doc(n, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(name: &str) -> Option<Value> {
    let (n, v) = GROUPS.iter().find(|(n, _)| *n == name)?;
    let mut doc = group_doc(n, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for d in defs {
        let mut e = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": VERBS,
        });
        if !d.short_names.is_empty() {
            e["shortNames"] = json!(d.short_names);
        }
        if d.plural == "pods" || d.plural == "daemonsets" || d.plural == "replicasets" {
            e["categories"] = json!(["all"]);
        }
        out.push(e);
        for sub in d.subresources {
            match *sub {
                "binding" => out.push(json!({
                    "name": format!("{}/binding", d.plural),
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "kind": "Binding",
                    "verbs": ["create"],
                })),
                "eviction" => out.push(json!({
                    "name": format!("{}/eviction", d.plural),
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "group": "policy",
                    "version": "v1",
                    "kind": "Eviction",
                    "verbs": ["create"],
                })),
                _ => out.push(json!({
                    "name": format!("{}/{}", d.plural, sub),
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "kind": d.kind,
                    "verbs": ["get", "patch", "update"],
                })),
            }
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": out,
    }))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per group/version.
pub fn openapi_v3_root(server_version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=fake-{server_version}")}),
        );
    }
    json!({"paths": paths})
}

/// A minimal per-group-version OpenAPI v3 document: no schemas, but PATCH operations
/// tagged with their GVK and the `fieldValidation` query parameter, which is what kubectl
/// checks to use server-side field validation instead of downloading schemas.
pub fn openapi_v3_gv(group: &str, version: &str, server_version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    for d in defs {
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let base = if d.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                d.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, version), d.plural)
        };
        let op = |id: &str| {
            json!({"operationId": format!("{id}{}", d.kind), "x-kubernetes-group-version-kind": gvk,
                "parameters": params, "responses": {}})
        };
        paths.insert(base.clone(), json!({"post": op("create")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": op("read"), "put": op("replace"), "patch": op("patch")}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (fake-apiserver)", "version": server_version},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
