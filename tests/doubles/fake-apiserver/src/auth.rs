//! Authentication (static token file), authorization (system:masters, Node authorizer,
//! RBAC) and the NodeRestriction admission checks.

use crate::resources::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES, ResourceDef};
use crate::store::State;
use crate::util::{ApiError, details, meta_str};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    #[allow(dead_code)] // parsed like kube-apiserver; not used for decisions
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn admin() -> Self {
        User {
            name: "system:admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
    /// `Some(node)` for a node identity (`system:node:<name>` in group `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        let n = self.name.strip_prefix("system:node:")?;
        (self.groups.iter().any(|g| g == "system:nodes") && !n.is_empty()).then_some(n)
    }
}

/// Parse one CSV record with double-quoted fields.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// kube-apiserver `--token-auth-file`: `token,user,uid,"group1,group2"`.
pub fn parse_token_file(text: &str) -> Result<HashMap<String, User>, String> {
    let mut m = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f = csv_fields(line);
        if f.len() < 3 {
            return Err(format!(
                "token file line {}: need at least 3 columns (token,user,uid)",
                i + 1
            ));
        }
        let mut groups: Vec<String> = f
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        groups.push("system:authenticated".into());
        m.insert(
            f[0].trim().to_string(),
            User {
                name: f[1].trim().to_string(),
                uid: f[2].trim().to_string(),
                groups,
            },
        );
    }
    Ok(m)
}

/// The authorizer's view of a request.
#[derive(Debug, Clone)]
pub struct Attrs {
    pub verb: String,
    pub resource_request: bool,
    pub path: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub qualified: String,
    /// Equality requirements of a list/watch `fieldSelector` (`k=v` / `k==v`).
    pub fields: Vec<(String, String)>,
}

impl Attrs {
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attrs {
            verb: verb.into(),
            resource_request: false,
            path: path.into(),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            qualified: String::new(),
            fields: Vec::new(),
        }
    }
    pub fn resource(verb: &str, def: &ResourceDef, ns: &str, name: &str, sub: &str) -> Self {
        Attrs {
            verb: verb.into(),
            resource_request: true,
            path: String::new(),
            group: def.group.into(),
            resource: def.plural.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            qualified: def.qualified(),
            fields: Vec::new(),
        }
    }

    /// Add a list/watch field selector. Like the RequestInfoFactory, a `metadata.name`
    /// requirement becomes the request's name.
    pub fn with_field_selector(mut self, selector: &str) -> Self {
        if !matches!(self.verb.as_str(), "list" | "watch") {
            return self;
        }
        for req in selector.split(',') {
            if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('='))
                && !k.ends_with('!')
            {
                self.fields
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        if self.name.is_empty()
            && let Some((_, v)) = self.fields.iter().find(|(k, _)| k == "metadata.name")
        {
            self.name = v.clone();
        }
        self
    }
    fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// Paths every authenticated user may read (system:discovery, system:public-info-viewer).
fn discovery_path(path: &str) -> bool {
    matches!(
        path,
        "/api" | "/apis" | "/version" | "/healthz" | "/livez" | "/readyz" | "/openapi/v2"
    ) || path.starts_with("/api/")
        || path.starts_with("/apis/")
        || path.starts_with("/openapi/")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// The authorization 403 (responsewriters `forbiddenMessage`), with the authorizers' reason.
pub fn forbidden(user: &User, a: &Attrs, why: &str) -> ApiError {
    let mut msg = if a.resource_request {
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", a.namespace)
        };
        let subject = if a.name.is_empty() {
            format!("{} is forbidden", a.qualified)
        } else {
            format!("{} \"{}\" is forbidden", a.qualified, a.name)
        };
        format!(
            "{subject}: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            user.name,
            a.verb,
            a.full_resource(),
            a.group
        )
    } else {
        format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.name, a.verb, a.path
        )
    };
    if !why.is_empty() {
        msg.push_str(": ");
        msg.push_str(why);
    }
    ApiError::new(403, "Forbidden", msg).with_details(details(&a.name, &a.group, &a.resource))
}

/// Forbidden error produced by admission (`<resource> "<name>" is forbidden: <reason>`).
pub fn admission_forbidden(def: &ResourceDef, name: &str, reason: &str) -> ApiError {
    let subject = if name.is_empty() {
        format!("{} is forbidden", def.qualified())
    } else {
        format!("{} \"{}\" is forbidden", def.qualified(), name)
    };
    ApiError::new(403, "Forbidden", format!("{subject}: {reason}"))
        .with_details(details(name, def.group, def.plural))
}

