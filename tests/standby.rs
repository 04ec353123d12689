//! `standby` (DESIGN §2, issue: deployment): boot → standby with zero allocatable; a Marathon
//! task arrives → handover; the task is killed, or its agent SIGKILLed → standby takes the host
//! back within seconds; never two kubelets at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Samples the number of kubelets for this scratch area every 10 ms on a thread.
struct KubeletCounter {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeletCounter {
    fn start(scratch: &Scratch) -> KubeletCounter {
        let needle = format!("--root-dir={}", scratch.path("kubelet").display());
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let n = pids_matching(&needle).len();
                m.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        KubeletCounter {
            stop,
            max,
            thread: Some(thread),
        }
    }
    fn max(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

fn allocatable(scratch: &Scratch) -> Option<(u64, u64)> {
    let s = scratch.kubelet_status()?;
    let pid = s["pid"].as_i64()? as i32;
    if !alive(pid) {
        return None;
    }
    Some((
        s["allocatable"]["cpu_millicores"].as_u64()?,
        s["allocatable"]["memory_bytes"].as_u64()?,
    ))
}

fn start_standby(scratch: &Scratch) -> Guard {
    start_standby_with(scratch, &[])
}

fn start_standby_with(scratch: &Scratch, extra: &[(&str, String)]) -> Guard {
    let args_file = scratch.path("kubelet-args");
    std::fs::write(&args_file, scratch.kubelet_args().join("\n")).expect("args file");
    spawn_agent(
        &["standby".to_string()],
        &[
            ("KRW_KUBELET", double("fake-kubelet").display().to_string()),
            ("KRW_KUBELET_ARGS_FILE", args_file.display().to_string()),
            ("KRW_HOST_ROOT", scratch.host_root().display().to_string()),
            ("KRW_LOCK_FILE", scratch.lock_file().display().to_string()),
            ("KRW_KUBELET_HEALTHZ_PORT", "0".into()),
            ("KRW_STOP_TIMEOUT", "1".into()),
            (
                "FAKE_KUBELET_HOST_ROOT",
                scratch.host_root().display().to_string(),
            ),
            ("FAKE_KUBELET_SYNC_INTERVAL_MS", "200".into()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect::<Vec<_>>(),
    )
}

const LEASE: (u64, u64) = (2000, 4096 << 20);

#[test]
fn standby_hands_over_to_run_and_takes_the_host_back_after_a_kill() {
    let scratch = Scratch::new(4, 8);
    let counter = KubeletCounter::start(&scratch);
    let mut standby = start_standby(&scratch);
    assert!(
        wait_until(Duration::from_secs(5), || allocatable(&scratch)
            == Some((0, 0))),
        "boot: no zero-allocatable kubelet"
    );

    let port = free_port();
    let app = test_app(&scratch, port, &[]);
    let mut emu = Emulator::launch(
        &app,
        &scratch.path("sandbox"),
        port,
        &["--health-max-failures", "100"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || allocatable(&scratch)
            == Some(LEASE)),
        "task arrived but the lease kubelet never ran: {}",
        emu.task_stderr()
    );
    emu.expect_healthy(Duration::from_secs(15));
    assert!(
        emu.task_stderr()
            .contains("asking standby to yield the host")
    );

    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert!(
        wait_until(Duration::from_secs(4), || allocatable(&scratch)
            == Some((0, 0))),
        "standby did not take the host back"
    );
    assert_eq!(counter.max(), 1, "two kubelets ran at once");
    standby.signal(libc::SIGTERM);
    assert_eq!(standby.wait_exit(Duration::from_secs(5)), Some(Some(0)));
    assert!(wait_until(Duration::from_secs(2), || allocatable(&scratch).is_none()));
}

#[test]
fn standby_takes_the_host_back_when_the_agent_is_sigkilled() {
    let scratch = Scratch::new(4, 8);
    let counter = KubeletCounter::start(&scratch);
    let _standby = start_standby(&scratch);
    assert!(wait_until(Duration::from_secs(5), || allocatable(&scratch)
        == Some((0, 0))));
    let port = free_port();
    let app = test_app(&scratch, port, &[]);
    let mut emu = Emulator::launch(
        &app,
        &scratch.path("sandbox"),
        port,
        &["--health-max-failures", "100"],
    );
    let launched: Value = emu
        .wait_for(Duration::from_secs(5), |v| v["event"] == "launched")
        .expect("launched");
    assert!(wait_until(Duration::from_secs(10), || allocatable(
        &scratch
    ) == Some(LEASE)));
    // The agent is the task's root pid (args, not cmd): SIGKILL it as an OOM kill would.
    let agent_pid = launched["pid"].as_i64().expect("pid") as i32;
    kill_pid(agent_pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(4), || allocatable(&scratch)
            == Some((0, 0))),
        "standby did not come back after the agent died"
    );
    assert_eq!(counter.max(), 1, "two kubelets ran at once");
}

#[test]
fn a_second_standby_waits_without_starting_a_kubelet() {
    let scratch = Scratch::new(4, 8);
    let _standby = start_standby(&scratch);
    assert!(wait_until(Duration::from_secs(5), || allocatable(&scratch)
        == Some((0, 0))));
    let first = allocatable_pid(&scratch);
    let mut second = start_standby(&scratch);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        allocatable_pid(&scratch),
        first,
        "a second standby started its own kubelet"
    );
    assert_eq!(
        second.wait_exit(Duration::from_millis(10)),
        None,
        "second standby should wait"
    );
}

fn allocatable_pid(scratch: &Scratch) -> Option<i64> {
    scratch.kubelet_status().and_then(|s| s["pid"].as_i64())
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = http("GET", port, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_host_settings_file_reaches_run_and_the_metrics_port_follows_the_host() {
    let scratch = Scratch::new(4, 8);
    let metrics_port = free_port();
    let settings = scratch.path("krw.env");
    std::fs::write(
        &settings,
        format!(
            "# written by the Ansible role\nKRW_METRICS_ADDR=\"127.0.0.1:{metrics_port}\"\nKRW_KUBE_RESERVED=\"cpu=100m,memory=128Mi\"\n"
        ),
    )
    .expect("settings");
    let env_file = settings.display().to_string();
    let _standby = start_standby_with(&scratch, &[("KRW_ENV_FILE", env_file.clone())]);
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            metrics_port,
            "krw_kubelet_zero_allocatable"
        ) == Some(1.0)),
        "standby does not serve metrics"
    );
    let port = free_port();
    let app = test_app(&scratch, port, &[("KRW_ENV_FILE", env_file.as_str())]);
    let mut emu = Emulator::launch(
        &app,
        &scratch.path("sandbox"),
        port,
        &["--health-max-failures", "100"],
    );
    emu.expect_healthy(Duration::from_secs(20));
    // run took over the metrics port and read kube-reserved from the host's settings file.
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            metrics_port,
            "krw_lease_cpu_millicores"
        ) == Some(2000.0)
            && metric(metrics_port, "krw_kubelet_zero_allocatable")
                == Some(0.0)),
        "run does not serve the metrics port: {}",
        emu.task_stderr()
    );
    assert_eq!(
        metric(metrics_port, "krw_kube_reserved_cpu_millicores"),
        Some(100.0)
    );
    let status = scratch.kubelet_status().expect("status");
    assert_eq!(status["kube_reserved"]["cpu_millicores"], 100, "{status}");
    assert_eq!(status["allocatable"]["cpu_millicores"], 2000, "{status}");
    emu.kill_task();
    emu.wait_for(Duration::from_secs(15), |v| v["event"] == "terminal")
        .expect("terminal");
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            metrics_port,
            "krw_kubelet_zero_allocatable"
        ) == Some(1.0)),
        "standby did not take the metrics port back"
    );
}

