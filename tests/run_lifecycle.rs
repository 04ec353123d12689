//! `run` end to end: the shipped Marathon app launched by the Mesos task emulator, with the fake
//! kubelet standing in for kubelet (DESIGN §4–§6.2; issue: integration tests through the emulator).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn kubelet_pid(scratch: &Scratch) -> Option<i32> {
    scratch
        .kubelet_status()
        .and_then(|s| s["pid"].as_i64())
        .map(|p| p as i32)
        .filter(|p| alive(*p))
}

fn assert_no_kubelet_left(scratch: &Scratch) {
    let needle = format!("--root-dir={}", scratch.path("kubelet").display());
    // A kubelet whose agent was just killed dies by PDEATHSIG a moment later: allow for that.
    wait_until(Duration::from_secs(2), || pids_matching(&needle).is_empty());
    let stray = pids_matching(&needle);
    for pid in &stray {
        kill_pid(*pid, libc::SIGKILL);
    }
    assert!(stray.is_empty(), "kubelet processes left behind: {stray:?}");
}

#[test]
fn starts_healthy_with_allocatable_equal_to_lease_and_kill_leaves_no_pod_running() {
    let scratch = Scratch::new(4, 8);
    scratch.pod("web", "500m", "256Mi");
    scratch.pod("batch", "250m", "512Mi");
    let port = free_port();
    let app = test_app(
        &scratch,
        port,
        &[("KRW_DRAIN_TIMEOUT", "5"), ("KRW_STOP_TIMEOUT", "1")],
    );
    let mut emu = Emulator::launch(
        &app,
        &scratch.path("sandbox"),
        port,
        &["--kill-grace", "8", "--health-max-failures", "100"],
    );
    emu.expect_healthy(Duration::from_secs(20));
    // The invariant, checked by the kubelet double's own arithmetic: allocatable == lease.
    let status = scratch.kubelet_status().expect("fake kubelet status");
    assert_eq!(status["allocatable"]["cpu_millicores"], 2000, "{status}");
    assert_eq!(
        status["allocatable"]["memory_bytes"].as_u64(),
        Some(4096 * MIB),
        "{status}"
    );
    assert!(wait_until(Duration::from_secs(5), || scratch
        .pod_pids()
        .len()
        == 2));
    let pods = scratch.pod_pids();
    assert!(pods.iter().all(|p| alive(*p)), "pods not running: {pods:?}");

    emu.kill_task();
    // During the window the kubelet runs with zero allocatable.
    assert!(
        wait_until(Duration::from_secs(4), || scratch
            .kubelet_status()
            .is_some_and(|s| s["allocatable"]["cpu_millicores"] == 0
                && s["allocatable"]["memory_bytes"] == 0
                && kubelet_pid(&scratch).is_some())),
        "no zero-allocatable kubelet during the drain window"
    );
    let terminal = emu
        .wait_for(Duration::from_secs(12), |v| v["event"] == "terminal")
        .expect("terminal event");
    assert_eq!(terminal["state"], "TASK_KILLED", "{terminal}");
    assert_eq!(
        terminal["exit_code"],
        0,
        "{terminal}\n{}",
        emu.task_stderr()
    );
    assert!(
        terminal["seconds_after_kill"].as_f64().unwrap_or(99.0) < 8.0,
        "{terminal}"
    );
    assert!(
        !emu.seen.iter().any(|v| v["event"] == "escalated"),
        "agent needed SIGKILL"
    );
    assert!(
        wait_until(Duration::from_secs(3), || pods.iter().all(|p| !alive(*p))),
        "pod processes survived the task kill: {:?}",
        pods.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    emu.wait_for(Duration::from_secs(5), |v| v["event"] == "destroyed");
    assert_no_kubelet_left(&scratch);
    let log = emu.task_stderr();
    assert!(log.contains("task kill finished"), "{log}");
    assert!(log.contains("zero-allocatable"), "{log}");
}

#[test]
fn crashed_kubelet_is_restarted_and_health_recovers() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let app = test_app(&scratch, port, &[]);
    let mut emu = Emulator::launch(
        &app,
        &scratch.path("sandbox"),
        port,
        &["--health-max-failures", "100"],
    );
    emu.expect_healthy(Duration::from_secs(20));
    let first = kubelet_pid(&scratch).expect("kubelet pid");
    kill_pid(first, libc::SIGKILL);
    assert!(
        emu.wait_health(false, Duration::from_secs(5)),
        "no 503 after the crash"
    );
    assert!(
        emu.wait_health(true, Duration::from_secs(20)),
        "not healthy again: {}",
        emu.task_stderr()
    );
    let second = kubelet_pid(&scratch).expect("restarted kubelet");
    assert_ne!(first, second);
    assert!(emu.task_stderr().contains("restarting"));
    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed")
        .expect("destroyed");
    assert_no_kubelet_left(&scratch);
}

