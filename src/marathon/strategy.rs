//! Pure arithmetic about `hostname UNIQUE`: which `upgradeStrategy` rolls one host at a time, and how
//! many hosts can take an instance (research/marathon.md §5.2–§5.4, §6).

use std::collections::BTreeSet;

use serde_json::Value;

/// Marathon's defaults when the app omits `upgradeStrategy` (`UpgradeStrategy.empty`).
pub const DEFAULT_MIN_HEALTH: f64 = 1.0;
/// Default `maximumOverCapacity`.
pub const DEFAULT_MAX_OVER: f64 = 1.0;

/// What a restart of an app with `instances` N and strategy (m, o) does under `hostname UNIQUE`
/// when every eligible host already runs an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Kills `k` old instances at a time and rolls on (k = N − ceil(N·m), 1 ≤ k < N).
    Rolls {
        /// Instances restarted together.
        at_once: u64,
    },
    /// `ceil(N·m) = N`: no old instance may die before a new one is healthy, and a new one needs a
    /// spare host. Without one the deployment waits forever.
    Stalls {
        /// `ceil(N·m)`.
        min_healthy: u64,
    },
    /// `ceil(N·m) = 0` with N ≥ 2: every instance (every Kubernetes node) is killed at once.
    AllAtOnce,
    /// Nothing to say (no instances).
    Empty,
}

/// Marathon's `minHealthy = ceil(N · minimumHealthCapacity)` in the same double arithmetic.
pub fn min_healthy(instances: u64, min_health_capacity: f64) -> u64 {
    let v = (instances as f64 * min_health_capacity).ceil();
    if v <= 0.0 { 0 } else { v as u64 }
}

/// Classifies a strategy for `instances` on exactly as many eligible hosts.
pub fn verdict(instances: u64, min_health_capacity: f64) -> Verdict {
    if instances == 0 {
        return Verdict::Empty;
    }
    let mh = min_healthy(instances, min_health_capacity);
    if mh >= instances {
        Verdict::Stalls { min_healthy: mh }
    } else if mh == 0 && instances >= 2 {
        Verdict::AllAtOnce
    } else {
        Verdict::Rolls {
            at_once: instances - mh,
        }
    }
}

/// The `minimumHealthCapacity` that rolls one host at a time: `(N − 1.5)/N`, rounded to at most four
/// decimals while keeping `ceil(N·m) = N − 1` (0 for N ≤ 1, where one instance must restart in place).
pub fn one_at_a_time(instances: u64) -> f64 {
    if instances <= 1 {
        return 0.0;
    }
    let n = instances as f64;
    let exact = (n - 1.5) / n;
    for decimals in [2, 3, 4, 6, 8] {
        let scale = 10f64.powi(decimals);
        let rounded = (exact * scale).round() / scale;
        if min_healthy(instances, rounded) == instances - 1 {
            return rounded;
        }
    }
    exact
}

/// Warnings for an app about to be deployed (or scaled) with `instances`, strategy (m, o) and UNIQUE.
pub fn strategy_warnings(
    app_id: &str,
    instances: u64,
    min_health: Option<f64>,
    max_over: Option<f64>,
    unique: bool,
) -> Vec<String> {
    if !unique {
        return Vec::new();
    }
    let m = min_health.unwrap_or(DEFAULT_MIN_HEALTH);
    let shown = |v: Option<f64>, d: f64| match v {
        Some(v) => format!("{v}"),
        None => format!("{d} (Marathon's default)"),
    };
    let suggestion = one_at_a_time(instances);
    let fix = format!(
        "to roll one host at a time set \"upgradeStrategy\": {{\"minimumHealthCapacity\": {suggestion}, \"maximumOverCapacity\": 0}} (that is (N-1.5)/N for N={instances}; recompute it whenever instances changes)"
    );
    match verdict(instances, m) {
        Verdict::Stalls { min_healthy } => vec![format!(
            "{app_id}: upgradeStrategy minimumHealthCapacity {} with {instances} instances keeps all of them running during a restart (ceil({instances} x {m}) = {min_healthy}), so each replacement needs a spare host; under hostname UNIQUE with no spare host the restart waits forever and every later change gets 409 (maximumOverCapacity {}); {fix}",
            shown(min_health, DEFAULT_MIN_HEALTH),
            shown(max_over, DEFAULT_MAX_OVER),
        )],
        Verdict::AllAtOnce => vec![format!(
            "{app_id}: upgradeStrategy minimumHealthCapacity {m} with {instances} instances kills every instance at once on a restart: all Kubernetes nodes drop together; {fix}"
        )],
        Verdict::Rolls { .. } | Verdict::Empty => Vec::new(),
    }
}

/// `true` when the app's `constraints` contain `["hostname", "UNIQUE"]`.
pub fn has_unique_hostname(app: &Value) -> bool {
    app.get("constraints")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.as_array().is_some_and(|p| {
                    p.first().and_then(Value::as_str) == Some("hostname")
                        && p.get(1).and_then(Value::as_str) == Some("UNIQUE")
                })
            })
        })
}

