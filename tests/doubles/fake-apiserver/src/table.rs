//! Server-side printing (meta.k8s.io/v1 Table) for `kubectl get`.

use crate::resources::ResourceDef;
use crate::util::{human_duration, meta_str, parse_rfc3339, unix_now};
use serde_json::{Value, json};

fn col(name: &str, ty: &str, format: &str, priority: u8, desc: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": desc, "priority": priority})
}

fn age(obj: &Value) -> String {
    match parse_rfc3339(meta_str(obj, "creationTimestamp")) {
        Some(t) => human_duration(unix_now() - t),
        None => "<unknown>".into(),
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn none_if_empty(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.into()
    }
}

fn pod_row(p: &Value) -> Vec<Value> {
    let containers = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let mut reason = s(p, "/status/phase").to_string();
    if !s(p, "/status/reason").is_empty() {
        reason = s(p, "/status/reason").into();
    }
    for c in statuses.iter().rev() {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.into();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = r.into();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() && reason != "NodeLost" {
        reason = "Terminating".into();
    }
    let gates = p
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    vec![
        json!(meta_str(p, "name")),
        json!(format!("{ready}/{containers}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(p)),
        json!(none_if_empty(s(p, "/status/podIP"))),
        json!(none_if_empty(s(p, "/spec/nodeName"))),
        json!(none_if_empty(s(p, "/status/nominatedNodeName"))),
        json!(if gates == 0 {
            "<none>".to_string()
        } else {
            format!("0/{gates}")
        }),
    ]
}

fn node_row(n: &Value) -> Vec<Value> {
    let mut status = "Unknown".to_string();
    if let Some(cs) = n.pointer("/status/conditions").and_then(Value::as_array) {
        for c in cs {
            if c.get("type").and_then(Value::as_str) == Some("Ready") {
                status = match c.get("status").and_then(Value::as_str) {
                    Some("True") => "Ready".into(),
                    Some("False") => "NotReady".into(),
                    _ => "Unknown".into(),
                };
            }
        }
    }
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| {
                    if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                        (!r.is_empty()).then(|| r.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().map(String::from)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |t: &str| {
        n.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|x| x.get("type").and_then(Value::as_str) == Some(t))
            })
            .and_then(|x| x.get("address").and_then(Value::as_str))
            .unwrap_or("")
            .to_string()
    };
    vec![
        json!(meta_str(n, "name")),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        json!(age(n)),
        json!(s(n, "/status/nodeInfo/kubeletVersion")),
        json!(none_if_empty(&addr("InternalIP"))),
        json!(none_if_empty(&addr("ExternalIP"))),
        json!(none_if_empty(s(n, "/status/nodeInfo/osImage"))),
        json!(none_if_empty(s(n, "/status/nodeInfo/kernelVersion"))),
        json!(none_if_empty(s(
            n,
            "/status/nodeInfo/containerRuntimeVersion"
        ))),
    ]
}

pub fn to_table(
    def: &ResourceDef,
    objs: &[Value],
    list_meta: Value,
    include_object: &str,
) -> Value {
    let name_col = col(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    );
    let age_col = col(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    let columns = match def.plural {
        "pods" => vec![
            name_col,
            col(
                "Ready",
                "string",
                "",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                "",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                "",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age_col,
            col("IP", "string", "", 1, "IP address allocated to the pod."),
            col(
                "Node",
                "string",
                "",
                1,
                "Name of the node this pod is assigned to.",
            ),
            col(
                "Nominated Node",
                "string",
                "",
                1,
                "Name of the node this pod is nominated to run on.",
            ),
            col("Readiness Gates", "string", "", 1, "Pod readiness gates."),
        ],
        "nodes" => vec![
            name_col,
            col("Status", "string", "", 0, "The status of the node"),
            col("Roles", "string", "", 0, "The roles of the node"),
            age_col,
            col(
                "Version",
                "string",
                "",
                0,
                "Kubelet Version reported by the node.",
            ),
            col(
                "Internal-IP",
                "string",
                "",
                1,
                "List of internal IPs for the node.",
            ),
            col(
                "External-IP",
                "string",
                "",
                1,
                "List of external IPs for the node.",
            ),
            col(
                "OS-Image",
                "string",
                "",
                1,
                "OS Image reported by the node from /etc/os-release.",
            ),
            col(
                "Kernel-Version",
                "string",
                "",
                1,
                "Kernel Version reported by the node.",
            ),
            col(
                "Container-Runtime",
                "string",
                "",
                1,
                "Container Runtime Version reported by the node.",
            ),
        ],
        _ => vec![name_col, age_col],
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let cells = match def.plural {
                "pods" => pod_row(o),
                "nodes" => node_row(o),
                _ => vec![json!(meta_str(o, "name")), json!(age(o))],
            };
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                }),
            };
            let mut row = json!({"cells": cells});
            if !object.is_null() {
                row["object"] = object;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}
