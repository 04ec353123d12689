//! Figures read from what the system logged: the fake Marathon's event log (kills, launches,
//! health) and the agents' JSON logs ("task kill finished": evictions, 429 retries).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// The fake Marathon's events with `t` in [from, to].
pub fn events(path: &Path, from: f64, to: f64) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["t"].as_f64().is_some_and(|t| t >= from && t <= to))
        .collect()
}

/// Σ over hosts restarted in the window of (drain: kill → terminal of the old task) + (start to
/// healthy: launch → first healthy of the new task), and the per-host maximum of each.
pub fn roll_budget(events: &[Value]) -> (f64, f64, f64) {
    let mut killed: BTreeMap<String, f64> = BTreeMap::new();
    let mut launched: BTreeMap<String, f64> = BTreeMap::new();
    let (mut sum, mut max_drain, mut max_start) = (0.0f64, 0.0f64, 0.0f64);
    for e in events {
        let (Some(t), Some(task)) = (e["t"].as_f64(), e["task"].as_str()) else {
            continue;
        };
        match e["event"].as_str() {
            Some("kill") if e["reason"] == "Upgrading" => {
                killed.insert(task.to_string(), t);
            }
            Some("terminal") => {
                if let Some(k) = killed.remove(task) {
                    sum += t - k;
                    max_drain = max_drain.max(t - k);
                }
            }
            Some("launched") => {
                launched.insert(task.to_string(), t);
            }
            Some("health") if e["healthy"] == true => {
                if let Some(l) = launched.remove(task) {
                    sum += t - l;
                    max_start = max_start.max(t - l);
                }
            }
            _ => {}
        }
    }
    (sum, max_drain, max_start)
}

/// The agents' "task kill finished" summaries under `work` (every task sandbox), as
/// (sandbox path, fields).
pub fn kill_reports(work: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Ok(hosts) = std::fs::read_dir(work.join("hosts")) else {
        return out;
    };
    for h in hosts.flatten() {
        let Ok(tasks) = std::fs::read_dir(h.path().join("sandboxes")) else {
            continue;
        };
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("stderr")).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("task kill finished")) {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    let fields = if v["fields"].is_object() {
                        v["fields"].clone()
                    } else {
                        v
                    };
                    out.push((t.path().display().to_string(), fields));
                }
            }
        }
    }
    out
}

/// (evictions, 429 retries, evictions forced past a PDB) summed over reports: `evicted`, every
/// numeric field whose name speaks of 429s or throttling, and `forced_past_pdb`.
pub fn evictions_and_429(reports: &[(String, Value)]) -> (u64, u64, u64) {
    let mut ev = 0;
    let mut retries = 0;
    let mut forced = 0;
    for (_, f) in reports {
        let Some(o) = f.as_object() else { continue };
        for (k, v) in o {
            let n = v.as_u64().unwrap_or(0);
            if k == "evicted" {
                ev += n;
            } else if k == "forced_past_pdb" {
                forced += n;
            } else if k.contains("429") || k.contains("throttl") || k.contains("too_many") {
                retries += n;
            }
        }
    }
    (ev, retries, forced)
}