/// `(minimumHealthCapacity, maximumOverCapacity)` as given by the app (None when absent).
pub fn app_strategy(app: &Value) -> (Option<f64>, Option<f64>) {
    let us = app.get("upgradeStrategy");
    (
        us.and_then(|u| u.get("minimumHealthCapacity"))
            .and_then(Value::as_f64),
        us.and_then(|u| u.get("maximumOverCapacity"))
            .and_then(Value::as_f64),
    )
}

/// How many hosts can run an instance of the app, as far as Marathon's answers tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCount {
    /// Hosts known to satisfy UNIQUE for this app.
    pub hosts: usize,
    /// `true` when the number is the real ceiling (explicit `--max-hosts`, or Marathon's queue shows
    /// instances waiting because every offer was rejected for `UnfulfilledConstraint`); `false` when it
    /// is only a lower bound (the hosts currently running an instance).
    pub exact: bool,
    /// Where the number came from, for the warning.
    pub source: String,
}

/// The string `field` of every object in the array `array` of `v` (e.g. each task's `host`).
pub fn strings_of<C: FromIterator<String>>(v: &Value, array: &str, field: &str) -> C {
    v.get(array)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.get(field).and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The entry of `GET /v2/queue` for `app_id`, if any instance of it waits for offers.
pub fn queue_entry<'a>(queue: &'a Value, app_id: &str) -> Option<&'a Value> {
    queue.get("queue")?.as_array()?.iter().find(|e| {
        e.get("app")
            .and_then(|a| a.get("id"))
            .and_then(Value::as_str)
            == Some(app_id)
    })
}