#[test]
fn standby_neither_keeps_nor_admits_a_best_effort_pod() {
    let scratch = Scratch::new(4, 8);
    scratch.pod("besteffort", "", "");
    // A `run` leaves the BestEffort pod running behind it (SIGQUIT: leave without draining).
    let port = free_port();
    let args_file = scratch.path("kubelet-args");
    std::fs::write(&args_file, scratch.kubelet_args().join("\n")).expect("args file");
    let mut run = spawn_agent(
        &["run".to_string()],
        &[
            ("KRW_KUBELET", double("fake-kubelet").display().to_string()),
            ("KRW_KUBELET_ARGS_FILE", args_file.display().to_string()),
            ("KRW_HOST_ROOT", scratch.host_root().display().to_string()),
            ("KRW_LOCK_FILE", scratch.lock_file().display().to_string()),
            ("KRW_HEALTH_ADDR", format!("127.0.0.1:{port}")),
            ("KRW_KUBELET_HEALTHZ_PORT", "0".into()),
            ("KRW_CPUS", "1".into()),
            ("KRW_MEM", "512".into()),
            (
                "FAKE_KUBELET_HOST_ROOT",
                scratch.host_root().display().to_string(),
            ),
            ("FAKE_KUBELET_SYNC_INTERVAL_MS", "200".into()),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(15), || scratch
            .pod_pids()
            .iter()
            .any(|p| alive(*p))),
        "pod never ran: {}",
        run.stderr_text()
    );
    let pid = scratch.pod_pids()[0];
    run.signal(libc::SIGQUIT);
    assert_eq!(run.wait_exit(Duration::from_secs(5)), Some(Some(0)));
    assert!(alive(pid), "left running by SIGQUIT");

    let _standby = start_standby(&scratch);
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)),
        "standby kept the BestEffort pod running"
    );
    let st = scratch.kubelet_status().expect("status");
    assert_eq!(st["max_pods"], 0, "{st}");
    let pod = st["pods"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "besteffort"))
        .cloned()
        .expect("pod known to kubelet");
    assert_eq!(pod["phase"], "Failed", "{pod}");
    assert_eq!(pod["reason"], "OutOfpods", "{pod}");
    // Still not admitted a while later.
    std::thread::sleep(Duration::from_secs(1));
    assert!(scratch.pod_pids().iter().all(|p| !alive(*p)));
}
