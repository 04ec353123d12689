#!/usr/bin/env python3
"""Assert the rendered RBAC manifest grants exactly what the drain needs - nothing broader:
  ClusterRole: get/patch nodes, get/list/watch pods, create pods/eviction (core API group);
  Role in kube-node-lease: get coordination.k8s.io leases (the node's heartbeat);
and that each binding binds its own role to the same, defined subjects.
Usage: check_rbac.py rbac.yaml   (needs PyYAML)"""
import sys

import yaml

CLUSTER_ALLOWED = {("", "nodes"): {"get", "patch"},
                   ("", "pods"): {"get", "list", "watch"},
                   ("", "pods/eviction"): {"create"}}
LEASE_NAMESPACE = "kube-node-lease"
LEASE_ALLOWED = {("coordination.k8s.io", "leases"): {"get"}}


def granted_by(role, errs):
    granted = {}
    for rule in role.get("rules", []):
        if rule.get("resourceNames") is not None or rule.get("nonResourceURLs"):
            errs.append(f"unexpected rule form {rule}")
        for g in rule.get("apiGroups", []):
            for r in rule.get("resources", []):
                granted.setdefault((g, r), set()).update(rule.get("verbs", []))
    if any("*" in v for v in granted.values()) or any("*" in k[0] + k[1] for k in granted):
        errs.append(f"wildcards are not allowed in {role['kind']} {role['metadata']['name']}")
    return granted


def check_binding(binding, role, kinds, errs):
    ref = binding.get("roleRef", {})
    if ref.get("kind") != role["kind"] or ref.get("name") != role["metadata"]["name"]:
        errs.append(f"{binding['kind']} roleRef {ref} does not name the {role['kind']}")
    if not binding.get("subjects"):
        errs.append(f"{binding['kind']} has no subject")
    for s in binding.get("subjects", []):
        if s.get("kind") == "ServiceAccount":
            sa = kinds.get("ServiceAccount")
            if not s.get("namespace") or not sa or sa["metadata"]["name"] != s.get("name"):
                errs.append(f"ServiceAccount subject {s} not defined in the manifest")


def main(path):
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    kinds = {}
    errs = []
    for d in docs:
        if d["kind"] in kinds:
            errs.append(f"more than one {d['kind']}")
        kinds[d["kind"]] = d
    extra = set(kinds) - {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    if extra:
        errs.append(f"unexpected kinds {sorted(extra)}")
    pairs = [("ClusterRole", "ClusterRoleBinding", CLUSTER_ALLOWED, None),
             ("Role", "RoleBinding", LEASE_ALLOWED, LEASE_NAMESPACE)]
    for role_kind, binding_kind, allowed, namespace in pairs:
        role, binding = kinds.get(role_kind), kinds.get(binding_kind)
        if not role or not binding:
            errs.append(f"need a {role_kind} and a {binding_kind}, got {sorted(kinds)}")
            continue
        for obj in (role, binding):
            if obj["metadata"].get("namespace") != namespace:
                errs.append(f"{obj['kind']} namespace {obj['metadata'].get('namespace')!r} != {namespace!r}")
        granted = granted_by(role, errs)
        if granted != allowed:
            errs.append(f"{role_kind} rules {granted} != {allowed}")
        check_binding(binding, role, kinds, errs)
    if "ClusterRoleBinding" in kinds and "RoleBinding" in kinds:
        if kinds["ClusterRoleBinding"].get("subjects") != kinds["RoleBinding"].get("subjects"):
            errs.append("the ClusterRoleBinding and the RoleBinding bind different subjects")
    for e in errs:
        print(f"FAIL {path}: {e}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
