//! The in-process control loop the fleet rehearsal needs (opt-in with `--controllers`):
//! a scheduler, the ReplicaSet controller with the garbage collector's part for their
//! pods, and the node lifecycle controller. One tick runs them in that order under the
//! state lock, every `--controller-interval-ms`. Deterministic: objects are visited in
//! (namespace, name) order and ties are broken by name.

use crate::nodelifecycle::NodeLifecycle;
use crate::store::State;
use serde_json::{Value, json};
use std::time::Duration;

/// Which controllers run, and their settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scheduler: bool,
    pub replicaset: bool,
    pub nodelifecycle: bool,
    pub interval: Duration,
    /// `--node-monitor-grace-period` of kube-controller-manager.
    pub monitor_grace: Duration,
    /// `--node-startup-grace-period`.
    pub startup_grace: Duration,
}

impl Settings {
    /// Parse `--controllers`: a comma-separated subset of scheduler, replicaset,
    /// nodelifecycle, or `all`; empty = none.
    pub fn parse_list(&mut self, list: &str) -> Result<(), String> {
        for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match c {
                "all" => {
                    self.scheduler = true;
                    self.replicaset = true;
                    self.nodelifecycle = true;
                }
                "scheduler" => self.scheduler = true,
                "replicaset" => self.replicaset = true,
                "nodelifecycle" => self.nodelifecycle = true,
                _ => {
                    return Err(format!(
                        "--controllers: unknown controller {c:?} (scheduler, replicaset, nodelifecycle, all)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether any controller runs.
    pub fn any(&self) -> bool {
        self.scheduler || self.replicaset || self.nodelifecycle
    }
}

/// What the controllers did, for `GET /debug/fake-apiserver/controllers`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub bindings: u64,
    pub unschedulable: u64,
    pub pods_created: u64,
    pub pods_deleted: u64,
    pub nodes_marked_unknown: u64,
}

/// The controllers' own memory between ticks.
pub struct Controllers {
    pub settings: Settings,
    pub stats: Stats,
    lifecycle: NodeLifecycle,
}

impl Controllers {
    /// Controllers with the given settings and no history.
    pub fn new(settings: Settings) -> Self {
        let lifecycle = NodeLifecycle::new(settings.monitor_grace, settings.startup_grace);
        Controllers {
            settings,
            stats: Stats::default(),
            lifecycle,
        }
    }

    /// One pass of every enabled controller at wall-clock `now_ms`.
    pub fn tick(&mut self, st: &mut State, now_ms: i64) {
        if self.settings.nodelifecycle {
            self.lifecycle.tick(st, now_ms, &mut self.stats);
        }
        if self.settings.replicaset {
            crate::replicaset::tick(st, &mut self.stats);
        }
        if self.settings.scheduler {
            crate::scheduler::tick(st, &mut self.stats);
        }
    }

    /// The debug document.
    pub fn stats_json(&self) -> Value {
        let s = &self.settings;
        json!({
            "scheduler": s.scheduler,
            "replicaset": s.replicaset,
            "nodelifecycle": s.nodelifecycle,
            "nodeMonitorGracePeriodSeconds": s.monitor_grace.as_secs_f64(),
            "bindings": self.stats.bindings,
            "unschedulableAttempts": self.stats.unschedulable,
            "podsCreated": self.stats.pods_created,
            "podsDeleted": self.stats.pods_deleted,
            "nodesMarkedUnknown": self.stats.nodes_marked_unknown,
        })
    }
}

/// A resource.Quantity in milli-units (`100m` → 100, `1` → 1000, `1Ki` → 1_024_000),
/// rounded up like `MilliValue`. `None` when unparsable.
pub fn milli(q: &Value) -> Option<i128> {
    let s = match q {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some((n * mult * 1000.0).ceil() as i128)
}

/// Phase Succeeded or Failed.
pub fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// Set (or replace) a condition of `type` in `obj.status.conditions`; returns whether
/// status, reason or message changed (lastTransitionTime moves only on status change).
pub fn set_condition(obj: &mut Value, cond: Value, now: &str) -> bool {
    let ty = cond["type"].clone();
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    if !obj["status"].get("conditions").is_some_and(Value::is_array) {
        obj["status"]["conditions"] = json!([]);
    }
    let Some(conds) = obj["status"]["conditions"].as_array_mut() else {
        return false;
    };
    let mut new = cond;
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(old) => {
            let same = |k: &str| old.get(k) == new.get(k);
            if same("status") && same("reason") && same("message") {
                return false;
            }
            new["lastTransitionTime"] = if same("status") {
                old.get("lastTransitionTime").cloned().unwrap_or(json!(now))
            } else {
                json!(now)
            };
            *old = new;
        }
        None => {
            new["lastTransitionTime"] = json!(now);
            conds.push(new);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(milli(&json!("100m")), Some(100));
        assert_eq!(milli(&json!("2")), Some(2000));
        assert_eq!(milli(&json!(2)), Some(2000));
        assert_eq!(milli(&json!("0.5")), Some(500));
        assert_eq!(milli(&json!("1Ki")), Some(1_024_000));
        assert_eq!(milli(&json!("128Mi")), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(milli(&json!("1G")), Some(1_000_000_000_000));
        assert_eq!(milli(&json!("1e3")), Some(1_000_000));
        assert_eq!(milli(&json!("12x")), None);
    }

    #[test]
    fn controller_list() {
        let mut s = Settings {
            scheduler: false,
            replicaset: false,
            nodelifecycle: false,
            interval: Duration::from_millis(200),
            monitor_grace: Duration::from_secs(40),
            startup_grace: Duration::from_secs(60),
        };
        s.parse_list("").unwrap();
        assert!(!s.any());
        s.parse_list("scheduler, replicaset").unwrap();
        assert!(s.scheduler && s.replicaset && !s.nodelifecycle);
        assert!(s.parse_list("kcm").is_err());
    }
}
