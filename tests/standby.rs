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
        ],
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
    assert!(
        emu.wait_health(true, Duration::from_secs(15)),
        "{}",
        emu.task_stderr()
    );
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
