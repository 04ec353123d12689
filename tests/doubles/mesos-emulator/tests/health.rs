//! MESOS_HTTP health checks against a loopback HTTP server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn app_with_check(dir: &std::path::Path, port: u16, extra: Value) -> std::path::PathBuf {
    let mut hc = json!({"protocol": "MESOS_HTTP", "port": port, "path": "/healthz"});
    for (k, v) in extra.as_object().unwrap() {
        hc[k] = v.clone();
    }
    write_app(
        dir,
        &json!({"id": "/k8s/kubelet", "args": ["sleep", "30"], "portDefinitions": [],
                "healthChecks": [hc]}),
    )
}

fn fast<'a>(sb: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--sandbox",
        sb,
        "--health-delay",
        "0.05",
        "--health-interval",
        "0.1",
        "--health-timeout",
        "2",
        "--kill-grace",
        "1",
    ];
    v.extend_from_slice(more);
    v
}

#[test]
fn http_200_is_healthy_and_kill_reports_last_health() {
    let srv = HttpServer::start(200);
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = app_with_check(dir.path(), srv.port, json!({}));
    let mut emu = Emu::start(&app, &fast(sb.to_str().unwrap(), &[]));
    let l = emu.launched();
    assert_eq!(
        l["health_check"]["probe"],
        format!("curl http://127.0.0.1:{}/healthz", srv.port)
    );
    let h = emu.wait_event("health", Duration::from_secs(4));
    assert_eq!(h["healthy"], true);
    assert_eq!(h["status"], 200);
    assert_eq!(h["consecutive_failures"], 0);
    // 3xx also counts as healthy (200 <= code < 400) — curl -L with no Location stays on 304.
    srv.set(304);
    let h = emu.wait_event("health", Duration::from_secs(4));
    let h = if h["status"] == 200 {
        emu.wait_event("health", Duration::from_secs(4))
    } else {
        h
    };
    assert_eq!(h["status"], 304);
    assert_eq!(h["healthy"], true);
    emu.signal(libc::SIGTERM);
    let k = emu.wait_event("killing", Duration::from_secs(4));
    assert_eq!(k["reason"], "signal");
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_KILLED");
    assert_eq!(t["healthy"], true);
    emu.wait_exit(Duration::from_secs(4));
    assert!(srv.hits.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn http_503_kills_after_max_consecutive_failures() {
    let srv = HttpServer::start(503);
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = app_with_check(
        dir.path(),
        srv.port,
        json!({"gracePeriodSeconds": 0, "maxConsecutiveFailures": 3}),
    );
    let mut emu = Emu::start(&app, &fast(sb.to_str().unwrap(), &[]));
    emu.launched();
    let k = emu.wait_event("killing", Duration::from_secs(4));
    assert_eq!(k["reason"], "health_check");
    assert_eq!(k["grace_seconds"], 1.0);
    let hs = emu.seen("health");
    let fails: Vec<_> = hs
        .iter()
        .map(|h| h["consecutive_failures"].as_u64().unwrap())
        .collect();
    assert_eq!(fails, vec![1, 2, 3], "{hs:#?}");
    assert!(
        hs.iter()
            .all(|h| h["healthy"] == false && h["status"] == 503)
    );
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_KILLED");
    assert_eq!(t["healthy"], false);
    assert_eq!(t["signal"], 15);
    emu.wait_exit(Duration::from_secs(4));
    // Checks pause once the kill starts.
    assert_eq!(emu.seen("health").len(), 3);
}

#[test]
fn max_consecutive_failures_zero_kills_on_first_failure() {
    // Nothing listens: curl fails to connect, status is null.
    let port = dead_port();
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = app_with_check(
        dir.path(),
        port,
        json!({"gracePeriodSeconds": 0, "maxConsecutiveFailures": 0}),
    );
    let mut emu = Emu::start(&app, &fast(sb.to_str().unwrap(), &[]));
    emu.launched();
    emu.wait_event("killing", Duration::from_secs(4));
    let hs = emu.seen("health");
    assert_eq!(hs.len(), 1, "{hs:#?}");
    assert_eq!(hs[0]["healthy"], false);
    assert_eq!(hs[0]["status"], Value::Null);
    assert_eq!(hs[0]["consecutive_failures"], 1);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_KILLED");
    assert_eq!(t["healthy"], false);
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn grace_period_ignores_failures_until_it_expires() {
    let srv = HttpServer::start(503);
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = app_with_check(dir.path(), srv.port, json!({"maxConsecutiveFailures": 1}));
    let start = Instant::now();
    let mut emu = Emu::start(
        &app,
        &fast(sb.to_str().unwrap(), &["--health-grace", "0.8"]),
    );
    emu.launched();
    emu.wait_event("killing", Duration::from_secs(4));
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        elapsed >= 0.8,
        "killed after {elapsed}s, inside the grace period"
    );
    let hs = emu.seen("health");
    assert!(hs.len() >= 3, "{hs:#?}");
    let (ignored, counted) = hs.split_at(hs.len() - 1);
    for h in ignored {
        assert_eq!(h["in_grace_period"], true);
        assert_eq!(h["consecutive_failures"], 0);
    }
    assert_eq!(counted[0]["in_grace_period"], false);
    assert_eq!(counted[0]["consecutive_failures"], 1);
    emu.wait_event("terminal", Duration::from_secs(4));
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn first_success_ends_the_grace_period() {
    let srv = HttpServer::start(503);
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = app_with_check(
        dir.path(),
        srv.port,
        json!({"gracePeriodSeconds": 30, "maxConsecutiveFailures": 1}),
    );
    let mut emu = Emu::start(&app, &fast(sb.to_str().unwrap(), &[]));
    emu.launched();
    // Failures inside the grace period are ignored ...
    let h = emu.wait_event("health", Duration::from_secs(4));
    assert_eq!(h["in_grace_period"], true);
    let h = emu.wait_event("health", Duration::from_secs(4));
    assert_eq!(h["in_grace_period"], true);
    // ... until the first success, after which the grace period never applies again.
    srv.set(200);
    loop {
        let h = emu.wait_event("health", Duration::from_secs(4));
        if h["healthy"] == true {
            break;
        }
    }
    srv.set(503);
    let k = emu.wait_event("killing", Duration::from_secs(4));
    assert_eq!(k["reason"], "health_check");
    let last = emu.seen("health").last().cloned().unwrap();
    assert_eq!(last["in_grace_period"], false);
    assert_eq!(last["consecutive_failures"], 1);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["healthy"], false);
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn delay_postpones_the_first_check() {
    let srv = HttpServer::start(200);
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    // App-level timing (no overrides except the kill grace): delay 0.5 s via the app definition.
    let app = app_with_check(
        dir.path(),
        srv.port,
        json!({"delaySeconds": 0.5, "intervalSeconds": 0.2, "timeoutSeconds": 2}),
    );
    let start = Instant::now();
    let mut emu = Emu::start(
        &app,
        &["--sandbox", sb.to_str().unwrap(), "--kill-grace", "1"],
    );
    emu.launched();
    emu.wait_event("health", Duration::from_secs(4));
    assert!(start.elapsed() >= Duration::from_millis(500));
    emu.signal(libc::SIGINT);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_KILLED");
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn mesos_tcp_and_command_checks() {
    // MESOS_TCP: healthy while something accepts on the port.
    let srv = HttpServer::start(200);
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = write_app(
        dir.path(),
        &json!({"id": "/t", "args": ["sleep", "30"], "portDefinitions": [],
                "healthChecks": [{"protocol": "MESOS_TCP", "port": srv.port}]}),
    );
    let mut emu = Emu::start(&app, &fast(sb.to_str().unwrap(), &[]));
    emu.launched();
    let h = emu.wait_event("health", Duration::from_secs(4));
    assert_eq!(h["healthy"], true);
    assert_eq!(h["status"], Value::Null);
    emu.signal(libc::SIGTERM);
    emu.wait_event("terminal", Duration::from_secs(4));
    emu.wait_exit(Duration::from_secs(4));

    // COMMAND: `sh -c` in the sandbox with the task's environment; healthy iff exit 0.
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = write_app(
        dir.path(),
        &json!({"id": "/t", "args": ["sleep", "30"], "portDefinitions": [],
                "healthChecks": [{"protocol": "COMMAND",
                    "command": {"value": "test -n \"$MESOS_TASK_ID\" && test -f ok"},
                    "gracePeriodSeconds": 0, "maxConsecutiveFailures": 2}]}),
    );
    std::fs::create_dir_all(&sb).unwrap();
    std::fs::write(sb.join("ok"), "").unwrap();
    let mut emu = Emu::start(&app, &fast(sb.to_str().unwrap(), &[]));
    emu.launched();
    let h = emu.wait_event("health", Duration::from_secs(4));
    assert_eq!(h["healthy"], true, "{h}");
    std::fs::remove_file(sb.join("ok")).unwrap();
    let k = emu.wait_event("killing", Duration::from_secs(4));
    assert_eq!(k["reason"], "health_check");
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["healthy"], false);
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn marathon_level_checks_are_not_run_by_the_emulator() {
    let srv = HttpServer::start(200);
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let app = write_app(
        dir.path(),
        &json!({"id": "/t", "args": ["sleep", "30"], "portDefinitions": [],
                "healthChecks": [{"protocol": "HTTP", "port": srv.port}]}),
    );
    let mut emu = Emu::start(&app, &fast(sb.to_str().unwrap(), &["--kill-after", "0.5"]));
    let l = emu.launched();
    assert_eq!(l["health_check"], Value::Null);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["healthy"], Value::Null);
    emu.wait_exit(Duration::from_secs(4));
    assert!(emu.seen("health").is_empty());
    assert_eq!(srv.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