/// Authorize a request: system:masters, discovery paths, the Node authorizer, then RBAC.
pub fn authorize(st: &State, user: &User, a: &Attrs) -> Result<(), ApiError> {
    if user.is_master() {
        return Ok(());
    }
    if !a.resource_request && a.verb == "get" && discovery_path(&a.path) {
        return Ok(());
    }
    // Union authorizer (Node, RBAC): the first Allow wins; a denial carries the reasons
    // the authorizers gave (union.go joins them; RBAC gives none for "no rule matched").
    let mut why = String::new();
    if let Some(node) = user.node_name() {
        match node_authorizer(st, node, a) {
            Ok(()) => return Ok(()),
            Err(reason) => why = reason,
        }
    }
    if rbac_allows(st, user, a) {
        return Ok(());
    }
    Err(forbidden(user, a, &why))
}

/// The Node authorizer's lease rule (node_authorizer.go `authorizeLease`): a node may get,
/// create, update, patch or delete leases in kube-node-lease, and for every verb but
/// create (whose name the authorizer cannot see) only the lease named after itself.
/// No list or watch.
fn authorize_lease(node: &str, a: &Attrs) -> Result<(), String> {
    if !matches!(
        a.verb.as_str(),
        "get" | "create" | "update" | "patch" | "delete"
    ) {
        return Err("can only get, create, update, patch, or delete a node lease".into());
    }
    if a.namespace != NODE_LEASE_NS {
        return Err(format!(
            "can only access leases in the {NODE_LEASE_NS:?} system namespace"
        ));
    }
    if a.verb != "create" && a.name != node {
        return Err("can only access node lease with the same name as the requesting node".into());
    }
    Ok(())
}

/// AuthorizeNodeWithSelectors (beta, on by default since 1.32), node_authorizer.go
/// `authorizeNode`: a node writes any Node (NodeRestriction limits it to its own) but
/// reads only its own, by name or `metadata.name` field selector.
fn authorize_node(node: &str, a: &Attrs) -> Result<(), String> {
    match (a.subresource.as_str(), a.verb.as_str()) {
        ("", "create" | "update" | "patch") | ("status", "update" | "patch") => Ok(()),
        ("", "get" | "list" | "watch") => {
            if a.name == node {
                Ok(())
            } else if a.name.is_empty() {
                Err(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                ))
            } else {
                Err(format!(
                    "node '{node}' cannot read '{}', only its own Node object",
                    a.name
                ))
            }
        }
        _ => Err(String::new()),
    }
}

/// `authorizePod`: get only pods bound to the node (the graph; a missing pod has no
/// relationship either, so it is 403 rather than 404), list/watch only with
/// `spec.nodeName=<node>`, create/delete (mirror pods; NodeRestriction limits them),
/// status update/patch and eviction create.
fn authorize_pod(st: &State, node: &str, a: &Attrs) -> Result<(), String> {
    let related = || {
        st.get(crate::resources::PODS, &a.namespace, &a.name)
            .and_then(|p| p.pointer("/spec/nodeName"))
            .and_then(Value::as_str)
            == Some(node)
    };
    let no_relation = || format!("no relationship found between node '{node}' and this object");
    match (a.subresource.as_str(), a.verb.as_str()) {
        ("", "get") if related() => Ok(()),
        ("", "get") => Err(no_relation()),
        ("", "list" | "watch") => {
            if a.fields
                .iter()
                .any(|(k, v)| k == "spec.nodeName" && v == node)
            {
                Ok(())
            } else if !a.name.is_empty() {
                if related() {
                    Ok(())
                } else {
                    Err(no_relation())
                }
            } else {
                Err("can only list/watch pods with spec.nodeName field selector".into())
            }
        }
        ("", "create" | "delete") | ("status", "update" | "patch") | ("eviction", "create") => {
            Ok(())
        }
        _ => Err(String::new()),
    }
}