#[test]
fn crash_loop_exits_75_so_marathon_reschedules() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let app = test_app(
        &scratch,
        port,
        &[
            ("FAKE_KUBELET_FAULT", "crash-at-start"),
            ("KRW_MAX_FAILURES", "2"),
            ("KRW_RESTART_BACKOFF_INITIAL", "0.1"),
        ],
    );
    let mut emu = Emulator::launch(&app, &scratch.path("sandbox"), port, &[]);
    let terminal = emu
        .wait_for(Duration::from_secs(10), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["state"], "TASK_FAILED", "{terminal}");
    assert_eq!(terminal["exit_code"], 75, "{terminal}");
    let log = emu.task_stderr();
    assert!(log.contains("kubelet failed 3 times"), "{log}");
    assert_no_kubelet_left(&scratch);
}

#[test]
fn second_instance_on_the_host_exits_73_naming_the_holder() {
    let scratch = Scratch::new(2, 8);
    // This time the lease comes from Marathon's variables.
    let env = |port: u16| {
        let mut env = direct_env(&scratch, port, "");
        env.retain(|(k, _)| *k != "KRW_CPUS" && *k != "KRW_MEM");
        env.push(("MARATHON_APP_RESOURCE_CPUS", "1.0".into()));
        env.push(("MARATHON_APP_RESOURCE_MEM", "1024.0".into()));
        env
    };
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(scratch.kubelet_args());
    let first = spawn_agent(&args, &env(free_port()));
    assert!(wait_until(Duration::from_secs(5), || kubelet_pid(&scratch).is_some()));
    let mut second = spawn_agent(&args, &env(free_port()));
    let code = second
        .wait_exit(Duration::from_secs(5))
        .expect("second exits");
    assert_eq!(code, Some(73));
    let err = second.stderr_text();
    assert!(
        err.contains(&format!("held by pid {} (run)", first.pid())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    drop(first);
    assert!(wait_until(Duration::from_secs(3), || kubelet_pid(&scratch).is_none()));
}

#[test]
fn sigkilled_agent_takes_kubelet_with_it() {
    let scratch = Scratch::new(2, 8);
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(scratch.kubelet_args());
    let env = direct_env(&scratch, free_port(), "");
    let agent = spawn_agent(&args, &env);
    assert!(wait_until(Duration::from_secs(5), || kubelet_pid(&scratch).is_some()));
    let kubelet = kubelet_pid(&scratch).expect("kubelet");
    agent.signal(libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(2), || !alive(kubelet)),
        "kubelet {kubelet} outlived its SIGKILLed agent"
    );
    // The kernel released the lock: a new agent can start at once.
    drop(agent);
    let again = spawn_agent(&args, &env);
    assert!(wait_until(Duration::from_secs(5), || kubelet_pid(&scratch)
        .is_some_and(|p| p != kubelet)));
    drop(again);
    assert_no_kubelet_left(&scratch);
}

#[test]
fn health_follows_kubelet_health_and_answers_fast_while_kubelet_hangs() {
    let scratch = Scratch::new(2, 8);
    let flag = scratch.path("unhealthy");
    let port = free_port();
    let metrics_port = free_port();
    let fault = format!("unhealthy-while={}", flag.display());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let app = test_app(
        &scratch,
        port,
        &[
            ("FAKE_KUBELET_FAULT", fault.as_str()),
            ("KRW_METRICS_ADDR", metrics_addr.as_str()),
        ],
    );
    let mut emu = Emulator::launch(
        &app,
        &scratch.path("sandbox"),
        port,
        &["--health-max-failures", "100"],
    );
    emu.expect_healthy(Duration::from_secs(20));
    assert_eq!(http("GET", port, "/healthz"), Some((200, "ok\n".into())));
    assert_eq!(http("HEAD", port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http("GET", port, "/metrics").map(|r| r.0), Some(404));
    assert_eq!(http("POST", port, "/healthz").map(|r| r.0), Some(405));
    assert_eq!(http("GET", port, "/healthz/../etc").map(|r| r.0), Some(404));

    std::fs::write(&flag, "").expect("flag");
    assert!(emu.wait_health(false, Duration::from_secs(5)));
    let (code, body) = http("GET", port, "/healthz").expect("answer");
    assert_eq!(code, 503);
    assert!(body.contains("HTTP 500"), "{body}");
    std::fs::remove_file(&flag).expect("unflag");
    assert!(emu.wait_health(true, Duration::from_secs(5)));

    let (code, metrics) = http("GET", metrics_port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for line in [
        "krw_lease_cpu_millicores 2000",
        "krw_allocatable_memory_bytes 4294967296",
        "krw_kubelet_up 1",
        "krw_health_checks_total{result=\"fail\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "destroyed")
        .expect("destroyed");
}

#[test]
fn hanging_kubelet_is_reported_without_waiting_on_it() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(scratch.kubelet_args());
    let mut env = direct_env(&scratch, port, "hang");
    env.push(("KRW_HEALTH_PROBE_TIMEOUT", "0.5".into()));
    let _agent = spawn_agent(&args, &env);
    assert!(wait_until(Duration::from_secs(5), || kubelet_pid(&scratch).is_some()));
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..20 {
        let started = Instant::now();
        let (code, body) = http("GET", port, "/healthz").expect("answer");
        let took = started.elapsed();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("no answer within"), "{body}");
        assert!(took < Duration::from_millis(200), "took {took:?}");
    }
}

#[test]
fn sigterm_escalates_to_sigkill_for_a_kubelet_that_ignores_it() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let app = test_app(
        &scratch,
        port,
        &[
            ("FAKE_KUBELET_FAULT", "ignore-sigterm"),
            ("KRW_DRAIN_TIMEOUT", "4"),
            ("KRW_STOP_TIMEOUT", "1"),
        ],
    );
    let mut emu = Emulator::launch(
        &app,
        &scratch.path("sandbox"),
        port,
        &["--kill-grace", "7", "--health-max-failures", "100"],
    );
    emu.expect_healthy(Duration::from_secs(20));
    emu.kill_task();
    let terminal = emu
        .wait_for(Duration::from_secs(12), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(
        terminal["exit_code"],
        0,
        "{terminal}\n{}",
        emu.task_stderr()
    );
    assert!(!emu.seen.iter().any(|v| v["event"] == "escalated"));
    assert!(emu.task_stderr().contains("sending SIGKILL"));
    assert_no_kubelet_left(&scratch);
}

#[test]
fn lease_larger_than_the_host_fails_78_and_starts_nothing() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let mut app = test_app(&scratch, port, &[]);
    app["cpus"] = Value::from(64);
    let mut emu = Emulator::launch(&app, &scratch.path("sandbox"), port, &[]);
    let terminal = emu
        .wait_for(Duration::from_secs(10), |v| v["event"] == "terminal")
        .expect("terminal");
    assert_eq!(terminal["state"], "TASK_FAILED");
    assert_eq!(terminal["exit_code"], 78);
    assert!(scratch.kubelet_status().is_none(), "a kubelet was started");
    assert!(!scratch.lock_file().exists(), "the lock was taken");
    let log = emu.task_stderr();
    assert!(log.contains("at most 2.000 cores"), "{log}");
}

/// Environment for starting the agent directly (no emulator) with the fake kubelet; `fault` is
/// the kubelet double's FAKE_KUBELET_FAULT ("" for none).
fn direct_env(scratch: &Scratch, port: u16, fault: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("KRW_KUBELET", double("fake-kubelet").display().to_string()),
        ("KRW_HOST_ROOT", scratch.host_root().display().to_string()),
        ("KRW_LOCK_FILE", scratch.lock_file().display().to_string()),
        ("KRW_HEALTH_ADDR", format!("127.0.0.1:{port}")),
        ("KRW_KUBELET_HEALTHZ_PORT", "0".into()),
        ("KRW_HEALTH_PROBE_INTERVAL", "0.2".into()),
        ("KRW_RESTART_BACKOFF_INITIAL", "0.1".into()),
        ("KRW_CPUS", "1".into()),
        ("KRW_MEM", "512".into()),
        (
            "FAKE_KUBELET_HOST_ROOT",
            scratch.host_root().display().to_string(),
        ),
    ];
    if !fault.is_empty() {
        env.push(("FAKE_KUBELET_FAULT", fault.into()));
    }
    env
}