/// Counts eligible hosts from `GET /v2/apps/{id}/tasks` and `GET /v2/queue?embed=lastUnusedOffers`.
pub fn count_hosts(app_id: &str, tasks: &Value, queue: &Value) -> HostCount {
    let mut hosts: BTreeSet<String> = strings_of(tasks, "tasks", "host");
    let running = hosts.len();
    let Some(entry) = queue_entry(queue, app_id) else {
        return HostCount {
            hosts: running,
            exact: false,
            source: format!(
                "{running} host(s) currently run an instance; Marathon's queue has nothing waiting, so spare hosts cannot be counted"
            ),
        };
    };
    let waiting = entry.get("count").and_then(Value::as_u64).unwrap_or(0);
    let constraint_declined = entry
        .get("processedOffersSummary")
        .and_then(|s| s.get("rejectSummaryLastOffers"))
        .and_then(Value::as_array)
        .and_then(|rs| {
            rs.iter()
                .find(|r| r.get("reason").and_then(Value::as_str) == Some("UnfulfilledConstraint"))
        })
        .and_then(|r| r.get("declined"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    // Offers rejected only for the constraint come from hosts that already run an instance.
    let mut offered = 0usize;
    if let Some(offers) = entry.get("lastUnusedOffers").and_then(Value::as_array) {
        for o in offers {
            let reasons: Vec<&str> = o
                .get("reason")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if reasons == ["UnfulfilledConstraint"]
                && let Some(h) = o
                    .get("offer")
                    .and_then(|of| of.get("hostname"))
                    .and_then(Value::as_str)
            {
                offered += 1;
                hosts.insert(h.to_string());
            }
        }
    }
    if waiting > 0 && constraint_declined > 0 {
        HostCount {
            hosts: hosts.len(),
            exact: true,
            source: format!(
                "Marathon's queue: {waiting} instance(s) already waiting, {constraint_declined} offer(s) rejected for UnfulfilledConstraint{}",
                if offered > 0 {
                    format!(" from {offered} host(s) that already run one")
                } else {
                    String::new()
                }
            ),
        }
    } else {
        HostCount {
            hosts: hosts.len(),
            exact: false,
            source: format!(
                "{running} host(s) currently run an instance; {waiting} instance(s) waiting in Marathon's queue for other reasons"
            ),
        }
    }
}

/// The warning for scaling to `target` instances when fewer hosts are known to take one.
pub fn scale_warning(app_id: &str, target: u64, count: &HostCount) -> Option<String> {
    let hosts = count.hosts as u64;
    if target <= hosts {
        return None;
    }
    let extra = target - hosts;
    let consequence = "Marathon would leave the extra instance(s) waiting forever (hostname UNIQUE allows one per host), the scale deployment would never finish, and every later deploy or scale of the app would fail with 409 (locked) until forced";
    Some(if count.exact {
        format!(
            "{app_id}: scaling to {target} instances but only {hosts} host(s) can run one ({}); {consequence}. Scale to at most {hosts}, or add Mesos agents first.",
            count.source
        )
    } else {
        format!(
            "{app_id}: scaling to {target} instances needs {extra} more host(s) than the {hosts} known to run one ({}); if fewer than {target} eligible Mesos agents exist, {consequence}. Pass --max-hosts to check against the real number.",
            count.source
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_at_a_time_matches_research_examples() {
        assert_eq!(one_at_a_time(3), 0.5);
        assert_eq!(one_at_a_time(5), 0.7);
        assert_eq!(one_at_a_time(10), 0.85);
        assert_eq!(one_at_a_time(2), 0.25);
        assert_eq!(one_at_a_time(1), 0.0);
        assert_eq!(one_at_a_time(0), 0.0);
    }

    #[test]
    fn one_at_a_time_always_kills_exactly_one() {
        for n in 2..=2000u64 {
            let m = one_at_a_time(n);
            assert_eq!(min_healthy(n, m), n - 1, "n={n} m={m}");
            assert_eq!(verdict(n, m), Verdict::Rolls { at_once: 1 });
        }
    }

    #[test]
    fn rounded_up_fractions_stall_as_in_research() {
        // 0.67 for N=3 and 0.86 for N=7 round up: ceil = N, the restart stalls.
        assert_eq!(verdict(3, 0.67), Verdict::Stalls { min_healthy: 3 });
        assert_eq!(verdict(7, 0.86), Verdict::Stalls { min_healthy: 7 });
        // d2iq #3546: N=5 with 0.8 rolls one at a time, 0.9 stalls.
        assert_eq!(verdict(5, 0.8), Verdict::Rolls { at_once: 1 });
        assert_eq!(verdict(5, 0.9), Verdict::Stalls { min_healthy: 5 });
        assert_eq!(verdict(4, 1.0), Verdict::Stalls { min_healthy: 4 });
        assert_eq!(verdict(4, 0.0), Verdict::AllAtOnce);
        assert_eq!(verdict(10, 0.5), Verdict::Rolls { at_once: 5 });
        assert_eq!(verdict(0, 1.0), Verdict::Empty);
    }

    #[test]
    fn warnings_only_under_unique_and_name_the_fix() {
        assert!(strategy_warnings("/a", 3, None, None, false).is_empty());
        let w = strategy_warnings("/a", 3, None, None, true);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("Marathon's default"));
        assert!(w[0].contains("\"minimumHealthCapacity\": 0.5"));
        assert!(w[0].contains("\"maximumOverCapacity\": 0"));
        assert!(strategy_warnings("/a", 3, Some(0.5), Some(0.0), true).is_empty());
        let w = strategy_warnings("/a", 5, Some(0.0), Some(0.0), true);
        assert!(w[0].contains("at once"));
        assert!(w[0].contains("0.7"));
    }

    #[test]
    fn unique_and_strategy_are_read_from_app_json() {
        let app = json!({"constraints": [["rack", "GROUP_BY"], ["hostname", "UNIQUE"]],
                         "upgradeStrategy": {"minimumHealthCapacity": 0.5}});
        assert!(has_unique_hostname(&app));
        assert_eq!(app_strategy(&app), (Some(0.5), None));
        assert!(!has_unique_hostname(
            &json!({"constraints": [["hostname", "CLUSTER", "h1"]]})
        ));
        assert!(!has_unique_hostname(&json!({})));
    }

    fn tasks(hosts: &[&str]) -> Value {
        json!({"tasks": hosts.iter().map(|h| json!({"id": format!("t-{h}"), "host": h})).collect::<Vec<_>>()})
    }

    #[test]
    fn host_count_from_tasks_only_is_a_lower_bound() {
        let c = count_hosts(
            "/k8s/kubelet",
            &tasks(&["h1", "h2", "h2"]),
            &json!({"queue": []}),
        );
        assert_eq!(c.hosts, 2);
        assert!(!c.exact);
        let w = scale_warning("/k8s/kubelet", 3, &c).unwrap();
        assert!(w.contains("--max-hosts"));
        assert!(w.contains("409"));
        assert!(scale_warning("/k8s/kubelet", 2, &c).is_none());
    }

    #[test]
    fn host_count_from_queue_constraint_rejections_is_exact() {
        let queue = json!({"queue": [{
            "count": 1,
            "app": {"id": "/k8s/kubelet"},
            "processedOffersSummary": {"rejectSummaryLastOffers": [
                {"reason": "UnfulfilledRole", "declined": 0, "processed": 3},
                {"reason": "UnfulfilledConstraint", "declined": 3, "processed": 3}
            ]},
            "lastUnusedOffers": [
                {"offer": {"hostname": "h1"}, "reason": ["UnfulfilledConstraint"]},
                {"offer": {"hostname": "h2"}, "reason": ["UnfulfilledConstraint"]},
                {"offer": {"hostname": "h3"}, "reason": ["UnfulfilledConstraint"]},
                {"offer": {"hostname": "small"}, "reason": ["InsufficientMemory"]}
            ]
        }, {"count": 5, "app": {"id": "/other"}}]});
        let c = count_hosts("/k8s/kubelet", &tasks(&["h1", "h2", "h3"]), &queue);
        assert_eq!(c.hosts, 3);
        assert!(c.exact);
        let w = scale_warning("/k8s/kubelet", 4, &c).unwrap();
        assert!(w.contains("only 3 host(s)"));
        assert!(w.contains("waiting forever"));
        assert!(scale_warning("/k8s/kubelet", 3, &c).is_none());
    }
}