/// `authorizeReadNamespacedObject` for secrets and configmaps: get/list/watch of one
/// named object that a pod bound to the node references (volumes, env, envFrom,
/// imagePullSecrets: the graph's edges, pkg/auth/nodeidentifier + graph_populator.go).
fn authorize_referenced(st: &State, node: &str, a: &Attrs) -> Result<(), String> {
    if !matches!(a.verb.as_str(), "get" | "list" | "watch") {
        return Err("can only read resources of this type".into());
    }
    if !a.subresource.is_empty() {
        return Err("cannot read subresource".into());
    }
    if a.namespace.is_empty() {
        return Err("can only read namespaced object of this type".into());
    }
    if a.name.is_empty() {
        return Err("No Object name found".into());
    }
    let secret = a.resource == "secrets";
    let refs = |pod: &Value| -> bool {
        let name = a.name.as_str();
        let spec = &pod["spec"];
        let vol = spec["volumes"].as_array().into_iter().flatten().any(|v| {
            if secret {
                v.pointer("/secret/secretName").and_then(Value::as_str) == Some(name)
            } else {
                v.pointer("/configMap/name").and_then(Value::as_str) == Some(name)
            }
        });
        let (env_key, from_key) = if secret {
            ("secretKeyRef", "secretRef")
        } else {
            ("configMapKeyRef", "configMapRef")
        };
        let containers = ["containers", "initContainers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten());
        let env = containers.clone().any(|c| {
            c["env"].as_array().into_iter().flatten().any(|e| {
                e.pointer(&format!("/valueFrom/{env_key}/name"))
                    .and_then(Value::as_str)
                    == Some(name)
            }) || c["envFrom"].as_array().into_iter().flatten().any(|e| {
                e.pointer(&format!("/{from_key}/name"))
                    .and_then(Value::as_str)
                    == Some(name)
            })
        });
        let pull = secret
            && spec["imagePullSecrets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s.get("name").and_then(Value::as_str) == Some(name));
        vol || env || pull
    };
    let related = st
        .list(crate::resources::PODS, Some(&a.namespace))
        .into_iter()
        .any(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node) && refs(p));
    if related {
        Ok(())
    } else {
        Err(format!(
            "no relationship found between node '{node}' and this object"
        ))
    }
}

/// The namespace of node Leases (`api.NamespaceNodeLease`).
pub const NODE_LEASE_NS: &str = "kube-node-lease";

/// Node authorizer + the bootstrap NodeRules it is paired with. Object-level limits
/// (own node, own pods) are NodeRestriction admission, checked by the handlers.
/// `Err` carries the authorizer's reason for having no opinion (may be empty).
fn node_authorizer(st: &State, node: &str, a: &Attrs) -> Result<(), String> {
    if !a.resource_request {
        return Err(String::new());
    }
    if a.group == "coordination.k8s.io" && a.resource == "leases" {
        return authorize_lease(node, a);
    }
    if st.node_selectors && a.group.is_empty() {
        match a.resource.as_str() {
            "nodes" => return authorize_node(node, a),
            "pods" => return authorize_pod(st, node, a),
            _ => {}
        }
    }
    if a.group.is_empty() && matches!(a.resource.as_str(), "secrets" | "configmaps") {
        return authorize_referenced(st, node, a);
    }
    let v = a.verb.as_str();
    let read = matches!(v, "get" | "list" | "watch");
    let allowed = match (
        a.group.as_str(),
        a.resource.as_str(),
        a.subresource.as_str(),
    ) {
        ("", "nodes", "") => read || matches!(v, "create" | "update" | "patch"),
        ("", "nodes", "status") => matches!(v, "update" | "patch"),
        ("", "pods", "") => read || matches!(v, "create" | "delete"),
        ("", "pods", "status") => matches!(v, "update" | "patch"),
        ("", "pods", "eviction") => v == "create",
        ("", "events", "") | ("events.k8s.io", "events", "") => {
            matches!(v, "create" | "update" | "patch")
        }
        ("", "services", "") => read,
        _ => false,
    };
    if allowed { Ok(()) } else { Err(String::new()) }
}

fn subject_matches(binding: &Value, user: &User) -> bool {
    let Some(subjects) = binding.get("subjects").and_then(Value::as_array) else {
        return false;
    };
    subjects.iter().any(|s| {
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = s.get("name").and_then(Value::as_str).unwrap_or("");
        match kind {
            "User" => name == user.name,
            "Group" => user.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                let ns = s.get("namespace").and_then(Value::as_str).unwrap_or("");
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attrs) -> bool {
    let verbs = strs(rule, "verbs");
    if !verbs.iter().any(|v| v == "*" || *v == a.verb) {
        return false;
    }
    if !a.resource_request {
        return strs(rule, "nonResourceURLs").iter().any(|u| {
            u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    let groups = strs(rule, "apiGroups");
    if !groups.iter().any(|g| g == "*" || *g == a.group) {
        return false;
    }
    let full = a.full_resource();
    let resources = strs(rule, "resources");
    if !resources.iter().any(|r| {
        r == "*"
            || *r == full
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    }) {
        return false;
    }
    let names = strs(rule, "resourceNames");
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name))
}

fn role_allows(role: Option<&Value>, a: &Attrs) -> bool {
    role.and_then(|r| r.get("rules"))
        .and_then(Value::as_array)
        .is_some_and(|rules| rules.iter().any(|r| rule_allows(r, a)))
}

fn rbac_allows(st: &State, user: &User, a: &Attrs) -> bool {
    for crb in st.list(CLUSTERROLEBINDINGS, None) {
        if subject_matches(crb, user)
            && crb.pointer("/roleRef/kind").and_then(Value::as_str) == Some("ClusterRole")
        {
            let name = crb
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if role_allows(st.get(CLUSTERROLES, "", name), a) {
                return true;
            }
        }
    }
    if a.resource_request && !a.namespace.is_empty() {
        for rb in st.list(ROLEBINDINGS, Some(&a.namespace)) {
            if !subject_matches(rb, user) {
                continue;
            }
            let name = rb
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let role = match rb.pointer("/roleRef/kind").and_then(Value::as_str) {
                Some("ClusterRole") => st.get(CLUSTERROLES, "", name),
                Some("Role") => st.get(ROLES, &a.namespace, name),
                _ => None,
            };
            if role_allows(role, a) {
                return true;
            }
        }
    }
    false
}

// ---------------------------------------------------------------- NodeRestriction

fn labels(obj: &Value) -> serde_json::Map<String, Value> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Labels a kubelet may set on its Node (kubelet.kubernetes.io/ and node.kubernetes.io/
/// prefixes, the well-known topology labels, and anything outside the k8s.io namespaces).
fn node_label_allowed(key: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "node.kubernetes.io/instance-type",
    ];
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return false;
    }
    if ALLOWED.contains(&key)
        || prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io")
    {
        return true;
    }
    let k8s = |d: &str| prefix == d || prefix.ends_with(&format!(".{d}"));
    !(k8s("kubernetes.io") || k8s("k8s.io"))
}

/// NodeRestriction for create/update/patch of nodes and nodes/status.
pub fn admit_node_write(
    def: &ResourceDef,
    node: &str,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let target = meta_str(new, "name");
    if target != node {
        return Err(admission_forbidden(
            def,
            target,
            &format!("node {node:?} is not allowed to modify node {target:?}"),
        ));
    }
    match old {
        None => {
            let bad: Vec<String> = labels(new)
                .keys()
                .filter(|k| !node_label_allowed(k))
                .cloned()
                .collect();
            if !bad.is_empty() {
                return Err(admission_forbidden(
                    def,
                    target,
                    &format!(
                        "node {node:?} is not allowed to set the following labels: {}",
                        bad.join(", ")
                    ),
                ));
            }
        }
        Some(old) => {
            if old.pointer("/spec/taints") != new.pointer("/spec/taints") {
                return Err(admission_forbidden(
                    def,
                    target,
                    &format!("node {node:?} is not allowed to modify taints"),
                ));
            }
            let (ol, nl) = (labels(old), labels(new));
            let mut bad: Vec<String> = ol
                .keys()
                .chain(nl.keys())
                .filter(|k| ol.get(*k) != nl.get(*k) && !node_label_allowed(k))
                .cloned()
                .collect();
            bad.sort();
            bad.dedup();
            if !bad.is_empty() {
                return Err(admission_forbidden(
                    def,
                    target,
                    &format!("is not allowed to modify labels: {}", bad.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

fn pod_node(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// NodeRestriction for mirror pod creation.
pub fn admit_pod_create(
    st: &State,
    def: &ResourceDef,
    node: &str,
    pod: &Value,
) -> Result<(), ApiError> {
    let name = meta_str(pod, "name");
    let deny = |m: String| Err(admission_forbidden(def, name, &m));
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_none()
    {
        return deny(format!(
            "pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
        ));
    }
    if pod_node(pod) != node {
        return deny(format!(
            "node {node:?} can only create pods with spec.nodeName set to itself"
        ));
    }
    let owners = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if owners.len() > 1 {
        return deny(format!(
            "node {node:?} can only create pods with a single owner reference set to itself"
        ));
    }
    if let Some(o) = owners.first() {
        let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
        if s("apiVersion") != "v1" || s("kind") != "Node" || s("name") != node {
            return deny(format!(
                "node {node:?} can only create pods with an owner reference set to itself"
            ));
        }
        if o.get("controller").and_then(Value::as_bool) != Some(true) {
            return deny(format!(
                "node {node:?} can only create pods with a controller owner reference set to itself"
            ));
        }
        if o.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true) {
            return deny(format!(
                "node {node:?} must not set blockOwnerDeletion on an owner reference"
            ));
        }
        let node_uid = st
            .get(crate::resources::NODES, "", node)
            .map(|n| meta_str(n, "uid").to_string());
        if node_uid.as_deref() != Some(s("uid")) {
            return deny(format!("node {node} UID mismatch"));
        }
    }
    if pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return deny(format!(
            "node {node:?} can not create pods that reference a service account"
        ));
    }
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (field, what) in [
            ("secret", "secrets"),
            ("configMap", "configmaps"),
            ("persistentVolumeClaim", "persistentvolumeclaims"),
        ] {
            if v.get(field).is_some() {
                return deny(format!(
                    "node {node:?} can not create pods that reference {what}"
                ));
            }
        }
    }
    Ok(())
}

/// NodeRestriction for pod deletes by a node: only pods bound to it.
pub fn admit_pod_delete(def: &ResourceDef, node: &str, pod: &Value) -> Result<(), ApiError> {
    if pod_node(pod) != node {
        return Err(admission_forbidden(
            def,
            meta_str(pod, "name"),
            &format!("node {node:?} can only delete pods with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

/// NodeRestriction for pod status updates by a node: only its pods, no label changes.
pub fn admit_pod_status(
    def: &ResourceDef,
    node: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let name = meta_str(old, "name");
    if pod_node(old) != node {
        return Err(admission_forbidden(
            def,
            name,
            &format!(
                "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
            ),
        ));
    }
    if labels(old) != labels(new) {
        return Err(admission_forbidden(
            def,
            name,
            &format!("node {node:?} cannot update labels through pod status"),
        ));
    }
    Ok(())
}

/// NodeRestriction for leases (admission.go `admitLease`), on create, update, patch and
/// delete by a node, however it was authorized: only kube-node-lease, only its own lease
/// (on create the name comes from the object).
pub fn admit_lease(def: &ResourceDef, node: &str, ns: &str, name: &str) -> Result<(), ApiError> {
    if ns != NODE_LEASE_NS {
        return Err(admission_forbidden(
            def,
            name,
            &format!("can only access leases in the {NODE_LEASE_NS:?} system namespace"),
        ));
    }
    if name != node {
        return Err(admission_forbidden(
            def,
            name,
            "can only access node lease with the same name as the requesting node",
        ));
    }
    Ok(())
}

/// NodeRestriction for evictions by a node: only pods bound to it.
pub fn admit_pod_eviction(def: &ResourceDef, node: &str, pod: &Value) -> Result<(), ApiError> {
    if pod_node(pod) != node {
        return Err(admission_forbidden(
            def,
            meta_str(pod, "name"),
            &format!("node {node} can only evict pods with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file() {
        let m = parse_token_file(
            "# c\nt1,admin,u1,\"system:masters,other\"\nt2,system:node:n1,u2,system:nodes\nt3,bob,u3\n",
        )
        .unwrap();
        assert!(m["t1"].is_master());
        assert_eq!(m["t1"].groups.len(), 3);
        assert_eq!(m["t2"].node_name(), Some("n1"));
        assert_eq!(m["t3"].node_name(), None);
        assert!(parse_token_file("x,y").is_err());
    }

    #[test]
    fn node_labels() {
        assert!(node_label_allowed("kubernetes.io/hostname"));
        assert!(node_label_allowed("example.com/x"));
        assert!(node_label_allowed("plain"));
        assert!(node_label_allowed("kubelet.kubernetes.io/x"));
        assert!(!node_label_allowed("node-restriction.kubernetes.io/x"));
        assert!(!node_label_allowed("node-role.kubernetes.io/master"));
    }
}