#[test]
fn slow_starting_kubelet_turns_healthy_once_its_healthz_answers() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(scratch.kubelet_args());
    let started = Instant::now();
    let agent = spawn_agent(&args, &direct_env(&scratch, port, "slow-start=5"));
    assert!(wait_until(Duration::from_secs(5), || kubelet_pid(&scratch).is_some()));
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    let (code, body) = http("GET", port, "/healthz").expect("answer");
    assert_eq!(
        code, 503,
        "healthy before kubelet's healthz answered: {body}"
    );
    assert!(
        body.contains("connection") || body.contains("not been probed"),
        "{body}"
    );
    assert!(
        wait_until(Duration::from_secs(6), || http("GET", port, "/healthz")
            .is_some_and(|(c, _)| c == 200)),
        "never healthy: {}",
        agent.stderr_text()
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[test]
fn kubelet_crashing_later_is_restarted_until_the_failure_budget_is_spent() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(scratch.kubelet_args());
    let mut env = direct_env(&scratch, port, "crash-after=0.5");
    env.push(("KRW_MAX_FAILURES", "3".into()));
    let mut agent = spawn_agent(&args, &env);
    let code = agent
        .wait_exit(Duration::from_secs(15))
        .expect("agent gave up");
    assert_eq!(code, Some(75));
    let log = agent.stderr_text();
    // Three restarts (exit code 2, as a Go panic), then the fourth failure ends the task.
    assert_eq!(
        log.matches("kubelet exited unexpectedly; restarting")
            .count(),
        3,
        "{log}"
    );
    assert!(log.contains("kubelet failed 4 times"), "{log}");
    assert!(log.contains("exit code 2"), "{log}");
    assert!(kubelet_pid(&scratch).is_none());
}

