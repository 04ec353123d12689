//! `marathon status`: the app's tasks as a table or one JSON object (pure rendering).

use super::strategy;
use serde_json::{Value, json};

/// One task row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Marathon task id.
    pub id: String,
    /// Mesos agent hostname.
    pub host: String,
    /// Mesos task state, e.g. `TASK_RUNNING`.
    pub state: String,
    /// `healthy`, `unhealthy`, `unknown` (no result yet) or `none` (the app has no health check).
    pub health: String,
    /// Lease CPUs of the task.
    pub cpus: Option<f64>,
    /// Lease memory of the task, MiB.
    pub mem_mib: Option<f64>,
    /// When the task started (ISO-8601), if it did.
    pub started_at: Option<String>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// App id.
    pub app_id: String,
    /// Marathon base URL.
    pub marathon_url: String,
    /// Requested instances.
    pub instances: u64,
    /// Lease per instance from the app definition.
    pub cpus: Option<f64>,
    /// Lease per instance from the app definition, MiB.
    pub mem_mib: Option<f64>,
    /// App version.
    pub version: Option<String>,
    /// Running deployments for the app.
    pub deployments: Vec<String>,
    /// Instances waiting in Marathon's launch queue.
    pub waiting: u64,
    /// Rejection reasons (with declined offers) of the waiting instances.
    pub waiting_reasons: Vec<String>,
    /// Tasks.
    pub tasks: Vec<TaskRow>,
}

fn health_of(task: &Value, app_has_checks: bool) -> String {
    let results = task
        .get("healthCheckResults")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if results.is_empty() {
        return if app_has_checks { "unknown" } else { "none" }.to_string();
    }
    let all_alive = results
        .iter()
        .all(|r| r.get("alive").and_then(Value::as_bool) == Some(true));
    if all_alive { "healthy" } else { "unhealthy" }.to_string()
}

/// Builds the status from `GET /v2/apps/{id}` (`app`), its tasks and the queue.
pub fn build(
    app_id: &str,
    marathon_url: &str,
    app: &Value,
    tasks: &Value,
    queue: &Value,
) -> Status {
    let app_has_checks = app
        .get("healthChecks")
        .and_then(Value::as_array)
        .is_some_and(|h| !h.is_empty());
    let app_cpus = app.get("cpus").and_then(Value::as_f64);
    let app_mem = app.get("mem").and_then(Value::as_f64);
    let rows = tasks
        .get("tasks")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let s = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);
                    TaskRow {
                        id: s("id").unwrap_or_default(),
                        host: s("host").unwrap_or_default(),
                        state: s("state").unwrap_or_else(|| "unknown".into()),
                        health: health_of(t, app_has_checks),
                        cpus: t.get("cpus").and_then(Value::as_f64).or(app_cpus),
                        mem_mib: t.get("mem").and_then(Value::as_f64).or(app_mem),
                        started_at: s("startedAt"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let entry = strategy::queue_entry(queue, app_id);
    let waiting = entry
        .and_then(|e| e.get("count"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let waiting_reasons = entry
        .and_then(|e| e.get("processedOffersSummary"))
        .and_then(|s| s.get("rejectSummaryLastOffers"))
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter(|r| r.get("declined").and_then(Value::as_u64).unwrap_or(0) > 0)
                .filter_map(|r| r.get("reason").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let deployments = strategy::strings_of(app, "deployments", "id");
    Status {
        app_id: app_id.to_string(),
        marathon_url: marathon_url.to_string(),
        instances: app.get("instances").and_then(Value::as_u64).unwrap_or(0),
        cpus: app_cpus,
        mem_mib: app_mem,
        version: app
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_string),
        deployments,
        waiting,
        waiting_reasons,
        tasks: rows,
    }
}

/// `2.0` → `2`, `0.5` → `0.5`, missing → `-`.
pub fn num(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) => format!("{x}"),
    }
}

/// The text report: a summary line, then a table with one task per row.
pub fn render_text(s: &Status) -> String {
    let running = s.tasks.iter().filter(|t| t.state == "TASK_RUNNING").count();
    let healthy = s.tasks.iter().filter(|t| t.health == "healthy").count();
    let mut out = format!(
        "app {} on {}: {} instance(s) requested, lease cpus {} mem {} MiB each; {} running, {} healthy",
        s.app_id,
        s.marathon_url,
        s.instances,
        num(s.cpus),
        num(s.mem_mib),
        running,
        healthy
    );
    if s.waiting > 0 {
        let why = if s.waiting_reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.waiting_reasons.join(", "))
        };
        out.push_str(&format!("; {} waiting for an offer{why}", s.waiting));
    }
    if s.deployments.is_empty() {
        out.push_str("; no deployment running\n");
    } else {
        out.push_str(&format!(
            "; deployment running: {}\n",
            s.deployments.join(", ")
        ));
    }
    if s.waiting > 0
        && s.waiting_reasons
            .iter()
            .any(|r| r == "UnfulfilledConstraint")
    {
        out.push_str(&format!(
            "warning: {} instance(s) cannot be placed (hostname UNIQUE, no free host); the deployment will not finish and later changes get 409 until you scale down with --force\n",
            s.waiting
        ));
    }
    let header = ["TASK", "HOST", "STATE", "HEALTH", "CPUS", "MEM(MiB)"];
    let rows: Vec<[String; 6]> = s
        .tasks
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.host.clone(),
                t.state.clone(),
                t.health.clone(),
                num(t.cpus),
                num(t.mem_mib),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(&header.map(str::to_string)));
    for r in &rows {
        out.push_str(&line(r));
    }
    if rows.is_empty() {
        out.push_str("(no tasks)\n");
    }
    out
}

