//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic merge patch
//! covering the list merge keys kubectl and kubelet rely on.

use crate::util::ApiError;
use serde_json::{Map, Value};

pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// patchMergeKey for list fields with patchStrategy=merge (by field name; good enough
/// for the core types this double serves).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" | "addresses" => "type",
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "imagePullSecrets" => "name",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "resourceClaims" => "name",
        _ => return None,
    })
}

/// Primitive lists merged as sets.
fn merge_primitive(field: &str) -> bool {
    matches!(field, "finalizers")
}

pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut np = p.clone();
        np.remove("$patch");
        *target = Value::Object(np);
        return Ok(());
    }
    if p.get("$patch").and_then(Value::as_str) == Some("delete") {
        *target = Value::Object(Map::new());
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (t.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (v, merge_key(k)) {
            (Value::Array(items), Some(key)) => {
                let cur = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                if !cur.is_array() {
                    *cur = Value::Array(vec![]);
                }
                let cur = cur.as_array_mut().expect("array");
                for item in items {
                    let directive = item.get("$patch").and_then(Value::as_str);
                    let kv = item.get(key);
                    let pos = kv.and_then(|kv| cur.iter().position(|c| c.get(key) == Some(kv)));
                    match (directive, pos) {
                        (Some("delete"), Some(i)) => {
                            cur.remove(i);
                        }
                        (Some("delete"), None) => {}
                        (_, Some(i)) => strategic_merge(&mut cur[i], item)?,
                        (_, None) => {
                            let mut n = Value::Null;
                            strategic_merge(&mut n, item)?;
                            cur.push(n);
                        }
                    }
                }
            }
            (Value::Array(items), None) if merge_primitive(k) => {
                let cur = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                if let Value::Array(cur) = cur {
                    for i in items {
                        if !cur.contains(i) {
                            cur.push(i.clone());
                        }
                    }
                }
            }
            (Value::Object(_), _) => {
                strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v)?;
            }
            _ => {
                t.insert(k.clone(), strip_directives(v));
            }
        }
    }
    Ok(())
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        o => o.clone(),
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(Vec<String>, String), ApiError> {
    if path.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "the root path cannot be patched",
        ));
    }
    let toks: Vec<String> = path
        .strip_prefix('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {path:?}")))?
        .split('/')
        .map(unescape)
        .collect();
    let (last, parent) = toks.split_last().expect("non-empty");
    Ok((parent.to_vec(), last.clone()))
}

fn resolve<'a>(v: &'a mut Value, toks: &[String], path: &str) -> Result<&'a mut Value, ApiError> {
    let mut cur = v;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(cur)
}

fn missing(path: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!(
            "the server rejected our request due to an error in our request: doc is missing path: {path:?}"
        ),
    )
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    match resolve(doc, &parent, path)? {
        Value::Object(m) => m.remove(&last).ok_or_else(|| missing(path)),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing(path))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing(path))
            }
        }
        _ => Err(missing(path)),
    }
}

fn add_at(doc: &mut Value, path: &str, val: Value, replace: bool) -> Result<(), ApiError> {
    let (parent, last) = split_pointer(path)?;
    match resolve(doc, &parent, path)? {
        Value::Object(m) => {
            if replace && !m.contains_key(&last) {
                return Err(missing(path));
            }
            m.insert(last, val);
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(val);
            } else {
                let i: usize = last.parse().map_err(|_| missing(path))?;
                if replace {
                    *a.get_mut(i).ok_or_else(|| missing(path))? = val;
                } else if i <= a.len() {
                    a.insert(i, val);
                } else {
                    return Err(missing(path));
                }
            }
        }
        _ => return Err(missing(path)),
    }
    Ok(())
}

fn get_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    if path.is_empty() {
        return Ok(doc.clone());
    }
    let (parent, last) = split_pointer(path)?;
    let mut toks = parent;
    toks.push(last);
    resolve(doc, &toks, path).map(|v| v.clone())
}

pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        let from = op.get("from").and_then(Value::as_str).unwrap_or("");
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match kind {
            "add" => add_at(doc, path, value, false)?,
            "replace" => add_at(doc, path, value, true)?,
            "remove" => {
                remove_at(doc, path)?;
            }
            "move" => {
                let v = remove_at(doc, from)?;
                add_at(doc, path, v, false)?;
            }
            "copy" => {
                let v = get_at(doc, from)?;
                add_at(doc, path, v, false)?;
            }
            "test" => {
                if get_at(doc, path)? != value {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: testing value {path} failed"
                        ),
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!("Unexpected kind: {other}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge() {
        let mut t = json!({"spec": {"unschedulable": true, "x": 1}});
        merge_patch(&mut t, &json!({"spec": {"unschedulable": null}}));
        assert_eq!(t, json!({"spec": {"x": 1}}));
    }

    #[test]
    fn strategic_conditions() {
        let mut t = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}]},
            "spec": {"taints": [{"key": "a"}]}});
        strategic_merge(
            &mut t,
            &json!({"status": {"$setElementOrder/conditions": [{"type": "Ready"}],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "New", "status": "True"}]},
                "spec": {"taints": [{"key": "b"}]}}),
        )
        .unwrap();
        assert_eq!(t["status"]["conditions"][0]["status"], "True");
        assert_eq!(t["status"]["conditions"][1]["type"], "MemoryPressure");
        assert_eq!(t["status"]["conditions"][2]["type"], "New");
        assert_eq!(t["spec"]["taints"], json!([{"key": "b"}]));
        strategic_merge(
            &mut t,
            &json!({"status": {"conditions": [{"type": "New", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(t["status"]["conditions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn jsonpatch() {
        let mut t = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": 2},
                {"op": "test", "path": "/b/c", "value": 2},
                {"op": "remove", "path": "/a/0"},
                {"op": "add", "path": "/b/d~1e", "value": true}
            ]),
        )
        .unwrap();
        assert_eq!(t, json!({"a": [2, 3], "b": {"c": 2, "d/e": true}}));
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/zz"}])).is_err());
    }
}
