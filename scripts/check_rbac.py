#!/usr/bin/env python3
"""Assert the rendered RBAC manifest grants exactly what the drain needs:
get/patch nodes, get/list/watch pods, create pods/eviction (core API group) - nothing
broader - and that the ClusterRoleBinding binds that ClusterRole.
Usage: check_rbac.py rbac.yaml   (needs PyYAML)"""
import sys

import yaml

ALLOWED = {("", "nodes"): {"get", "patch"},
           ("", "pods"): {"get", "list", "watch"},
           ("", "pods/eviction"): {"create"}}


def main(path):
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    kinds = {d["kind"]: d for d in docs}
    errs = []
    role = kinds.get("ClusterRole")
    binding = kinds.get("ClusterRoleBinding")
    if not role or not binding:
        errs.append(f"need a ClusterRole and a ClusterRoleBinding, got {sorted(kinds)}")
    else:
        granted = {}
        for rule in role.get("rules", []):
            if rule.get("resourceNames") is not None or rule.get("nonResourceURLs"):
                errs.append(f"unexpected rule form {rule}")
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    granted.setdefault((g, r), set()).update(rule.get("verbs", []))
        if granted != ALLOWED:
            errs.append(f"rules {granted} != {ALLOWED}")
        if any("*" in v for v in granted.values()) or any("*" in k[1] for k in granted):
            errs.append("wildcards are not allowed")
        ref = binding.get("roleRef", {})
        if ref.get("kind") != "ClusterRole" or ref.get("name") != role["metadata"]["name"]:
            errs.append(f"binding roleRef {ref} does not name the ClusterRole")
        if not binding.get("subjects"):
            errs.append("binding has no subject")
        for s in binding.get("subjects", []):
            if s.get("kind") == "ServiceAccount":
                sa = kinds.get("ServiceAccount")
                if not s.get("namespace") or not sa or sa["metadata"]["name"] != s.get("name"):
                    errs.append(f"ServiceAccount subject {s} not defined in the manifest")
    for e in errs:
        print(f"FAIL {path}: {e}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