/// The JSON report (one object).
pub fn render_json(s: &Status) -> Value {
    json!({
        "app": s.app_id,
        "marathon_url": s.marathon_url,
        "version": s.version,
        "instances": s.instances,
        "lease": { "cpus": s.cpus, "mem_mib": s.mem_mib },
        "running": s.tasks.iter().filter(|t| t.state == "TASK_RUNNING").count(),
        "healthy": s.tasks.iter().filter(|t| t.health == "healthy").count(),
        "waiting": s.waiting,
        "waiting_reasons": s.waiting_reasons,
        "deployments": s.deployments,
        "tasks": s.tasks.iter().map(|t| json!({
            "id": t.id,
            "host": t.host,
            "state": t.state,
            "health": t.health,
            "cpus": t.cpus,
            "mem_mib": t.mem_mib,
            "started_at": t.started_at,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let app = json!({
            "id": "/k8s/kubelet", "instances": 3, "cpus": 2.0, "mem": 4096.0, "version": "v1",
            "healthChecks": [{"protocol": "MESOS_HTTP"}],
            "deployments": [{"id": "dep-1"}]
        });
        let tasks = json!({"tasks": [
            {"id": "k8s_kubelet.instance-a._app.1", "host": "node-1", "state": "TASK_RUNNING",
             "startedAt": "2026-01-01T00:00:00.000Z", "healthCheckResults": [{"alive": true}]},
            {"id": "k8s_kubelet.instance-b._app.1", "host": "n2", "state": "TASK_STAGING",
             "healthCheckResults": [], "cpus": 0.5, "mem": 512.5},
            {"id": "k8s_kubelet.instance-c._app.1", "host": "n3", "state": "TASK_RUNNING",
             "healthCheckResults": [{"alive": false}]}
        ]});
        let queue = json!({"queue": [{"count": 1, "app": {"id": "/k8s/kubelet"},
            "processedOffersSummary": {"rejectSummaryLastOffers": [
                {"reason": "UnfulfilledRole", "declined": 0, "processed": 3},
                {"reason": "UnfulfilledConstraint", "declined": 3, "processed": 3}]}}]});
        build("/k8s/kubelet", "http://m:8080", &app, &tasks, &queue)
    }

    #[test]
    fn builds_rows_with_health_and_lease() {
        let s = sample();
        assert_eq!(s.tasks.len(), 3);
        assert_eq!(s.tasks[0].health, "healthy");
        assert_eq!(s.tasks[1].health, "unknown");
        assert_eq!(s.tasks[2].health, "unhealthy");
        assert_eq!(s.tasks[0].cpus, Some(2.0));
        assert_eq!(s.tasks[1].mem_mib, Some(512.5));
        assert_eq!(s.waiting, 1);
        assert_eq!(s.waiting_reasons, ["UnfulfilledConstraint"]);
        assert_eq!(s.deployments, ["dep-1"]);
    }

    #[test]
    fn renders_aligned_table() {
        let text = render_text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("app /k8s/kubelet on http://m:8080: 3 instance(s)"));
        assert!(lines[0].contains("lease cpus 2 mem 4096 MiB"));
        assert!(lines[0].contains("2 running, 1 healthy"));
        assert!(lines[0].contains("1 waiting for an offer (UnfulfilledConstraint)"));
        assert!(lines[0].contains("deployment running: dep-1"));
        assert!(lines[1].starts_with("warning: 1 instance(s) cannot be placed"));
        let header = lines[2];
        assert!(header.starts_with("TASK "));
        let host_col = header.find("HOST").unwrap();
        let health_col = header.find("HEALTH").unwrap();
        for row in &lines[3..] {
            assert_eq!(&row[host_col - 2..host_col], "  ");
            assert_ne!(row.as_bytes()[host_col], b' ');
            assert_ne!(row.as_bytes()[health_col], b' ');
        }
        assert!(
            lines[3].contains("node-1")
                && lines[3].contains("healthy")
                && lines[3].ends_with("4096")
        );
        assert!(lines[4].contains("TASK_STAGING") && lines[4].ends_with("512.5"));
    }

    #[test]
    fn renders_empty_and_json() {
        let s = build(
            "/a",
            "http://m",
            &json!({"instances": 0}),
            &json!({"tasks": []}),
            &json!({"queue": []}),
        );
        let text = render_text(&s);
        assert!(text.contains("no deployment running"));
        assert!(text.ends_with("(no tasks)\n"));
        let j = render_json(&sample());
        assert_eq!(j["tasks"][0]["host"], "node-1");
        assert_eq!(j["running"], 2);
        assert_eq!(j["healthy"], 1);
        assert_eq!(j["lease"]["cpus"], 2.0);
        assert_eq!(j["waiting_reasons"][0], "UnfulfilledConstraint");
    }

    #[test]
    fn numbers_print_without_trailing_zero() {
        assert_eq!(num(Some(2.0)), "2");
        assert_eq!(num(Some(0.25)), "0.25");
        assert_eq!(num(None), "-");
    }
}