/// The agent's one summary line (`task kill finished` or `agent exiting`) from JSON logs.
fn summary_line(log: &str) -> Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "task kill finished" || v["message"] == "agent exiting")
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"))
}

/// A BestEffort pod (no requests) and one that requests CPU, both running under the agent.
fn start_with_two_pods(
    scratch: &Scratch,
    port: u16,
    extra: &[(&'static str, &str)],
) -> (Guard, Vec<i32>) {
    scratch.pod("besteffort", "", "");
    scratch.pod("web", "100m", "64Mi");
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(scratch.kubelet_args());
    let mut env = direct_env(scratch, port, "");
    env.push(("KRW_LOG_FORMAT", "json".into()));
    env.push(("FAKE_KUBELET_SYNC_INTERVAL_MS", "200".into()));
    env.push(("KRW_STOP_TIMEOUT", "1".into()));
    for (k, v) in extra {
        env.push((k, (*v).to_string()));
    }
    let agent = spawn_agent(&args, &env);
    assert!(
        wait_until(Duration::from_secs(15), || scratch.pod_pids().len() == 2
            && scratch.pod_pids().iter().all(|p| alive(*p))),
        "pods not running: {}",
        agent.stderr_text()
    );
    let pods = scratch.pod_pids();
    (agent, pods)
}

#[test]
fn credential_less_kill_leaves_no_pod_process_best_effort_included() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let (mut agent, pods) = start_with_two_pods(&scratch, port, &[("KRW_DRAIN_TIMEOUT", "5")]);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    assert!(
        pods.iter().all(|p| !alive(*p)),
        "pod processes survived: {:?}",
        pods.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    let s = summary_line(&agent.stderr_text());
    assert_eq!(s["ending"], "SIGTERM", "{s}");
    assert_eq!(s["mode"], "zero-allocatable", "{s}");
    assert_eq!(s["left_behind"], 0, "{s}");
    assert_eq!(s["left_counted_from"], "kubelet-pod-dirs", "{s}");
    let argv = scratch.kubelet_status().expect("status")["argv"].clone();
    assert!(
        argv.as_array()
            .is_some_and(|a| a.iter().any(|x| x == "--max-pods=0")),
        "zero-allocatable kubelet without --max-pods=0: {argv}"
    );
}

#[test]
fn sighup_drains_like_sigterm() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let (mut agent, pods) = start_with_two_pods(&scratch, port, &[("KRW_DRAIN_TIMEOUT", "5")]);
    agent.signal(libc::SIGHUP);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    assert!(pods.iter().all(|p| !alive(*p)), "pods survived SIGHUP");
    let s = summary_line(&agent.stderr_text());
    assert_eq!(s["ending"], "SIGHUP", "{s}");
    assert_eq!(s["left_behind"], 0, "{s}");
}

#[test]
fn sigquit_leaves_at_once_and_names_what_is_left() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let (mut agent, pods) = start_with_two_pods(&scratch, port, &[("KRW_DRAIN_TIMEOUT", "20")]);
    agent.signal(libc::SIGQUIT);
    assert_eq!(agent.wait_exit(Duration::from_secs(5)), Some(Some(0)));
    assert!(pods.iter().all(|p| alive(*p)), "SIGQUIT does not drain");
    let s = summary_line(&agent.stderr_text());
    assert_eq!(s["message"], "agent exiting", "{s}");
    assert_eq!(s["ending"], "SIGQUIT", "{s}");
    assert_eq!(s["left_behind"], 2, "{s}");
    let left = s["left"].as_str().unwrap_or("");
    assert!(
        left.contains("uid-besteffort") && left.contains("uid-web"),
        "{s}"
    );
    assert!(kubelet_pid(&scratch).is_none());
}

#[test]
fn exit_75_names_the_pods_it_leaves() {
    let scratch = Scratch::new(2, 8);
    let port = free_port();
    let (mut agent, pods) = start_with_two_pods(
        &scratch,
        port,
        &[
            ("FAKE_KUBELET_FAULT", "crash-after=1.5"),
            ("KRW_MAX_FAILURES", "1"),
        ],
    );
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), Some(Some(75)));
    let log = agent.stderr_text();
    let s = summary_line(&log);
    assert_eq!(s["message"], "agent exiting", "{s}");
    assert_eq!(s["ending"], "kubelet-failing", "{s}");
    assert_eq!(s["left_behind"], 2, "{s}");
    assert_eq!(s["left_counted_from"], "kubelet-pod-dirs", "{s}");
    assert!(
        s["note"].as_str().unwrap_or("").contains("not drained"),
        "{s}"
    );
    assert!(
        pods.iter().all(|p| alive(*p)),
        "the count is of pods really there"
    );
}
