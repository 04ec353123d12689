//! `--config` KubeletConfiguration file: JSON, or a small YAML subset (top-level scalars and
//! one level of nested maps; lists and deeper nesting are ignored). Only the fields the fake
//! interprets are read; flags given on the command line override them.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

fn unquote(s: &str) -> String {
    let s = s.trim();
    let s = match s.find(" #") {
        Some(i) if !s.starts_with('"') && !s.starts_with('\'') => s[..i].trim(),
        _ => s,
    };
    if s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')))
    {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

fn yaml_subset(text: &str) -> Result<Value, String> {
    let mut top = Map::new();
    let mut current: Option<(String, Map<String, Value>)> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let indented = line.len() != trimmed.len();
        if trimmed.starts_with("- ") || trimmed == "-" {
            continue; // list items are not interpreted
        }
        let Some((k, v)) = trimmed.split_once(':') else {
            return Err(format!("cannot parse line {raw:?}"));
        };
        let (k, v) = (unquote(k), v.trim());
        if indented {
            if let Some((_, m)) = current.as_mut() {
                m.insert(k, Value::String(unquote(v)));
            }
            continue;
        }
        if let Some((name, m)) = current.take() {
            top.insert(name, Value::Object(m));
        }
        if v.is_empty() {
            current = Some((k, Map::new()));
        } else if v == "{}" {
            top.insert(k, Value::Object(Map::new()));
        } else {
            let s = unquote(v);
            let val = s
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::String(s));
            top.insert(k, val);
        }
    }
    if let Some((name, m)) = current.take() {
        top.insert(name, Value::Object(m));
    }
    Ok(Value::Object(top))
}

fn map_to_flag(v: &Value, sep: char) -> Option<String> {
    let m = v.as_object()?;
    Some(
        m.iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{k}{sep}{s}")
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Translate the interpreted KubeletConfiguration fields into flag values (name -> value).
pub fn load(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "failed to load Kubelet config file {}, error: {e}",
            path.display()
        )
    })?;
    let v = match serde_json::from_str::<Value>(&text) {
        Ok(v) => v,
        Err(_) => yaml_subset(&text).map_err(|e| {
            format!(
                "failed to load Kubelet config file {}, error: {e}",
                path.display()
            )
        })?,
    };
    if v.get("kind").and_then(Value::as_str) != Some("KubeletConfiguration") {
        return Err(format!(
            "failed to load Kubelet config file {}, error: failed to decode: Object 'Kind' is missing or not KubeletConfiguration",
            path.display()
        ));
    }
    let mut out = BTreeMap::new();
    let scalar = |k: &str| -> Option<String> {
        match v.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    for (field, flag) in [
        ("maxPods", "max-pods"),
        ("healthzPort", "healthz-port"),
        ("healthzBindAddress", "healthz-bind-address"),
        ("staticPodPath", "pod-manifest-path"),
        ("nodeStatusUpdateFrequency", "node-status-update-frequency"),
    ] {
        if let Some(s) = scalar(field) {
            out.insert(flag.to_string(), s);
        }
    }
    if let Some(s) = v.get("systemReserved").and_then(|m| map_to_flag(m, '=')) {
        out.insert("system-reserved".into(), s);
    }
    if let Some(s) = v.get("kubeReserved").and_then(|m| map_to_flag(m, '=')) {
        out.insert("kube-reserved".into(), s);
    }
    // config values are bare quantities/percentages; the operator comes from the signal (<)
    if let Some(s) = v.get("evictionHard").and_then(|m| map_to_flag(m, '<')) {
        out.insert("eviction-hard".into(), s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json() {
        let d = tempfile::tempdir().unwrap();
        let y = d.path().join("c.yaml");
        std::fs::write(
            &y,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 20\nsystemReserved:\n  cpu: 500m\n  memory: \"1Gi\"\nevictionHard:\n  memory.available: 200Mi # comment\nenforceNodeAllocatable:\n- pods\n",
        )
        .unwrap();
        let m = load(&y).unwrap();
        assert_eq!(m["max-pods"], "20");
        assert_eq!(m["system-reserved"], "cpu=500m,memory=1Gi");
        assert_eq!(m["eviction-hard"], "memory.available<200Mi");
        let j = d.path().join("c.json");
        std::fs::write(
            &j,
            r#"{"kind":"KubeletConfiguration","healthzPort":0,"kubeReserved":{"cpu":"1"}}"#,
        )
        .unwrap();
        let m = load(&j).unwrap();
        assert_eq!(m["healthz-port"], "0");
        assert_eq!(m["kube-reserved"], "cpu=1");
        std::fs::write(&j, "{}").unwrap();
        assert!(load(&j).is_err());
        assert!(load(&d.path().join("missing")).is_err());
    }
}
